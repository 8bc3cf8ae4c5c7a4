r"""Polar emphasis: a training loss that scores the rows near the poles more than their area does.

The area-weighted losses of :mod:`pipeline.training.losses` give the caps
poleward of :math:`\phi_p` the share :math:`1 - \sin\phi_p` of their weight
(13% at 60 degrees). With a base training loss :math:`L_0` (any of them, or
the Helmholtz wind loss), the rows :math:`P = \{j : |\phi_j| \ge \phi_p\}`
and a weight :math:`\beta \ge 0`,

.. math::

    L = L_0 + \beta\, \frac{1}{B\,C} \sum_{b,c} \frac{w_c}{s_c^p} \sum_{j \in P,\,k} q_{jk}\, e(\hat z_{bcjk} - z_{bcjk}),

with the channel weights of the base loss's components (:func:`pipeline.training.losses.channel_weight_vector`),
:math:`e(d) = d^2` (:math:`p = 2`) for a squared-error or adjusted-MSE base and :math:`e(d) =
|d|` (:math:`p = 1`) for an L1 base. Under the MSE this is the MSE with the polar rows' area
weight times :math:`1 + \beta`; under the adjusted MSE, whose spectra cannot be restricted to
rows, the polar term is a plain squared error beside it. Validation keeps scoring the
whole sphere by area.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.grid import Grid
from pipeline.training.losses import SphericalL1, SphericalMSE


def polar_rows(grid: Grid, latitude: float) -> np.ndarray:
    r"""1.0 on the rows with :math:`|\phi| \ge` ``latitude`` degrees, 0.0 elsewhere (shape ``(nlat,)``)."""
    return (np.abs(grid.latitudes) >= latitude).astype(np.float64)


class PolarEmphasis(nn.Module):
    """``base + weight * polar`` (formula in the module docstring).

    Parameters
    ----------
    base
        The training loss over the whole sphere.
    polar
        A :class:`SphericalMSE` or :class:`SphericalL1` whose ``row_weights`` are :func:`polar_rows`.
    weight
        The polar weight beta of the module docstring.
    """

    def __init__(self, base: nn.Module, polar: SphericalMSE, weight: float) -> None:
        super().__init__()
        self.base = base
        self.polar = polar
        self.weight = weight

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base(prediction, target) + self.weight * self.polar(prediction, target)


def polar_term(grid: Grid, latitude: float, channel_weights: np.ndarray, absolute: bool) -> SphericalMSE:
    """The polar rows' area-weighted squared error (absolute error if ``absolute``) with ``channel_weights``."""
    loss_class = SphericalL1 if absolute else SphericalMSE
    return loss_class(grid, channel_weights, row_weights=polar_rows(grid, latitude))
