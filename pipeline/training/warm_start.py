r"""Warm start: a new run's first weights from another trained model (``training.init_from``).

A fine-tune that changes the network's *inputs* cannot resume: ``last.pt``
holds an optimiser, a schedule and weights of another shape. A warm start
copies only the weights of a trained checkpoint (forecasts' weights: the
weight average where the run kept one) into the freshly built network; the
optimiser, the learning-rate schedule (warm-up, then the cosine over this
run's budget), the step count and ``best.pt`` start anew.

The checkpoint is ``<run_dir>/checkpoints/<model>[-<stage>]/seed-<k>/<best|last>.pt``
of the same seed (or of ``init_from.seed``) and (for DYffusion) the same stage. Its network must be the
one this config builds, with the same channels, static fields, grid and
normalisation, except that this config may **append forcings**
(:mod:`models.forcings`) and may switch **wind_vectors** on or off. Forcings
are the last input channels of the SFNO's 1x1 encoder
:math:`h = W [x; s; p; f] + b`, so the encoder weight gains columns for the
new forcing channels, and they start at zero: the warm-started network
computes exactly the checkpoint's function until training teaches it to use
the new inputs. The wind pairs' vector band limit has no weights (its buffer
``output_std`` comes from this run's statistics); it changes only how the
decoded wind increments are projected.

A run that already has its own ``last.pt`` resumes from it; ``init_from`` is
then not read again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.forcings import n_forcing_channels
from pipeline.config import MyriadConfig
from pipeline.errors import MyriadError
from pipeline.training.checkpoint import checkpoint_info, read_checkpoint, seed_directory
from pipeline.training.dataset import AnalysisData

logger = logging.getLogger(__name__)

BRIDGED_HPARAMS = ("forcings", "wind_pairs", "seasonal_harmonics")
"""Network settings a warm start may change (forcings only by appending)."""
SET_BY_TRAINER = ("output_std", "seasonal_coefficients", "seasonal_step_seconds")
"""Buffers the trainer fills from this run's statistics: a checkpoint need not hold them."""


def init_checkpoint_path(config: MyriadConfig, stage: str | None, seed: int) -> Path | None:
    """The checkpoint file ``training.init_from`` names for this stage and seed (None when unset):
    the source's seed is ``init_from.seed`` when set, otherwise ``seed``.

    Raises
    ------
    MyriadError
        The file does not exist.
    """
    init = config.training.init_from
    if init is None:
        return None
    model = config.model.model_copy(update={"name": init.model})
    run_dir = init.run_dir if init.run_dir is not None else config.run_dir
    source_seed = seed if init.seed is None else init.seed
    path = seed_directory(run_dir, model.checkpoint_name(stage), source_seed) / f"{init.checkpoint}.pt"
    if not path.is_file():
        what = f"the {stage} stage of " if stage is not None else ""
        raise MyriadError(f"training.init_from: {path} does not exist (no {init.checkpoint}.pt of {what}model "
                          f"{init.model!r}, seed {source_seed}, under {run_dir}); train that model first or fix "
                          "init_from")
    return path


def warm_start(model: nn.Module, kind: str, hparams: dict[str, Any], data: AnalysisData, path: Path) -> list[str]:
    """Load the weights of checkpoint ``path`` into ``model`` (built as ``kind`` with ``hparams``).

    Returns the forcings the checkpoint lacked (their encoder columns are zero).

    Raises
    ------
    MyriadError
        Naming the checkpoint and every difference that a warm start cannot bridge.
    """
    payload = read_checkpoint(path)
    info = checkpoint_info(payload, path)
    forcings, old_forcings = list(hparams.get("forcings", [])), list(info.hparams.get("forcings", []))
    added = forcings[len(old_forcings):]
    problems = []
    if info.kind != kind:
        problems.append(f"it is a {info.kind!r} network, this run trains a {kind!r} one")
    if forcings[: len(old_forcings)] != old_forcings:
        problems.append(f"its forcings {old_forcings} are not the first of this config's {forcings} "
                        "(a warm start can only append forcings)")
    others = sorted(key for key in set(hparams) | set(info.hparams)
                    if key not in BRIDGED_HPARAMS and hparams.get(key) != info.hparams.get(key))
    if others:
        problems.append("other model settings: " + ", ".join(f"{k} {info.hparams.get(k)!r} (config: {hparams.get(k)!r})" for k in others))
    if list(info.channels) != list(data.channels):
        problems.append(f"channels {list(info.channels)} (config: {list(data.channels)})")
    elif not (np.allclose(info.normalisation.mean, data.normalisation.mean, rtol=1e-6, atol=0)
              and np.allclose(info.normalisation.std, data.normalisation.std, rtol=1e-6, atol=0)):
        problems.append("other normalisation statistics (its stats.nc is not this run's)")
    if list(info.static) != list(data.static_names):
        problems.append(f"static fields {list(info.static)} (config: {list(data.static_names)})")
    if (info.grid.nlat, info.grid.nlon) != (data.grid.nlat, data.grid.nlon):
        problems.append(f"grid {info.grid.nlat}x{info.grid.nlon} (config: {data.grid.nlat}x{data.grid.nlon})")
    if problems:
        raise MyriadError(f"training.init_from: checkpoint {path} cannot start this run: " + "; ".join(problems))
    model.load_state_dict(_widened(payload["model"]["state_dict"], model.state_dict(), n_forcing_channels(added), path))
    return added


def _widened(saved: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], new_columns: int, path: Path) -> dict[str, torch.Tensor]:
    """``saved`` with each 1x1 encoder weight given ``new_columns`` zero input columns at the end, as ``fresh`` has.

    Buffers of :data:`SET_BY_TRAINER` are taken from ``fresh`` and dropped from ``saved``.
    """
    def set_by_trainer(key: str) -> bool:
        return key.rsplit(".", 1)[-1] in SET_BY_TRAINER

    saved = {key: value for key, value in saved.items() if not set_by_trainer(key)}
    state = {key: value for key, value in fresh.items() if set_by_trainer(key)}
    if set(saved) != set(fresh) - set(state):
        raise MyriadError(f"training.init_from: checkpoint {path} holds other tensors than this network "
                          f"(missing {sorted(set(fresh) - set(state) - set(saved))[:3]}, unexpected {sorted(set(saved) - set(fresh))[:3]})")
    for key, value in saved.items():
        shape = fresh[key].shape
        if value.shape != shape:
            widened = (value.dim() == 4 and key.endswith("encoder.weight") and value.shape[0] == shape[0]
                       and value.shape[1] + new_columns == shape[1] and value.shape[2:] == shape[2:])
            if not widened:
                raise MyriadError(f"training.init_from: checkpoint {path}: {key} has shape {tuple(value.shape)}, "
                                  f"this network's is {tuple(shape)}")
            value = torch.cat([value, value.new_zeros(shape[0], new_columns, *shape[2:])], dim=1)
        state[key] = value
    return state
