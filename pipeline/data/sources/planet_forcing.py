"""Forcing, dissipation and the rain diagnostic of the shallow-water planet.

Everything here is precomputed once, in the real spectral layout of
:class:`~pipeline.data.sources.planet_dynamics.SpectralShallowWater`
(``(mmax, 6, lmax)``, columns Re/Im of geopotential, vorticity, divergence),
so that a solver step applies it with a few elementwise operations. The
equations are set out in :mod:`pipeline.data.sources.planet`.
"""

from __future__ import annotations

import math
from datetime import datetime

import torch

from pipeline.config import PlanetSourceConfig
from pipeline.data.sources.planet_dynamics import GRAVITY, SpectralShallowWater
from pipeline.errors import MyriadError

DAY_SECONDS = 86_400.0

JUNE_SOLSTICE = datetime(2000, 6, 21)
"""Phase reference of the seasonal cycle: northern-hemisphere summer peaks here (and every year after)."""

STIRRING_RMS = 3.0e-11
"""Grid RMS (s-2) of the stochastic vorticity forcing at ``stirring_amplitude = 1``."""

RAIN_WATER_SCALE = 1000.0
"""W_0 (kg m-2) of the rain diagnostic, calibrated so that the default climate rains a few mm
per day on global average (the layer's divergence is much weaker than the low-level
convergence it stands for, so W_0 exceeds a real column's water content)."""

HUMIDITY_SCALE_DEPTH_M = 1000.0
"""h_q (m): moisture grows by a factor e per h_q of extra layer depth (Clausius-Clapeyron-like)."""


def _degree_and_order(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Degree l and order m broadcast to a real spectral layout ``(mmax, 6, lmax)``."""
    nm, columns, nl = shape
    order = torch.arange(nm).reshape(nm, 1, 1).expand(shape)
    degree = torch.arange(nl).reshape(1, 1, nl).expand(shape)
    return degree, order


class PlanetForcing:
    """Relaxation, drag, hyperdiffusion, stochastic stirring and rain of the planet.

    Parameters
    ----------
    config
        The planet's physical knobs.
    dynamics
        The solver whose spectral layout, grid and hyperdiffusion are used.
    interval
        Forcing interval in seconds (the output step): the stirring is an
        AR(1) process sampled once per interval and held constant within it.

    Notes
    -----
    Per solver step of length ``dt`` the state is, after the explicit
    Adams-Bashforth dynamics and the stirring, multiplied by :attr:`damping`
    and shifted by :meth:`step_source`; together they are the exact solutions
    over ``dt`` of ``dPhi/dt = -(Phi - Phi_eq)/tau_r`` (degrees l >= 1 only),
    ``d(zeta, delta)/dt = -(zeta, delta)/tau_d`` and the parent's implicit
    hyperdiffusion of vorticity and divergence.
    """

    def __init__(self, config: PlanetSourceConfig, dynamics: SpectralShallowWater, interval: float) -> None:
        shape = dynamics.spectral_shape
        dtype = dynamics.fast_dtype
        degree, order = _degree_and_order(shape)
        dt = self.dt = float(dynamics.dt)
        column = torch.arange(shape[1]).reshape(1, -1, 1).expand(shape)
        is_phi = column < 2
        is_real = column % 2 == 0
        resolved = degree >= order

        relax = math.exp(-dt / (config.relaxation_days * DAY_SECONDS))
        drag = math.exp(-dt / (config.drag_days * DAY_SECONDS))
        hyperdiffusion = dynamics.hyperdiff[:, 0].reshape(1, 1, -1).expand(shape)
        damping = torch.where(is_phi, torch.where(degree >= 1, relax, 1.0), hyperdiffusion * drag)
        self.damping = damping.to(dtype).contiguous()

        # equilibrium geopotential g * dh_eq = g dH [(1/3 - sin^2 lat) + A s(t) sin lat], l >= 1
        sin_lat = torch.sin(dynamics.lats).reshape(-1, 1).expand(dynamics.nlat, dynamics.nlon)
        contrast = GRAVITY * config.equator_pole_contrast_m
        shapes = (contrast * (1.0 / 3.0 - sin_lat**2), contrast * config.seasonal_amplitude * sin_lat)
        sources = []
        for pattern in shapes:
            spectrum = torch.zeros(3, dynamics.lmax, dynamics.mmax, dtype=torch.complex128)
            spectrum[0] = dynamics.grid2spec(pattern.contiguous())
            real = dynamics.to_real(spectrum).to(torch.float64)
            real = torch.where(is_phi & (degree >= 1) & resolved, real, 0.0) * (1.0 - relax)
            sources.append(real.to(dtype).contiguous())
        self._source_mean, self._source_seasonal = sources
        self.year_seconds = config.year_days * DAY_SECONDS

        # AR(1) vorticity stirring in degrees [lmin, lmax], isotropic, grid RMS = amplitude * STIRRING_RMS
        lmin, lmax = config.stirring_lmin, config.stirring_lmax
        if lmax < lmin:
            raise MyriadError(f"source.stirring_lmax ({lmax}) must be >= source.stirring_lmin ({lmin})")
        if lmax >= dynamics.lmax:
            raise MyriadError(
                f"source.stirring_lmax ({lmax}) exceeds the spectral truncation of the "
                f"{dynamics.nlat}x{dynamics.nlon} grid (degrees 0..{dynamics.lmax - 1}); lower it or refine the grid"
            )
        in_band = (degree >= lmin) & (degree <= lmax) & resolved & (column >= 2) & (column < 4)
        in_band &= is_real | (order > 0)
        n_band = sum(2 * l + 1 for l in range(lmin, lmax + 1))
        per_mode = config.stirring_amplitude * STIRRING_RMS * math.sqrt(4.0 * math.pi / n_band)
        per_part = torch.where(order == 0, per_mode, per_mode / math.sqrt(2.0))
        memory = math.exp(-interval / (config.stirring_memory_days * DAY_SECONDS))
        self.stirring_memory = memory
        self.stirring_index = torch.nonzero(in_band.reshape(-1)).reshape(-1)
        """Flat indices of the stirred entries of the real layout."""
        innovation = per_part.reshape(-1)[self.stirring_index] * math.sqrt(1.0 - memory**2)
        self.stirring_innovation = innovation.to(dtype)
        self._damping_at_stirring = self.damping.reshape(-1)[self.stirring_index]

        # rain: W_0 exp((Phi - g H) / (g h_q)) max(0, -delta)
        self._inverse_phi_scale = 1.0 / (GRAVITY * HUMIDITY_SCALE_DEPTH_M)
        self._rain_scale = RAIN_WATER_SCALE * math.exp(-config.mean_depth_m / HUMIDITY_SCALE_DEPTH_M)

    def seasonal_factor(self, seconds_since_solstice: float) -> float:
        """``s(t) = cos(2 pi (t - t_solstice) / year)``: +1 at northern summer, -1 at northern winter."""
        return math.cos(2.0 * math.pi * seconds_since_solstice / self.year_seconds)

    def new_stirring(self) -> torch.Tensor:
        """A zero stirring state: one value per stirred entry (see :attr:`stirring_index`)."""
        return torch.zeros_like(self.stirring_innovation)

    def advance_stirring(self, stirring: torch.Tensor, generator: torch.Generator) -> None:
        """AR(1) update in place over one forcing interval: ``S <- r S + sqrt(1 - r^2) sigma xi``."""
        noise = torch.randn(stirring.shape, generator=generator, dtype=stirring.dtype)
        stirring.mul_(self.stirring_memory).addcmul_(noise, self.stirring_innovation)

    def step_source(self, stirring: torch.Tensor, seconds_since_solstice: float) -> torch.Tensor:
        """What one step adds after damping: ``(1 - exp(-dt/tau_r)) Phi_eq(t) + dt * damping * S``.

        ``dt * S`` is the stirring integrated over a step (constant within the
        forcing interval), applied before the damping factors like the
        dynamics; ``Phi_eq`` is taken at ``t`` (the middle of the interval).
        """
        source = torch.add(self._source_mean, self._source_seasonal, alpha=self.seasonal_factor(seconds_since_solstice))
        stirred = source.view(-1)
        stirred.index_add_(0, self.stirring_index, stirring * self._damping_at_stirring, alpha=self.dt)
        return source

    def accumulate_rain(self, total: torch.Tensor, phi: torch.Tensor, divergence: torch.Tensor, dt: float) -> None:
        """Add ``dt * W_0 exp((Phi - g H)/(g h_q)) max(0, -delta)`` (kg m-2) to ``total``."""
        moisture = torch.exp(phi * self._inverse_phi_scale)
        total.addcmul_(moisture, torch.clamp(divergence, max=0.0), value=-self._rain_scale * dt)
