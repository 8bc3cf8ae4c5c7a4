"""Test helpers for the ensemble stage: a tiny planet run with two trained, calibrated checkpoints.

Made the way users make one: the embedded shallow-water planet ingested by
the real ``ingest`` and ``compute_statistics`` (17 x 32 grid, channels z500,
u500, v500 and the non-negative tp6h, 6-hourly over 12 days), then two seeds
of a tiny SFNO trained for a few steps by the real :class:`Trainer`, which
also writes their ``calibration.json``. Ensemble tests write their own stores
under the shared run directory (``ensemble.name`` differs per test).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from pipeline.data.ingest import ingest
from pipeline.data.statistics import compute_statistics
from pipeline.training.distributed import DistributedContext
from pipeline.training.trainer import Trainer
from tests.training_fixtures import merged, write_config

CHANNELS = ["z500", "u500", "v500", "tp6h"]
NLAT, NLON = 17, 32
INIT_TIMES = ["2000-01-10T00:00", "2000-01-11T06:00"]
SEEDS = [0, 1]


def planet_run(root: Path) -> dict[str, Any]:
    """The run config (as a dict): planet store, tiny model, training and ensemble sections."""
    run_dir = root / "run"
    return {
        "run_dir": str(run_dir),
        "source": {"kind": "planet", "dt_seconds": 1800, "spinup_days": 2, "stirring_lmin": 3, "stirring_lmax": 7},
        "grid": {"nlat": NLAT, "nlon": NLON},
        "channels": list(CHANNELS),
        "time": {"start": "2000-01-01T00:00", "end": "2000-01-12T18:00", "step_hours": 6},
        "ingest": {"block_size": 16, "chunk_time": 4},
        "dask": {"cluster": "threads", "n_workers": 1},
        # forcings: every ensemble test also checks that breeding and rollouts pass valid times
        "model": {"name": "tiny", "embed_dim": 16, "num_layers": 2, "scale_factor": 1,
                  "forcings": ["year_progress", "day_progress"]},
        "training": {
            "seeds": list(SEEDS),
            "batch_size": 4,
            "max_steps": 4,
            "epochs": None,
            "lr": 1e-3,
            "warmup_steps": 1,
            "checkpoint_every": 100,
            "log_every": 100,
            "train_period": {"start": "2000-01-01T00:00", "end": "2000-01-08T18:00"},
            "val_period": {"start": "2000-01-09T00:00", "end": "2000-01-12T18:00"},
            "val_lead_hours": [6],
            "val_max_inits": 2,
            "calibration_lead_hours": 48,
            "calibration_max_inits": 2,
            "climatology_samples": 8,
        },
        "ensemble": {
            "name": "base",
            "checkpoints": [str(run_dir / "checkpoints" / "tiny" / f"seed-{s}") for s in SEEDS],
            "init_times": list(INIT_TIMES),
            "n_steps": 3,
            "n_pairs": 2,
            "include_control": True,
            "member_block": 4,
            "output_channels": ["z500", "u500", "tp6h"],
        },
    }


def build_run(root: Path) -> dict[str, Any]:
    """Ingest the planet, compute statistics and train + calibrate both seeds; returns the config dict."""
    data = planet_run(root)
    config = write_config(root / "base.yaml", data)
    ingest(config, progress=False)
    compute_statistics(config)
    single = DistributedContext(0, 1, 0, torch.device("cpu"), None)
    for seed in SEEDS:
        trainer = Trainer(config, seed, single)
        trainer.fit()
        trainer.calibrate()
    return data


def ensemble_config(data: dict[str, Any], path: Path, **ensemble: Any) -> Path:
    """Write ``data`` with ``ensemble`` keys replaced as a config file at ``path``; returns the path."""
    merged_data = merged(data, ensemble={**copy.deepcopy(data["ensemble"]), **ensemble})
    write_config(path, merged_data)
    return path
