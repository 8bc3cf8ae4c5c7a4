"""Test helpers for the training stage: a small real analysis store and run configs for it.

The store is made the way users make one: NetCDF files (tests/analysis_files.py)
ingested by the real ``ingest`` and ``compute_statistics`` into
``<root>/run/analysis.zarr`` and ``stats.nc`` (9 x 16 grid, channels t2m,
msl, u10m, static lsm, 6-hourly over 40 days). Each test trains into its
own ``checkpoints/<model.name>`` so tests can share the store.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import MyriadConfig, load_config
from pipeline.data.ingest import ingest
from pipeline.data.statistics import compute_statistics
from tests.analysis_files import CHANNELS, GRID, write_files

START = "2000-01-01T00:00"
END = "2000-02-09T18:00"  # 160 times: 8 files x 20
TRAINING_END = "2000-02-01T18:00"  # 128 training times
VAL_START = "2000-02-02T00:00"  # 32 validation times

TINY_MODEL = {"embed_dim": 16, "num_layers": 2, "scale_factor": 1, "mlp_ratio": 2.0}
TINY_TRAINING = {
    "seeds": [0],
    "batch_size": 4,
    "max_steps": 12,
    "epochs": None,
    "lr": 1e-3,
    "warmup_steps": 2,
    "checkpoint_every": 5,
    "log_every": 5,
    "train_period": {"start": START, "end": TRAINING_END},
    "val_period": {"start": VAL_START, "end": END},
    "val_lead_hours": [6, 24],
    "val_max_inits": 8,
    "calibration_lead_hours": 48,
    "calibration_max_inits": 8,
    "climatology_samples": 64,
}


def base_config(root: Path) -> dict[str, Any]:
    """The run config (as a dict) of the store under ``root``."""
    return {
        "run_dir": str(root / "run"),
        "source": {"kind": "files", "paths": [str(root / "data" / "*.nc")]},
        "grid": {"nlat": GRID.nlat, "nlon": GRID.nlon},
        "channels": list(CHANNELS),
        "static": ["lsm"],
        "time": {"start": START, "end": END, "step_hours": 6},
        "ingest": {"block_size": 40, "chunk_time": 4},
        "dask": {"cluster": "threads", "n_workers": 1},
        "model": dict(TINY_MODEL),
        "training": copy.deepcopy(TINY_TRAINING),
    }


def build_store(root: Path) -> dict[str, Any]:
    """Write the NetCDF files, ingest them and compute stats.nc; returns the base config dict."""
    write_files(root / "data", START, n_files=8, times_per_file=20)
    data = base_config(root)
    config = write_config(root / "base.yaml", data)
    ingest(config, progress=False)
    compute_statistics(config)
    return data


def merged(data: dict[str, Any], **sections: dict[str, Any] | Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``sections`` merged in (dicts update, other values replace)."""
    out = copy.deepcopy(data)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(copy.deepcopy(value))
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_config(path: Path, data: dict[str, Any]) -> MyriadConfig:
    """Write ``data`` as YAML at ``path`` and load it back through the real loader."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def run_module_command(config_path: Path, *extra: str) -> list[str]:
    """``python -m pipeline.training.run CONFIG ...`` with this interpreter."""
    return [sys.executable, "-m", "pipeline.training.run", str(config_path), *extra]
