"""Prefect flow: the main job, every configured stage in order on one config.

ingest -> statistics -> train (every seed, then its 48 h calibration) ->
ensembles over the init times -> diagnostics -> report. A stage runs only
when its config section is present (``training:``, ``ensemble:``,
``diagnostics:``), so a config can stop after any stage.

Each stage skips finished work on a rerun: ingest and statistics are cached
tasks refreshed when their outputs are stale; training resumes every seed
from its ``last.pt`` and returns at once for a finished seed; ensemble init
times are cached on their completion record and the generator skips complete
work units; diagnostics and the report are cached on their inputs. A run
killed anywhere and rerun completes with the same outputs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.diagnose import run_diagnose_flow
from flows.ensemble import run_ensemble
from flows.ingest import run_ingest
from flows.train import run_training
from pipeline.config import load_config


@flow(name="myriad-end-to-end", log_prints=False)
def end_to_end_flow(config_path: str, overrides: list[str] | None = None) -> dict[str, str]:
    """Run every configured stage of the pipeline; returns the output paths by stage."""
    overrides = overrides or []
    config = load_config(Path(config_path), overrides)
    outputs = run_ingest(config)
    if config.training is not None:
        outputs.update(run_training(config, config_path, overrides))
    if config.ensemble is not None:
        outputs.update(run_ensemble(config, config_path, overrides))
    if config.diagnostics is not None:
        outputs.update(run_diagnose_flow(config, config_path, overrides))  # a subflow on its Dask task runner
    return outputs
