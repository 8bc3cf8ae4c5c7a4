"""Build a model from its kind and plain keyword hyper-parameters.

Checkpoints store ``kind`` and ``hparams`` (a JSON-able dict), so a model
can be rebuilt from a checkpoint alone, without our config classes.
Spherical DYffusion registers its two networks (one checkpoint per training stage).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from models.dyffusion import DYffusionForecaster, DYffusionInterpolator
from models.sfno import SFNO

MODEL_KINDS: dict[str, type[nn.Module]] = {
    "sfno": SFNO,
    "dyffusion_interpolator": DYffusionInterpolator,
    "dyffusion_forecaster": DYffusionForecaster,
}


def build_model(kind: str, **hparams: Any) -> nn.Module:
    """Instantiate the model class registered under ``kind`` with ``hparams``.

    Raises
    ------
    KeyError
        ``kind`` is not registered.
    TypeError
        A hyper-parameter the class does not take.
    """
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}") from None
    return cls(**hparams)
