"""Entry point of one training job: ``python -m pipeline.training.run CONFIG --seed K [--stage S]``.

Run it under torchrun (``myriad train`` builds that command line, see
:mod:`pipeline.training.launch`) or alone as a single process. It trains
(or resumes) the seed, then calibrates the checkpoint (not after the
DYffusion interpolator stage, which makes no forecasts). A user error prints
one line starting with :data:`ERROR_PREFIX` on stderr and exits with 1, so
the launcher can report it without the workers' tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import torch

from pipeline.config import MyriadConfig, load_config
from pipeline.errors import MyriadError
from pipeline.logs import configure_logging
from pipeline.training.distributed import init_distributed
from pipeline.training.dyffusion import checked_stage
from pipeline.training.trainer import Trainer

ERROR_PREFIX = "myriad-train error: "

logger = logging.getLogger(__name__)


def choose_seed(config: MyriadConfig, seed: int | None, seed_index: int | None) -> int:
    """The seed to train: ``--seed`` (must be listed), ``--seed-index`` into ``training.seeds``, or the only one."""
    if config.training is None:
        raise MyriadError("config: training needs the `model:` and `training:` sections (see configs/quickstart.yaml)")
    seeds = config.training.seeds
    if seed is not None:
        if seed not in seeds:
            raise MyriadError(f"--seed {seed}: not in training.seeds {seeds}")
        return seed
    if seed_index is not None:
        if not 0 <= seed_index < len(seeds):
            raise MyriadError(f"--seed-index {seed_index}: training.seeds has {len(seeds)} entries")
        return seeds[seed_index]
    if len(seeds) != 1:
        raise MyriadError(f"training.seeds has {len(seeds)} seeds {seeds}: pass --seed K or --seed-index I")
    return seeds[0]


def train_seed(config: MyriadConfig, seed: int, stage: str | None = None) -> None:
    """Train (or resume) one seed (of one DYffusion stage) on this process group, then calibrate its forecasts."""
    ctx = init_distributed(config.training.backend)
    try:
        trainer = Trainer(config, seed, ctx, stage)
        trainer.fit()
        if stage != "interpolator":
            trainer.calibrate()
    finally:
        ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.run", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="run config (YAML)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, help="a seed listed in training.seeds")
    group.add_argument("--seed-index", type=int, help="index into training.seeds (SLURM array jobs)")
    parser.add_argument("--stage", choices=("interpolator", "forecaster"), help="DYffusion training stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    args = parser.parse_args(argv)
    configure_logging()
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    try:
        config = load_config(args.config, args.overrides)
        seed = choose_seed(config, args.seed, args.seed_index)
        train_seed(config, seed, checked_stage(config, args.stage))
    except MyriadError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
