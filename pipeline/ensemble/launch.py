"""Command lines of an ensemble run, one job per init time, and running them.

One process: ``python -m pipeline.ensemble.run CONFIG --init TIME [--set ...]``;
N ranks on one machine: ``python -m torch.distributed.run --standalone
--nproc_per_node N -m pipeline.ensemble.run ...`` (torchrun picks a free
rendezvous port). ``deploy/slurm/ensemble.sbatch`` runs the same entry point
as an array job (one init time per task) or across nodes.
:func:`run_launch` streams a job's merged output line by line to a callback
and raises a :class:`MyriadError` carrying the job's own error line when it
fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import MyriadConfig
from pipeline.data.store import format_time
from pipeline.ensemble.inputs import ensemble_section, select_init_times
from pipeline.ensemble.run import ERROR_PREFIX
from pipeline.ensemble.seeds import InitTime
from pipeline.errors import MyriadError
from pipeline.jobs import run_job, shell_line


@dataclass(frozen=True)
class EnsembleLaunch:
    """The job of one init time: its command line, extra environment and store."""

    init_time: str
    command: list[str]
    env: dict[str, str]
    store_path: Path

    def shell_line(self) -> str:
        """The command with its environment, as one copy-pasteable shell line."""
        return shell_line(self.command, self.env)


def ensemble_command(
    config_path: str | Path,
    init_time: str,
    nproc_per_node: int = 1,
    overrides: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The command line that generates the units of one init time (torchrun when ``nproc_per_node > 1``)."""
    if nproc_per_node < 1:
        raise MyriadError(f"--nproc {nproc_per_node}: must be >= 1")
    command = [python, "-m"]
    if nproc_per_node > 1:
        command += ["torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc_per_node}",
                    "--max_restarts=0", "-m"]
    command += ["pipeline.ensemble.run", str(config_path), "--init", init_time]
    for item in overrides:
        command += ["--set", item]
    return command


def plan_ensemble(
    config: MyriadConfig,
    config_path: str | Path,
    overrides: Sequence[str] = (),
    nproc_per_node: int = 1,
    init_times: Sequence[InitTime] | None = None,
) -> list[EnsembleLaunch]:
    """One :class:`EnsembleLaunch` per selected init time (default: all of ``ensemble.init_times``).

    Each rank gets ``cores / ranks`` threads unless ``OMP_NUM_THREADS`` is set.

    Raises
    ------
    MyriadError
        No ``ensemble`` section, or an init time that is not configured.
    """
    settings = ensemble_section(config)
    selected = select_init_times(settings.plan(), init_times)
    env = {"PYTHONUNBUFFERED": "1"}
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc_per_node))
    store = settings.store_path(config.run_dir)
    return [
        EnsembleLaunch(format_time(t), ensemble_command(config_path, format_time(t), nproc_per_node, overrides), env, store)
        for t in selected
    ]


def run_launch(launch: EnsembleLaunch, on_line: Callable[[str], None]) -> Path:
    """Run one job to completion, passing every output line to ``on_line``; returns the store path.

    Raises
    ------
    MyriadError
        The job exited non-zero; the message is the job's own error line
        when it printed one.
    """
    run_job(launch.command, launch.env, on_line, ERROR_PREFIX,
            f"ensemble job for init time {launch.init_time} failed")
    return launch.store_path
