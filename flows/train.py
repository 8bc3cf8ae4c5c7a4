"""Prefect flow: train every seed of the run's model with torchrun, then calibrate it.

Thin: each seed is a task that launches ``pipeline.training.run`` under
torchrun as a subprocess (:mod:`pipeline.training.launch`), streams its log
lines into the Prefect logs, and fails with the job's own error message when
it fails. ``training.parallel_seeds`` seeds run at the same time. Spherical
DYffusion trains its stages in order, every seed's interpolator before any
forecaster (:func:`pipeline.training.dyffusion.stages_to_train`). No result
caching: a rerun resumes each seed from its ``last.pt`` and skips finished
ones within seconds.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from pipeline.config import MyriadConfig, load_config
from pipeline.training.dyffusion import stages_to_train
from pipeline.training.launch import LaunchPlan, plan_training, run_launch


@task(name="train-seed", cache_policy=NONE)
def train_seed_task(plan: LaunchPlan) -> str:
    """Run one seed's torchrun job; its output becomes this task's log."""
    logger = get_run_logger()
    logger.info("seed %d%s: %s", plan.seed, f" ({plan.stage})" if plan.stage else "", plan.shell_line())
    return str(run_launch(plan, logger.info))


def run_training(config: MyriadConfig, config_path: str, overrides: list[str] | None = None,
                 nproc: int | None = None, seeds: list[int] | None = None,
                 stages: list[str | None] | None = None) -> dict[str, str]:
    """Train the seeds inside the current flow, ``training.parallel_seeds`` at a time, stage after stage.

    ``stages`` defaults to every stage of the model (:func:`stages_to_train`).
    Returns ``{"seed-<k>": checkpoint directory}`` (``"<stage>-seed-<k>"`` for
    DYffusion); raises the first failure after the seeds running with it
    have finished; a failed stage stops before the next one.
    """
    width = config.training.parallel_seeds
    outputs: dict[str, str] = {}
    for stage in stages or stages_to_train(config):
        plans = plan_training(config, config_path, overrides or [], nproc, seeds, stage)
        for first in range(0, len(plans), width):
            wave = plans[first : first + width]
            futures = [train_seed_task.submit(plan) for plan in wave]
            for future in futures:
                future.wait()
            for plan, future in zip(wave, futures):
                outputs[f"{stage}-seed-{plan.seed}" if stage else f"seed-{plan.seed}"] = future.result()
    return outputs


@flow(name="myriad-train", log_prints=False)
def train_flow(config_path: str, overrides: list[str] | None = None, nproc: int | None = None,
               seeds: list[int] | None = None, stage: str | None = None) -> dict[str, str]:
    """Train (or resume) and calibrate the configured seeds (one DYffusion ``stage``, or all); returns their directories."""
    config = load_config(Path(config_path), overrides or [])
    return run_training(config, config_path, overrides, nproc, seeds, [stage] if stage else None)
