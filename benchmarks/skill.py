"""Skill of the quickstart SFNO trained for at most N minutes on the CPU (the README numbers).

1. Trains one seed of the config's model with the real launcher (torchrun,
   ``--nproc`` ranks) under ``training.max_minutes`` (default 5), into
   ``checkpoints/<model>-skill/`` -- or, with ``--checkpoints DIR ...``,
   takes seed directories that ``myriad train`` already wrote.
2. Scores each forecast checkpoint (``best.pt``) on the validation period:
   area-weighted RMSE per channel at 24 h and 5 days against persistence and
   the training-period climatology (:mod:`pipeline.training.validation`).
3. Rolls it out for 60 days from several validation dates and checks
   stability: no NaN, and the global-mean kinetic energy
   ``KE = <(u^2 + v^2) / 2>`` (area-weighted, from u500/v500) stays within a
   factor 2 (both ways) of the analysis' mean KE over the same days (without
   wind channels: the mean squared normalised state).

    OMP_NUM_THREADS=1 python benchmarks/skill.py                   # 2 ranks x 1 thread, 5 minutes
    python benchmarks/skill.py --minutes 1 --output /tmp/skill.json
    python benchmarks/skill.py --checkpoints runs/quickstart/checkpoints/sfno/seed-0 runs/quickstart/checkpoints/sfno/seed-1

Prints tables and writes ``benchmarks/results/skill.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import MyriadConfig, load_config
from pipeline.data.ingest import ensure_analysis
from pipeline.grid import Grid
from pipeline.training.checkpoint import select_checkpoint
from pipeline.training.dataset import load_frames, open_training_data, resolve_periods
from pipeline.training.distributed import DistributedContext
from pipeline.training.forecast import Forecaster
from pipeline.training.launch import plan_training, run_launch
from pipeline.training.losses import SphericalMSE
from pipeline.training.validation import climatology, evaluate, evenly_spaced

RESULTS = Path(__file__).resolve().parent / "results" / "skill.json"
logger = logging.getLogger("benchmarks.skill")


def kinetic_energy(state: torch.Tensor, channels: tuple[str, ...], grid: Grid) -> torch.Tensor:
    """Area-mean KE <(u^2 + v^2)/2> per sample from u500/v500, shape (B,)."""
    q = torch.as_tensor(grid.quadrature_weights(), dtype=torch.float64)
    u, v = state[:, channels.index("u500")].double(), state[:, channels.index("v500")].double()
    return (0.5 * (u.square() + v.square()) * q).sum(dim=(-2, -1))


def normalised_energy(z: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Area-mean of the squared normalised state summed over channels, shape (B,)."""
    q = torch.as_tensor(grid.quadrature_weights(), dtype=torch.float64)
    return (z.double().square() * q).sum(dim=(-3, -2, -1))


def stability(forecaster: Forecaster, frames, days: int, n_inits: int, step_hours: int, grid: Grid) -> dict:
    """Roll out ``days`` from ``n_inits`` validation dates; NaN check and energy ratio to the analysis."""
    n_steps = days * 24 // step_hours
    starts = evenly_spaced(len(frames) - n_steps, n_inits)
    channels = forecaster.normalisation.channels
    use_ke = "u500" in channels and "v500" in channels

    def energy(z: torch.Tensor) -> torch.Tensor:
        if use_ke:
            return kinetic_energy(forecaster.normalisation.denormalise(z), channels, grid)
        return normalised_energy(z, grid)

    model_energy, truth_energy, finite = [], [], True
    for k, z in enumerate(forecaster.rollout_normalised(frames.read(starts), n_steps, time=frames.seconds(starts)), start=1):
        finite = finite and bool(torch.isfinite(z).all())
        model_energy.append(energy(z))
        truth_energy.append(energy(frames.read(starts + k)))
    model_e = torch.stack(model_energy).numpy()  # (step, init)
    truth_e = torch.stack(truth_energy).numpy()
    ratio = model_e / truth_e.mean(axis=0, keepdims=True)
    return {
        "days": days,
        "n_inits": len(starts),
        "energy": "kinetic energy <(u500^2+v500^2)/2>" if use_ke else "mean squared normalised state",
        "finite": finite,
        "energy_ratio_min": float(np.nanmin(ratio)),
        "energy_ratio_max": float(np.nanmax(ratio)),
        "energy_ratio_last": [float(r) for r in ratio[-1]],
        "analysis_ratio_min": float((truth_e / truth_e.mean(axis=0, keepdims=True)).min()),
        "analysis_ratio_max": float((truth_e / truth_e.mean(axis=0, keepdims=True)).max()),
        "stable": bool(finite and 0.5 <= np.nanmin(ratio) and np.nanmax(ratio) <= 2.0),
    }


def score_checkpoint(path: Path, config: MyriadConfig, args: argparse.Namespace) -> dict:
    """Validation skill (24 h, 5 days) and rollout stability of one checkpoint file."""
    forecaster = Forecaster.from_checkpoint(path)
    info = forecaster.info
    data = open_training_data(config)
    train_index, val_index = resolve_periods(data, config.training)
    train_frames = load_frames(data, train_index, config.training, "training")
    val_frames = load_frames(data, val_index, config.training, "validation")
    leads = [24 // data.step_hours, 120 // data.step_hours]
    starts = evenly_spaced(len(val_frames) - max(leads), args.inits)
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"), None)
    loss = SphericalMSE(data.grid, np.ones(len(data.channels)))
    skill = evaluate(forecaster.rollout_normalised, val_frames, starts, leads, data.step_hours,
                     climatology(train_frames, config.training.climatology_samples), loss, data.normalisation, ctx)
    beats = {f"{h}h": {c: bool(skill.rmse["model"][i, j] < skill.rmse["persistence"][i, j])
                       for j, c in enumerate(skill.channels)} for i, h in enumerate(skill.lead_hours)}
    stable = stability(forecaster, val_frames, args.rollout_days, args.rollout_inits, data.step_hours, data.grid)
    progress = torch.load(path, weights_only=True)["progress"]
    return {
        "checkpoint": str(path),
        "seed": info.seed,
        "trained_steps": info.step,
        "total_steps": int(progress.get("total_steps", 0)),
        "training_seconds": float(progress["elapsed_seconds"]),
        "validation_period": [f"{data.times[val_index[0]]:%Y-%m-%d}", f"{data.times[val_index[-1]]:%Y-%m-%d}"],
        "skill": skill.to_dict(),
        "table": skill.table(),
        "beats_persistence": beats,
        "beats_persistence_everywhere": all(all(v.values()) for v in beats.values()),
        "rollout": stable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoints", nargs="+", type=Path, default=None, metavar="DIR",
                        help="score these seed directories (or .pt files) instead of training one")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inits", type=int, default=128, help="validation initial times scored")
    parser.add_argument("--rollout-days", type=int, default=60)
    parser.add_argument("--rollout-inits", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    job_seconds = None
    threads_per_rank = None
    if args.checkpoints:
        config = load_config(args.config, args.overrides)
        paths = [p if p.suffix == ".pt" else select_checkpoint(p) for p in args.checkpoints]
    else:
        base = load_config(args.config, args.overrides)
        name = f"{base.model.name}-skill"
        overrides = [*args.overrides, f"model.name={name}", f"training.max_minutes={args.minutes}",
                     f"training.seeds=[{args.seed}]", "training.val_lead_hours=[24,120]"]
        config = load_config(args.config, overrides)
        ensure_analysis(config)
        (plan,) = plan_training(config, args.config, overrides, args.nproc)
        shutil.rmtree(plan.directory, ignore_errors=True)
        started = time.monotonic()
        run_launch(plan, lambda line: logger.info("%s", line))
        job_seconds = time.monotonic() - started
        threads_per_rank = plan.env.get("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS"))
        paths = [select_checkpoint(plan.directory)]

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    scored = [score_checkpoint(path, config, args) for path in paths]
    result = {
        "config": str(args.config),
        "trained_here": not args.checkpoints,
        "training_minutes_budget": None if args.checkpoints else args.minutes,
        "job_seconds": job_seconds,
        "ranks": None if args.checkpoints else args.nproc,
        "threads_per_rank": threads_per_rank,
        "checkpoints": scored,
        "beats_persistence_everywhere": all(s["beats_persistence_everywhere"] for s in scored),
        "stable": all(s["rollout"]["stable"] for s in scored),
        "recorded": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))

    for s in scored:
        stable = s["rollout"]
        print(f"\n{s['checkpoint']}: seed {s['seed']}, {s['trained_steps']} steps in {s['training_seconds']:.0f} s "
              f"of training; {s['skill']['n_inits']} validation initial times "
              f"({s['validation_period'][0]} .. {s['validation_period'][1]}), RMSE in physical units")
        print(s["table"])
        print(f"beats persistence on every channel at 24 h and 5 days: {s['beats_persistence_everywhere']}")
        print(f"{args.rollout_days}-day rollout from {stable['n_inits']} dates: finite={stable['finite']}, "
              f"{stable['energy']} / analysis mean in [{stable['energy_ratio_min']:.2f}, {stable['energy_ratio_max']:.2f}] "
              f"(analysis itself [{stable['analysis_ratio_min']:.2f}, {stable['analysis_ratio_max']:.2f}]), stable={stable['stable']}")
    print(f"\nall checkpoints beat persistence everywhere: {result['beats_persistence_everywhere']}; "
          f"all stable: {result['stable']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
