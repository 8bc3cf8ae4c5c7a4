r"""The seasonal cycle of the training data's zonal means, as annual harmonics.

A forecaster built with ``seasonal_harmonics: K`` works on departures from
the seasonal cycle of its training data instead of on the states themselves.
With :math:`\gamma(t) = 2\pi p_y(t)` the year angle of :func:`models.forcings.year_angle`,
the cycle of normalised channel :math:`c` at latitude :math:`\phi` is

.. math::

    d_c(t, \phi) = \sum_{k=1}^{K} a_{ck}(\phi) \cos k\gamma(t) + b_{ck}(\phi) \sin k\gamma(t),

the annual mean left out (it is the normalisation's). The coefficients are a
least-squares fit of :math:`[1, \cos k\gamma, \sin k\gamma]` to the zonal
means of the training frames (:func:`fit_seasonal_cycle`). The forecaster's
jump from the state :math:`x` at time :math:`t_x` to time :math:`t_y` becomes

.. math::

    F(x) = N(x - d(t_x)) + d(t_y),

so the known seasonal tendency :math:`d(t_y) - d(t_x)` is added outright and
the network :math:`N` sees, and returns, departures from the season.
"""

from __future__ import annotations

import torch
from torch import nn

from models.forcings import YEAR_SECONDS, year_angle


def harmonic_basis(seconds: torch.Tensor, harmonics: int) -> torch.Tensor:
    r"""``[cos k gamma, sin k gamma]`` for ``k = 1..K``, shape ``(T, 2K)`` (float64), :math:`\gamma` the year angle."""
    angle = year_angle(seconds.to(torch.float64))
    k = torch.arange(1, harmonics + 1, dtype=torch.float64, device=seconds.device)
    phases = angle[:, None] * k[None, :]
    return torch.cat([torch.cos(phases), torch.sin(phases)], dim=1)


def fit_seasonal_cycle(zonal_means: torch.Tensor, seconds: torch.Tensor, harmonics: int) -> torch.Tensor:
    """Least-squares harmonics of ``zonal_means`` ``(T, C, nlat)`` at times ``seconds`` ``(T,)``.

    Fits ``[1, cos k gamma, sin k gamma]`` (k = 1..K) at every channel and latitude and
    returns the harmonic coefficients without the constant, shape ``(C, nlat, 2K)``.

    Raises
    ------
    ValueError
        Fewer than a year of distinct times (the harmonics are then not determined).
    """
    if seconds.numel() != zonal_means.shape[0]:
        raise ValueError(f"{zonal_means.shape[0]} zonal means but {seconds.numel()} times")
    if float(seconds.max() - seconds.min()) < YEAR_SECONDS * (1 - 1 / 365):
        raise ValueError("a seasonal cycle needs at least a year of training data")
    basis = harmonic_basis(seconds, harmonics)
    design = torch.cat([torch.ones(basis.shape[0], 1, dtype=torch.float64), basis], dim=1)
    targets = zonal_means.to(torch.float64).reshape(zonal_means.shape[0], -1)
    solution = torch.linalg.lstsq(design, targets).solution  # (1 + 2K, C * nlat)
    return solution[1:].T.reshape(zonal_means.shape[1], zonal_means.shape[2], 2 * harmonics)


class SeasonalCycle(nn.Module):
    """:math:`d(t)` of the module docstring; its coefficients are a buffer set from the training data."""

    def __init__(self, channels: int, nlat: int, harmonics: int) -> None:
        super().__init__()
        if harmonics < 1:
            raise ValueError(f"a seasonal cycle needs at least one harmonic, got {harmonics}")
        self.harmonics = harmonics
        self.register_buffer("seasonal_coefficients", torch.zeros(channels, nlat, 2 * harmonics))
        self.register_buffer("seasonal_step_seconds", torch.zeros((), dtype=torch.float64))

    def set_coefficients(self, coefficients: torch.Tensor, step_seconds: float) -> None:
        """Store fitted coefficients ``(C, nlat, 2K)`` (from :func:`fit_seasonal_cycle`) and the
        model's time step in seconds (a forecaster's valid times advance by it)."""
        if tuple(coefficients.shape) != tuple(self.seasonal_coefficients.shape):
            raise ValueError(f"seasonal coefficients of shape {tuple(coefficients.shape)}, "
                             f"expected {tuple(self.seasonal_coefficients.shape)}")
        if not step_seconds > 0:
            raise ValueError(f"the time step must be > 0 seconds, got {step_seconds}")
        self.seasonal_coefficients.copy_(coefficients)
        self.seasonal_step_seconds.fill_(step_seconds)

    def forward(self, seconds: torch.Tensor, nlon: int) -> torch.Tensor:
        """:math:`d(t)` at POSIX ``seconds`` ``(B,)``, shape ``(B, C, nlat, nlon)`` (float32)."""
        basis = harmonic_basis(seconds, self.harmonics).to(self.seasonal_coefficients.dtype)
        cycle = torch.einsum("bk,cyk->bcy", basis, self.seasonal_coefficients)
        return cycle[..., None].expand(-1, -1, -1, nlon)
