"""Prefect flow: reanalysis (or the planet) -> analysis.zarr -> stats.nc.

Thin: each task calls one pipeline function. Tasks cache on their inputs
(the config's content hash and the state of the files they produce, never
datasets), so a rerun with nothing changed skips both; network sources get
retries with backoff.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from pipeline.config import MyriadConfig, load_config
from pipeline.data.ingest import ingest
from pipeline.data.statistics import compute_statistics
from pipeline.fingerprints import analysis_fingerprint, statistics_fingerprint


def _analysis_key(context: object, parameters: dict) -> str | None:
    return analysis_fingerprint(parameters["config"])


def _statistics_key(context: object, parameters: dict) -> str | None:
    return statistics_fingerprint(parameters["config"])


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
    ingest_with_retries = ingest_task.with_options(retries=3, retry_delay_seconds=[10, 60, 300]) if _is_network(config) else ingest_task
    analysis = ingest_with_retries(config)
    outputs = {"analysis": analysis}
    if with_statistics:
        outputs["statistics"] = statistics_task(config, analysis)
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
    return {"statistics": statistics_task(config, str(config.analysis_path))}
