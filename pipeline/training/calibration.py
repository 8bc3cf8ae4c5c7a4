"""Calibration: each checkpoint's deterministic RMSE at 48 h, the bred-vector amplitude.

After training, the checkpoint that forecasts use (:func:`select_checkpoint`:
``best.pt``, else ``last.pt``) is rolled out from evenly spaced initial
times of the validation period to ``training.calibration_lead_hours``
(48 h), and the area-weighted RMSE per channel in physical units (formula in
:mod:`pipeline.training.validation`) is written beside it as
``calibration.json``::

    {"lead_hours": 48, "checkpoint": "best.pt", "step": 1200, "n_inits": 64,
     "period": ["2001-07-01T00:00", "2001-12-31T18:00"],
     "rmse": {"z500": 312.5, ...}, "persistence_rmse": {"z500": 1020.2, ...}}

The ensemble stage reads it with :func:`load_calibration` (HENS: bred-vector
amplitude = 0.35 x this RMSE per channel).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import MyriadError
from pipeline.training.checkpoint import temporary_path

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """Deterministic RMSE per channel of one checkpoint at one lead time."""

    lead_hours: int
    checkpoint: str
    """File name of the calibrated checkpoint in the same directory."""
    step: int
    """Training step of that checkpoint."""
    n_inits: int
    period: tuple[str, str]
    rmse: dict[str, float]
    persistence_rmse: dict[str, float]


def write_calibration(calibration: Calibration, directory: Path) -> Path:
    """Write ``<directory>/calibration.json`` atomically; returns its path."""
    path = Path(directory) / CALIBRATION_FILE
    tmp = temporary_path(path)
    try:
        tmp.write_text(json.dumps(asdict(calibration), indent=2))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_calibration(checkpoint_dir: str | Path) -> Calibration:
    """Read ``<checkpoint_dir>/calibration.json`` (a ``seed-<k>`` directory).

    Raises
    ------
    MyriadError
        Missing or unreadable file.
    """
    path = Path(checkpoint_dir) / CALIBRATION_FILE
    if not path.is_file():
        raise MyriadError(f"calibration {path}: does not exist (training writes it at the end; rerun `myriad train CONFIG`)")
    try:
        data = json.loads(path.read_text())
        return Calibration(
            lead_hours=int(data["lead_hours"]),
            checkpoint=str(data["checkpoint"]),
            step=int(data["step"]),
            n_inits=int(data["n_inits"]),
            period=(str(data["period"][0]), str(data["period"][1])),
            rmse={str(k): float(v) for k, v in data["rmse"].items()},
            persistence_rmse={str(k): float(v) for k, v in data["persistence_rmse"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise MyriadError(f"calibration {path}: unreadable ({type(exc).__name__}: {exc})") from None
