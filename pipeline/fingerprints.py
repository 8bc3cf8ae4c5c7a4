"""Stage fingerprints: the cache keys that let a rerun skip finished stages.

A fingerprint is a short string derived from the config sections a stage
depends on *and* from the state of the files the stage produces. It is
``None`` when the stage's output is missing, incomplete or was made from a
different config; the orchestrator then runs the stage (which is itself
idempotent). Fingerprints read only metadata, never data.
"""

from __future__ import annotations

from pipeline.config import INGEST_SECTIONS, MyriadConfig


def analysis_fingerprint(config: MyriadConfig) -> str | None:
    """Key of a complete analysis store made from this config, else None."""
    from pipeline.data.store import store_matches_config

    if not store_matches_config(config):
        return None
    return f"analysis-{config.section_hash(*INGEST_SECTIONS)}-{config.analysis_path.resolve()}"


def statistics_fingerprint(config: MyriadConfig) -> str | None:
    """Key of an up-to-date stats.nc for this config's analysis, else None."""
    from pipeline.data.statistics import statistics_match_config

    if analysis_fingerprint(config) is None or not statistics_match_config(config):
        return None
    return f"statistics-{config.section_hash(*INGEST_SECTIONS, 'statistics')}-{config.stats_path.resolve()}"
