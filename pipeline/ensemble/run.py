"""Entry point of one ensemble job: ``python -m pipeline.ensemble.run CONFIG [--init TIME ...]``.

Run it alone (one process) or under torchrun, where the ranks split the
pending work units (``myriad ensemble`` builds these command lines, see
:mod:`pipeline.ensemble.launch`; ``deploy/slurm/ensemble.sbatch`` runs it on
a cluster, ``--init-index`` picking one init time per array task). A user
error prints one line starting with :data:`ERROR_PREFIX` on stderr and exits
with 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from pipeline.config import MyriadConfig, load_config
from pipeline.ensemble.generator import generate_ensemble
from pipeline.ensemble.inputs import ensemble_section
from pipeline.errors import MyriadError
from pipeline.logs import configure_logging
from pipeline.training.distributed import init_distributed

ERROR_PREFIX = "myriad-ensemble error: "


def chosen_init_times(config: MyriadConfig, init_times: list[str], init_index: int | None) -> list[str] | None:
    """``--init`` times, or ``ensemble.init_times[--init-index]`` (config order), or None for all."""
    if init_index is None:
        return init_times or None
    listed = ensemble_section(config).init_times
    if not 0 <= init_index < len(listed):
        raise MyriadError(f"--init-index {init_index}: ensemble.init_times has {len(listed)} entries (0..{len(listed) - 1})")
    return [listed[init_index].isoformat()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ensemble.run", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="run config (YAML) with an ensemble: section")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--init", dest="init_times", action="append", default=[], metavar="TIME",
                       help="only this init time of ensemble.init_times (repeatable)")
    group.add_argument("--init-index", type=int, help="index into ensemble.init_times (SLURM array jobs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    args = parser.parse_args(argv)
    configure_logging()
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    ctx = None
    try:
        config = load_config(args.config, args.overrides)
        init_times = chosen_init_times(config, args.init_times, args.init_index)
        ctx = init_distributed("auto")
        generate_ensemble(config, init_times, ctx, progress=False if args.no_progress else None)
    except MyriadError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if ctx is not None:
            ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
