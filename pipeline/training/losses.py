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
from torch_harmonics import RealSHT

from models.spectral import SpectralAnalysis, harmonic_factors
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
    row_weights
        Optional factor per latitude row on the quadrature weights (shape ``(nlat,)``), for a loss
        restricted to some rows (:mod:`pipeline.training.polar_loss`); default all ones.
    """

    def __init__(self, grid: Grid, channel_weights: np.ndarray, row_weights: np.ndarray | None = None) -> None:
        super().__init__()
        quadrature = grid.quadrature_weights()
        if row_weights is not None:
            quadrature = quadrature * np.asarray(row_weights)[:, None]
        self.register_buffer("quadrature", torch.as_tensor(quadrature, dtype=torch.float32))
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


class SphericalAMSE(SphericalMSE):
    r"""Adjusted MSE (Subich et al. 2025, "Fixing the double penalty"): squared error that does not reward damping.

    With the orthonormal real SHT of prediction :math:`x` and target :math:`y`,
    the power and cross power per total wavenumber :math:`l < L` (:math:`L =
    \lfloor (n_{lat} + 1) / 2 \rfloor`, the degrees the planet resolves),
    :math:`P_x(l) = \frac{1}{4\pi}\sum_m c_m |x_{lm}|^2`, :math:`X(l) =
    \frac{1}{4\pi}\sum_m c_m \mathrm{Re}(x_{lm} \bar y_{lm})` (:math:`c_0 = 1`,
    :math:`c_{m>0} = 2`) and the coherence :math:`\rho_l = X / \sqrt{P_x P_y}`,
    the area-weighted MSE of fields band-limited to those degrees is (Parseval)

    .. math::

        \sum_l (\sqrt{P_x} - \sqrt{P_y})^2 + 2 \sqrt{P_x P_y}\,(1 - \rho_l),

    which a forecast lowers by damping the scales it cannot place (its
    minimum over the amplitude of an uncorrelated scale is zero amplitude).
    AMSE weighs the decorrelation term by :math:`\max(P_x, P_y)` instead:

    .. math::

        \mathrm{AMSE} = \sum_l (\sqrt{P_x} - \sqrt{P_y})^2 + 2 \max(P_x, P_y)\,(1 - \rho_l),

    so each scale's best amplitude is the target's whatever its coherence
    (an uncorrelated scale costs :math:`3P_y` damped to nothing and
    :math:`2P_y` at its true amplitude); over the degrees :math:`l < L`,
    AMSE >= MSE, equal where the spectra agree. Channel weights as for
    :class:`SphericalMSE` (``power=2``). Degrees :math:`l \ge L` do not enter
    (the trainer refuses a forecaster whose increments reach them). The
    transform and the spectra run in float32 and float64 outside any
    autocast: in bf16 the coherence of a good forecast would be rounding noise.
    """

    TINY = 1e-30
    """Absolute floor of the powers under square roots (finite gradients at zero)."""
    RELATIVE_FLOOR = 1e-6
    r"""The coherence's denominator is at least this fraction of :math:`\max(P_x, P_y)` (scale-free)."""

    def __init__(self, grid: Grid, channel_weights: np.ndarray) -> None:
        super().__init__(grid, channel_weights)
        self.lmax = self.degrees(grid)
        r""":math:`L`: degrees below it enter the loss."""
        self.analysis = SpectralAnalysis(RealSHT(grid.nlat, grid.nlon, lmax=self.lmax, mmax=min(self.lmax, grid.nlon // 2 + 1),
                                                 grid="equiangular", norm="ortho").float())
        factors = harmonic_factors(grid.nlon, self.analysis.mmax) / (4.0 * torch.pi)
        self.register_buffer("order_factors", factors, persistent=False)

    @staticmethod
    def degrees(grid: Grid) -> int:
        r""":math:`L = \lfloor (n_{lat} + 1) / 2 \rfloor`, the number of degrees the loss scores (those the grid resolves)."""
        return (grid.nlat + 1) // 2

    def spectra(self, prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:math:`P_x, P_y, X` per total wavenumber (float64), each of shape ``(*batch, L)``."""
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            x, y = self.analysis(prediction.float()).double(), self.analysis(target.float()).double()  # (mmax, 2, *batch, L)
        return self._over_orders(x * x), self._over_orders(y * y), self._over_orders(x * y)

    def _over_orders(self, product: torch.Tensor) -> torch.Tensor:
        r""":math:`\frac{1}{4\pi}\sum_m c_m` of a pair-layout product (real and imaginary parts summed)."""
        factors = self.order_factors.view(-1, *[1] * (product.ndim - 1))
        return (product * factors).sum(dim=(0, 1))

    def per_channel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """AMSE per sample and channel, shape (B, C), float32."""
        px, py, cross = self.spectra(prediction, target)
        larger = torch.maximum(px, py)
        amplitude = ((px + self.TINY).sqrt() - (py + self.TINY).sqrt()).square()
        scale = torch.maximum((px * py).clamp_min(self.TINY).sqrt(), self.RELATIVE_FLOOR * larger).clamp_min(self.TINY)
        decorrelation = 2.0 * larger * (1.0 - cross / scale)
        return (amplitude + decorrelation).sum(dim=-1).float()
