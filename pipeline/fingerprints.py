"""Stage cache keys: what lets a rerun of a flow skip finished stages.

A stage's key is derived from the config sections it depends on and the path
it writes, so it is known *before* the stage runs and is the same after. The
flow also asks whether the stage's output is actually there and valid
(``*_ready``); when it is not (never made, deleted, incomplete, or made from
another config) the task runs with ``refresh_cache=True``, which recomputes
it and records the result under the same key. A rerun with nothing changed
therefore finds a valid output and a cached result, and skips the stage.
Both read only metadata, never data.
"""

from __future__ import annotations

from pipeline.config import INGEST_SECTIONS, MyriadConfig


def analysis_key(config: MyriadConfig) -> str:
    """Cache key of the ingest stage: the ingest sections' hash and the store path."""
    return f"analysis-{config.section_hash(*INGEST_SECTIONS)}-{config.analysis_path.resolve()}"


def analysis_ready(config: MyriadConfig) -> bool:
    """True when the analysis store is complete and was written from this config."""
    from pipeline.data.store import store_matches_config

    return store_matches_config(config)


def statistics_key(config: MyriadConfig) -> str:
    """Cache key of the statistics stage."""
    return f"statistics-{config.section_hash(*INGEST_SECTIONS, 'statistics')}-{config.stats_path.resolve()}"


def statistics_ready(config: MyriadConfig) -> bool:
    """True when stats.nc is up to date for this config's complete analysis store."""
    from pipeline.data.statistics import statistics_match_config

    return analysis_ready(config) and statistics_match_config(config)
