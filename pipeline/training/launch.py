"""Build and run the torchrun command lines of a training run, one per seed.

On one machine each seed is ``python -m torch.distributed.run --standalone
--nproc_per_node N -m pipeline.training.run CONFIG --seed K [--stage S] [--set ...]``
(torchrun picks a free rendezvous port, so seeds can run side by side).
Across nodes (SLURM, see ``deploy/slurm/train.sbatch``) the same entry point
runs with ``--nnodes`` and a c10d rendezvous on the first node.

:func:`run_launch` streams the job's merged stdout/stderr line by line to a
callback (the Prefect logger, or the console) and raises a
:class:`MyriadError` carrying the job's own error line when it fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import MyriadConfig
from pipeline.errors import MyriadError
from pipeline.jobs import run_job, shell_line
from pipeline.training.checkpoint import seed_directory
from pipeline.training.dyffusion import check_stage, checked_stage
from pipeline.training.run import ERROR_PREFIX


@dataclass(frozen=True)
class LaunchPlan:
    """One seed's job (of one DYffusion stage): its command line, extra environment and checkpoint directory."""

    seed: int
    stage: str | None
    command: list[str]
    env: dict[str, str]
    directory: Path

    def shell_line(self) -> str:
        """The command with its environment, as one copy-pasteable shell line."""
        return shell_line(self.command, self.env)


def torchrun_command(
    config_path: str | Path,
    seed: int,
    nproc_per_node: int,
    overrides: list[str] | tuple[str, ...] = (),
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "myriad-train",
    python: str = sys.executable,
    stage: str | None = None,
) -> list[str]:
    """The torchrun command line that trains ``seed`` of ``config_path``.

    Parameters
    ----------
    nnodes, rdzv_endpoint, rdzv_id
        Multi-node: number of nodes and the c10d rendezvous ``host:port``
        (required when ``nnodes > 1``); one node uses ``--standalone``.
    stage
        DYffusion training stage, None for an SFNO.
    """
    command = [python, "-m", "torch.distributed.run"]
    if nnodes == 1:
        command += ["--standalone", "--nnodes=1"]
    else:
        if not rdzv_endpoint:
            raise MyriadError("multi-node training needs a rendezvous endpoint HOST:PORT")
        command += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
    command += [f"--nproc_per_node={nproc_per_node}", "--max_restarts=0", "-m", "pipeline.training.run", str(config_path), "--seed", str(seed)]
    if stage is not None:
        command += ["--stage", stage]
    for item in overrides:
        command += ["--set", item]
    return command


def plan_training(
    config: MyriadConfig,
    config_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    nproc_per_node: int | None = None,
    seeds: list[int] | None = None,
    stage: str | None = None,
    check_interpolators: bool = True,
) -> list[LaunchPlan]:
    """One :class:`LaunchPlan` per seed (all of ``training.seeds`` unless ``seeds`` is given).

    Each rank gets ``cores / (ranks x seeds run at once)`` threads unless
    ``OMP_NUM_THREADS`` is already set. A DYffusion ``stage`` is checked
    here, before any job starts (for the forecaster stage, unless
    ``check_interpolators`` is off: each seed's interpolator checkpoint
    exists and fits the config).

    Raises
    ------
    MyriadError
        No ``model``/``training`` section, a seed not in ``training.seeds``, a bad stage.
    """
    if config.model is None or config.training is None:
        raise MyriadError("config: training needs the `model:` and `training:` sections (see configs/quickstart.yaml)")
    stage = checked_stage(config, stage)
    training = config.training
    chosen = list(training.seeds) if not seeds else list(seeds)
    unknown = [s for s in chosen if s not in training.seeds]
    if unknown:
        raise MyriadError(f"--seed {unknown}: not in training.seeds {training.seeds}")
    nproc = nproc_per_node or training.nproc_per_node
    if training.batch_size % nproc:
        raise MyriadError(f"training.batch_size ({training.batch_size}) must be divisible by --nproc ({nproc})")
    if stage is not None and check_interpolators:
        for seed in chosen:
            check_stage(config, stage, seed)
    env = {"PYTHONUNBUFFERED": "1"}
    if "OMP_NUM_THREADS" not in os.environ:
        concurrent = nproc * min(training.parallel_seeds, len(chosen))
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // concurrent))
    return [
        LaunchPlan(seed, stage, torchrun_command(config_path, seed, nproc, overrides, stage=stage), env,
                   seed_directory(config.run_dir, config.model.checkpoint_name(stage), seed))
        for seed in chosen
    ]


def run_launch(plan: LaunchPlan, on_line: Callable[[str], None]) -> Path:
    """Run one plan to completion, passing every output line to ``on_line``; returns its checkpoint directory.

    Raises
    ------
    MyriadError
        The job exited non-zero; the message is the job's own error line
        when it printed one.
    """
    what = f"training of seed {plan.seed}" + (f" ({plan.stage} stage)" if plan.stage else "")
    run_job(plan.command, plan.env, on_line, ERROR_PREFIX, f"{what} failed")
    return plan.directory
