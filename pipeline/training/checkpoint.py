"""Self-contained checkpoints: ``<run_dir>/checkpoints/<model>/seed-<k>/{last,best}.pt``.

A checkpoint is one ``torch.save`` file holding only tensors and plain
Python values (it loads with ``weights_only=True``):

- ``format``/``format_version``, ``software_version``, ``torch_version``, ``created``;
- ``model``: ``kind``, ``name`` and the JSON-able ``hparams`` that
  :func:`models.registry.build_model` takes, ``state_dict`` (static input
  fields included as a buffer);
- ``channels``, ``static``, ``grid`` (nlat, nlon, name), ``time_step_hours``,
  ``normalisation`` (per-channel mean and std of stats.nc);
- ``seed``, ``progress`` (step, epoch, batch in epoch, steps per epoch,
  total steps, elapsed seconds, complete), ``optimizer``,
  ``rng`` (torch, CUDA, numpy and Python generator states of every rank),
  ``world_size``, ``metrics`` (latest validation), ``best_score``;
- ``config``: the run config as JSON text;
- with ``training.ema_decay`` only: ``model.state_dict`` holds the averaged
  weights, ``training_weights`` the live ones the optimiser moves, and
  ``weight_average`` (``decay``, ``updates``) the average's state;
- DYffusion forecaster stage only: ``interpolator``, the frozen interpolator
  it was trained with (``kind``, ``hparams``, ``state_dict``, ``source``
  path), so the forecaster's file alone rebuilds the whole sampler
  (:class:`models.dyffusion.DYffusion`).

Files are written atomically: a temporary file in the same directory,
flushed to disk, then ``os.replace``; a killed writer leaves at most a
``.*.tmp`` file, which the next run removes. An ensemble needs nothing but
the file: :func:`load_checkpoint` rebuilds the model without our config classes.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.dyffusion import DYffusion
from models.registry import build_model
from pipeline import __version__
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from pipeline.training.normalisation import Normalisation

logger = logging.getLogger(__name__)

FORMAT = "myriad-checkpoint"
FORECASTER_KIND = "dyffusion_forecaster"
INTERPOLATOR_KIND = "dyffusion_interpolator"
FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


def seed_directory(run_dir: Path, model_name: str, seed: int) -> Path:
    """``<run_dir>/checkpoints/<model_name>/seed-<seed>``."""
    return Path(run_dir) / "checkpoints" / model_name / f"seed-{seed}"


def select_checkpoint(directory: Path) -> Path:
    """The checkpoint of a seed directory that forecasts use: ``best.pt``, else ``last.pt``.

    Raises
    ------
    MyriadError
        Neither file exists.
    """
    directory = Path(directory)
    for name in (BEST, LAST):
        if (directory / name).is_file():
            return directory / name
    raise MyriadError(f"checkpoint directory {directory}: no {BEST} or {LAST} (train it with `myriad train CONFIG`)")


def temporary_path(path: Path) -> Path:
    """A unique hidden sibling ``.<name>.<pid>.<random>.tmp`` to write before renaming onto ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files a killed writer left in ``directory``."""
    for path in Path(directory).glob(".*.tmp"):
        path.unlink(missing_ok=True)
        logger.info("removed unfinished checkpoint write %s", path)


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "software_version": __version__,
               "torch_version": str(torch.__version__), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               **payload}
    tmp = temporary_path(path)
    try:
        with open(tmp, "xb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file's payload (tensors and plain values only).

    Raises
    ------
    MyriadError
        Missing, unreadable or foreign file, or a newer format than this software reads.
    """
    path = Path(path)
    if not path.is_file():
        raise MyriadError(f"checkpoint {path}: does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors of a truncated or foreign file come in many types
        raise MyriadError(f"checkpoint {path}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MyriadError(f"checkpoint {path}: not a Myriad checkpoint")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise MyriadError(
            f"checkpoint {path}: format version {payload['format_version']} is newer than this software reads "
            f"({FORMAT_VERSION}); upgrade myriad"
        )
    return payload


@dataclass(frozen=True)
class CheckpointInfo:
    """What a forecast needs to know about a checkpoint besides its weights."""

    path: Path
    kind: str
    name: str
    hparams: dict[str, Any]
    channels: tuple[str, ...]
    static: tuple[str, ...]
    grid: Grid
    time_step_hours: int
    normalisation: Normalisation
    seed: int
    step: int
    epoch: int
    complete: bool
    metrics: dict[str, Any]
    software_version: str
    config_json: str


def checkpoint_info(payload: dict[str, Any], path: Path) -> CheckpointInfo:
    """The descriptive part of a checkpoint payload."""
    model = payload["model"]
    grid = payload["grid"]
    progress = payload["progress"]
    return CheckpointInfo(
        path=Path(path),
        kind=model["kind"],
        name=model["name"],
        hparams=dict(model["hparams"]),
        channels=tuple(payload["channels"]),
        static=tuple(payload["static"]),
        grid=Grid(int(grid["nlat"]), int(grid["nlon"])),
        time_step_hours=int(payload["time_step_hours"]),
        normalisation=Normalisation.from_dict(payload["normalisation"]),
        seed=int(payload["seed"]),
        step=int(progress["step"]),
        epoch=int(progress["epoch"]),
        complete=bool(progress["complete"]),
        metrics=dict(payload.get("metrics") or {}),
        software_version=str(payload["software_version"]),
        config_json=str(payload["config"]),
    )


def _rebuild(section: dict[str, Any]) -> nn.Module:
    """A network from a checkpoint's ``kind``/``hparams``/``state_dict`` section."""
    model = build_model(section["kind"], **section["hparams"])
    model.load_state_dict(section["state_dict"])
    return model


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model of a checkpoint from the file alone, in eval mode.

    Parameters
    ----------
    path
        A ``last.pt`` / ``best.pt`` file.
    map_location
        Device for the weights (and the returned model).

    Returns
    -------
    (model, info)
        The model with its weights and static fields (for a DYffusion
        forecaster: :class:`models.dyffusion.DYffusion`, forecaster plus its
        interpolator, whose ``forward`` is one step); ``info`` carries
        channels, grid, time step, normalisation and training progress.

    Raises
    ------
    MyriadError
        Unreadable or foreign file, unknown model kind, weights that do not fit.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location)
    info = checkpoint_info(payload, path)
    try:
        model = _rebuild(payload["model"])
        if info.kind == FORECASTER_KIND:
            frozen = payload.get("interpolator")
            model = DYffusion(model, _rebuild(frozen) if frozen is not None else None)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise MyriadError(f"checkpoint {path}: cannot rebuild the {info.kind!r} model ({exc})") from None
    model.to(map_location)
    model.eval()
    return model, info


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states (torch CPU and CUDA, numpy, Python) as plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
