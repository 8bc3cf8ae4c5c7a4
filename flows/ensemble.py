"""Prefect flow: a bred-vector ensemble, one task per init time.

Thin: each task generates the work units of one init time, in process for
one rank or as a torchrun job for several (:mod:`pipeline.ensemble.launch`,
its output streamed into the task's log). Init times run one after another
(each job already uses every core or GPU it is given); SLURM array jobs run
them side by side (``deploy/slurm/ensemble.sbatch``). A task is cached on
:func:`pipeline.ensemble.fingerprint.ensemble_key` (the config and the
checkpoints' files) and refreshed unless the store's completion record shows
the init time finished, so a rerun skips finished init times; the generator
itself skips finished work units.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.config import MyriadConfig, load_config
from pipeline.ensemble.fingerprint import ensemble_key, ensemble_ready
from pipeline.ensemble.generator import generate_ensemble
from pipeline.ensemble.launch import EnsembleLaunch, plan_ensemble, run_launch


def _init_time_key(context: object, parameters: dict) -> str | None:
    return ensemble_key(parameters["config"], parameters["launch"].init_time)


@task(name="ensemble-init-time", cache_key_fn=_init_time_key, persist_result=True)
def ensemble_init_task(config: MyriadConfig, launch: EnsembleLaunch, nproc: int) -> str:
    """Generate every pending unit of one init time; returns the store path."""
    logger = get_run_logger()
    if nproc == 1:
        result = generate_ensemble(config, [launch.init_time], progress=False)
        logger.info("init %s: wrote %d units, skipped %d complete, %.1f member-steps/s",
                    launch.init_time, len(result.units_written), result.units_skipped, result.member_steps_per_second)
        return str(result.store_path)
    logger.info("init %s: %s", launch.init_time, launch.shell_line())
    return str(run_launch(launch, logger.info))


def run_ensemble(config: MyriadConfig, config_path: str, overrides: list[str] | None = None,
                 init_times: list[str] | None = None, nproc: int = 1) -> dict[str, str]:
    """Run the init-time tasks inside the current flow; returns ``{"ensemble": store path}``."""
    launches = plan_ensemble(config, config_path, overrides or [], nproc, init_times)
    paths = {ensemble_init_task.with_options(refresh_cache=not ensemble_ready(config, launch.init_time))(config, launch, nproc)
             for launch in launches}  # one after another: each job already uses every core it is given
    return {"ensemble": paths.pop()}


@flow(name="myriad-ensemble", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=1))
def ensemble_flow(config_path: str, overrides: list[str] | None = None, init_times: list[str] | None = None,
                  nproc: int = 1) -> dict[str, str]:
    """Generate (or finish) the configured ensemble; returns its store path."""
    config = load_config(Path(config_path), overrides or [])
    return run_ensemble(config, config_path, overrides, init_times, nproc)
