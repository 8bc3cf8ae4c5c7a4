"""Prefect flow: reanalysis (or the planet) -> analysis.zarr -> stats.nc.

Thin: each task calls one pipeline function. Tasks cache on the config
sections they depend on and refresh their cache when their output is missing
or stale (:mod:`pipeline.fingerprints`), so a rerun with nothing changed
skips both; network sources get retries with backoff. The stage functions are
themselves idempotent, so a run without a cache record finishes quickly too.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from pipeline.config import MyriadConfig, load_config
from pipeline.data.ingest import ingest
from pipeline.data.statistics import compute_statistics
from pipeline.fingerprints import analysis_key, analysis_ready, statistics_key, statistics_ready


def _analysis_key(context: object, parameters: dict) -> str:
    return analysis_key(parameters["config"])


def _statistics_key(context: object, parameters: dict) -> str:
    return statistics_key(parameters["config"])


@task(name="ingest", cache_key_fn=_analysis_key, persist_result=True)
def ingest_task(config: MyriadConfig) -> str:
    """Write (or complete) the analysis store; skipped when already complete."""
    return str(ingest(config).path)


@task(name="statistics", cache_key_fn=_statistics_key, persist_result=True)
def statistics_task(config: MyriadConfig, analysis_path: str) -> str:
    """Compute stats.nc from the analysis store; skipped when up to date."""
    return str(compute_statistics(config))


def run_ingest(config: MyriadConfig, with_statistics: bool = True) -> dict[str, str]:
    """Run the ingest (and statistics) tasks inside the current flow."""
    retries = {"retries": 3, "retry_delay_seconds": [10, 60, 300]} if _is_network(config) else {}
    analysis = ingest_task.with_options(refresh_cache=not analysis_ready(config), **retries)(config)
    outputs = {"analysis": analysis}
    if with_statistics:
        outputs["statistics"] = statistics_task.with_options(refresh_cache=not statistics_ready(config))(config, analysis)
    return outputs


def _is_network(config: MyriadConfig) -> bool:
    return config.source.kind in ("arco", "cds")


@flow(name="myriad-ingest", log_prints=False)
def ingest_flow(config_path: str, overrides: list[str] | None = None) -> dict[str, str]:
    """Ingest the configured source into ``<run_dir>/analysis.zarr`` and compute ``stats.nc``."""
    config = load_config(Path(config_path), overrides or [])
    return run_ingest(config)


@flow(name="myriad-statistics", log_prints=False)
def statistics_flow(config_path: str, overrides: list[str] | None = None) -> dict[str, str]:
    """(Re)compute ``stats.nc`` from an existing, complete analysis store."""
    config = load_config(Path(config_path), overrides or [])
    task = statistics_task.with_options(refresh_cache=not statistics_ready(config))
    return {"statistics": task(config, str(config.analysis_path))}
