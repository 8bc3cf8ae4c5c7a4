r"""Spatially correlated Gaussian random fields on the sphere (bred-vector seeds).

A field is synthesised from random spherical-harmonic coefficients with the
orthonormal inverse real SHT of torch-harmonics on the canonical equiangular
grid (:class:`pipeline.grid.Grid`, poles included, latitude 90 -> -90):

.. math::

    \xi(\theta, \lambda) = \sum_{l=0}^{L-1} \Big[a_{l0} Y_{l0}
        + 2\,\mathrm{Re} \sum_{m=1}^{l} a_{lm} Y_{lm}\Big], \qquad
    a_{l0} \sim \mathcal N(0, C_l), \quad
    \mathrm{Re}\,a_{lm}, \mathrm{Im}\,a_{lm} \sim \mathcal N(0, C_l / 2),

all independent. By the addition theorem
:math:`\sum_m |Y_{lm}|^2 = (2l+1)/4\pi`, the field is isotropic with
covariance :math:`\mathrm{Cov}(\xi(x), \xi(y)) = \sum_l C_l \frac{2l+1}{4\pi}
P_l(\cos\gamma)` (:math:`\gamma` the angle between x and y) and pointwise
variance :math:`\sum_l C_l (2l+1)/4\pi`, the same at every latitude.

**Angular power spectrum** (a Gaussian, i.e. heat, kernel):

.. math::

    C_l = c \, \exp\!\big(-\tfrac12\, l(l+1)\, (\ell / R)^2\big),
    \qquad c \text{ such that } \sum_l C_l \tfrac{2l+1}{4\pi} = 1,

with :math:`R` = :data:`pipeline.grid.EARTH_RADIUS_M` and :math:`\ell` the
configured correlation length. **Definition of the correlation length**: the
Daley (1991) length :math:`\ell^2 = -\rho(0) / \rho''(0)`, with
:math:`\rho(d)` the correlation as a function of great-circle distance
:math:`d = R\gamma`. For this spectrum
:math:`\rho(d) \approx \exp(-d^2 / 2\ell^2)` while :math:`\ell \ll R` (the
heat kernel on the sphere at time :math:`(\ell/R)^2/2`), so :math:`\ell` is
the standard deviation of a Gaussian correlation function: the correlation
is :math:`e^{-1/2} \approx 0.61` at distance :math:`\ell` and :math:`1/e` at
:math:`\sqrt2\,\ell`. Exactly, for the truncated sum,
:math:`\ell_\mathrm{eff} = R \sqrt{2 \sum (2l+1) C_l / \sum (2l+1)\, l(l+1)\, C_l}`
(:attr:`SphericalSeedField.effective_correlation_length_m`), which equals
:math:`\ell` unless the grid cannot resolve it (then a warning is logged).

The expansion is truncated at :math:`L = \min(n_{lat}, n_{lon}/2)` with all
orders :math:`m \le l` (a triangular truncation without the longitudinal
Nyquist mode, whose sine part a grid cannot hold), which keeps the variance
exactly latitude-independent.

**Time correlation**: an AR(1) process with time scale :math:`\tau`,

.. math::

    \xi_{n+1} = \phi\, \xi_n + \sqrt{1 - \phi^2}\, \eta_n,
    \qquad \phi = e^{-\Delta t / \tau},

with :math:`\eta_n` independent fields of the same spectrum; a stationary
process with unit variance and lag-one correlation :math:`\phi`.

The random coefficients are drawn on the CPU from the caller's seeded
:class:`torch.Generator` (float32), so a seed gives the same coefficients on
every device; only the inverse SHT runs where the module lives (fields from
different devices agree to float32 rounding of the transform).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch_harmonics import InverseRealSHT

from pipeline.ensemble.config import DEFAULT_CORRELATION_LENGTH_KM
from pipeline.grid import EARTH_RADIUS_M, Grid

logger = logging.getLogger(__name__)

DEFAULT_CORRELATION_LENGTH_M = DEFAULT_CORRELATION_LENGTH_KM * 1e3
DEFAULT_TIMESCALE_S = 48 * 3600.0
"""HENS: AR(1) time scale of the seed field."""

_RESOLUTION_TOLERANCE = 0.05
"""Relative shortfall of the effective correlation length that triggers a warning."""


class SphericalSeedField(nn.Module):
    """Stationary, isotropic, unit-variance Gaussian random fields on a grid.

    Parameters
    ----------
    grid
        The canonical equiangular grid the fields live on.
    correlation_length_m
        Daley correlation length :math:`\\ell` in metres (see the module
        docstring for the definition).
    timescale_s
        AR(1) time scale :math:`\\tau` in seconds, used by :meth:`evolve`.
    """

    def __init__(
        self,
        grid: Grid,
        correlation_length_m: float = DEFAULT_CORRELATION_LENGTH_M,
        timescale_s: float = DEFAULT_TIMESCALE_S,
    ) -> None:
        super().__init__()
        if correlation_length_m <= 0 or timescale_s <= 0:
            raise ValueError("correlation_length_m and timescale_s must be positive")
        self.grid = grid
        self.correlation_length_m = float(correlation_length_m)
        self.timescale_s = float(timescale_s)
        self.lmax = min(grid.nlat, grid.nlon // 2)
        self.isht = InverseRealSHT(grid.nlat, grid.nlon, lmax=self.lmax, mmax=self.lmax, grid="equiangular", norm="ortho")

        degree = torch.arange(self.lmax, dtype=torch.float64)
        spectrum = torch.exp(-0.5 * degree * (degree + 1) * (self.correlation_length_m / EARTH_RADIUS_M) ** 2)
        spectrum = spectrum / torch.sum(spectrum * (2 * degree + 1) / (4 * math.pi))
        order = torch.arange(self.lmax)
        std = torch.where(order[None, :] == 0, spectrum.sqrt()[:, None], (spectrum / 2).sqrt()[:, None])
        std = torch.tril(std)  # a_lm = 0 for m > l
        self.register_buffer("spectrum", spectrum, persistent=False)
        self.register_buffer("real_std", std.float(), persistent=False)
        self.register_buffer("imag_std", torch.where(order[None, :] == 0, 0.0, std).float(), persistent=False)

        effective = self.effective_correlation_length_m
        if effective > (1 + _RESOLUTION_TOLERANCE) * self.correlation_length_m:
            logger.warning(
                "seed field: correlation length %.0f km is not resolved by grid %s; the field's length is %.0f km",
                self.correlation_length_m / 1e3,
                grid.name,
                effective / 1e3,
            )

    @property
    def effective_correlation_length_m(self) -> float:
        """Daley length of the truncated spectrum, ``R sqrt(2 S0 / S1)`` (metres)."""
        degree = torch.arange(self.lmax, dtype=torch.float64)
        weight = (2 * degree + 1) * self.spectrum.double().cpu()
        ratio = 2 * weight.sum() / (weight * degree * (degree + 1)).sum()
        return float(EARTH_RADIUS_M * ratio.sqrt())

    def ar1_coefficient(self, dt_s: float) -> float:
        """:math:`\\phi = \\exp(-\\Delta t / \\tau)` for a step of ``dt_s`` seconds."""
        return math.exp(-dt_s / self.timescale_s)

    def sample(self, generator: torch.Generator, batch_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Independent fields, shape ``(*batch_shape, nlat, nlon)``, float32.

        Parameters
        ----------
        generator
            A CPU generator (seeded by the caller); the draw advances it.
        batch_shape
            Leading dimensions of independent fields.
        """
        white = torch.randn((*batch_shape, self.lmax, self.lmax, 2), generator=generator, dtype=torch.float32)
        white = white.to(self.real_std.device)
        coefficients = torch.complex(white[..., 0] * self.real_std, white[..., 1] * self.imag_std)
        return self.isht(coefficients).float()

    def evolve(self, field: torch.Tensor, dt_s: float, generator: torch.Generator) -> torch.Tensor:
        """One AR(1) step: ``phi * field + sqrt(1 - phi**2) * eta``, ``eta`` a new sample."""
        phi = self.ar1_coefficient(dt_s)
        innovation = self.sample(generator, tuple(field.shape[:-2]))
        return phi * field + math.sqrt(1.0 - phi * phi) * innovation
