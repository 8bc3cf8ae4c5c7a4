"""Prefect flow: the main job, every stage in order on one config.

ingest -> statistics (later issues add: train -> calibrate -> ensembles ->
diagnostics -> report). Each stage is a cached task, so a rerun with nothing
changed skips all of them and a changed section reruns only what depends on it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.ingest import run_ingest
from pipeline.config import load_config


@flow(name="myriad-end-to-end", log_prints=False)
def end_to_end_flow(config_path: str, overrides: list[str] | None = None) -> dict[str, str]:
    """Run every configured stage of the pipeline; returns the output paths by stage."""
    config = load_config(Path(config_path), overrides or [])
    return run_ingest(config)
