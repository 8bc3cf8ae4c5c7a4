r"""Training loss: squared error integrated over the sphere, weighted per channel.

For prediction :math:`\hat z` and target :math:`z` (normalised units), with
quadrature weights :math:`q_{jk}` (:meth:`pipeline.grid.Grid.quadrature_weights`,
:math:`\sum_{jk} q_{jk} = 1`), user channel weights :math:`w_c` normalised to
mean 1 and per-channel error units :math:`s_c`,

.. math::

    L = \frac{1}{B\,C} \sum_{b,c} \frac{w_c}{s_c^2} \sum_{jk} q_{jk} (\hat z_{bcjk} - z_{bcjk})^2,

the area-weighted mean squared error, so every part of the sphere counts by
its area whatever the grid crowding near the poles. With
``training.loss_units: tendency`` (the default) :math:`s_c` is the channel's
one-step tendency std over its std, so an error counts relative to how much
the channel changes in one step (the HENS scaling ``(std / tendency std)^2``;
without it slowly changing fields such as z500, whose 6 h change is under 1 %
of their spread, would hardly enter the loss); with ``normalised``
:math:`s_c = 1`. An ``n``-step
autoregressive loss is the mean of the ``n`` step losses along the rollout.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.errors import MyriadError
from pipeline.grid import Grid


def channel_weight_vector(channels: list[str], weights: dict[str, float], units: np.ndarray | None = None,
                          power: int = 2) -> np.ndarray:
    """Loss weights ``w_c / s_c^power`` in channel order: ``w`` from ``weights`` (default 1, normalised
    to mean 1), ``s`` the error units (default 1); ``power`` is 2 for squared errors, 1 for absolute ones.

    Raises
    ------
    MyriadError
        A weight for a channel that is not configured, or all weights zero.
    """
    unknown = [name for name in weights if name not in channels]
    if unknown:
        raise MyriadError(f"training.channel_weights: {unknown} are not among the configured channels {channels}")
    vector = np.array([weights.get(name, 1.0) for name in channels], dtype=np.float64)
    if vector.sum() <= 0:
        raise MyriadError("training.channel_weights: at least one channel needs a positive weight")
    vector = vector / vector.mean()
    return vector if units is None else vector / np.asarray(units, dtype=np.float64) ** power


class SphericalMSE(nn.Module):
    """Area-weighted, channel-weighted mean squared error (formula in the module docstring).

    Parameters
    ----------
    grid
        Grid of the fields (quadrature weights).
    channel_weights
        One weight per channel (:func:`channel_weight_vector`).
    """

    def __init__(self, grid: Grid, channel_weights: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("quadrature", torch.as_tensor(grid.quadrature_weights(), dtype=torch.float32))
        self.register_buffer("channel_weights", torch.as_tensor(channel_weights, dtype=torch.float32))

    def per_channel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``sum_jk q_jk (prediction - target)^2``, shape (B, C), float32."""
        error = (prediction.float() - target.float()).square()
        return (error * self.quadrature).sum(dim=(-2, -1))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.per_channel(prediction, target) * self.channel_weights).mean()


class SphericalL1(SphericalMSE):
    """Area-weighted, channel-weighted mean absolute error (DYffusion's forecaster loss).

    ``L = 1/(B C) sum_bc w_c/s_c sum_jk q_jk |prediction - target|``; build the
    weights with ``channel_weight_vector(..., power=1)``.
    """

    def per_channel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``sum_jk q_jk |prediction - target|``, shape (B, C), float32."""
        error = (prediction.float() - target.float()).abs()
        return (error * self.quadrature).sum(dim=(-2, -1))
