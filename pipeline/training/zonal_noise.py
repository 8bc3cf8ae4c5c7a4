r"""Random zonal-mean profiles added to a training window's initial state.

A free-running emulator piles up small systematic errors in the zonal means
(on the planet: the mean meridional wind, whose zonal mean the planet holds
near an equilibrium set by its eddies, so that a forecast drifting away from
it is not pulled back). Training inputs that carry a random zonal-mean
error, with the target unchanged, show the network states off that
equilibrium and what follows them, as ``training.input_noise`` does for
grid-point noise (which hardly reaches the zonal means).

With :math:`\mu = \sin\varphi`, the profile added to channel :math:`c` is

.. math::

    \delta_c(\varphi) = \frac{a_c}{\sigma_c} \frac{1}{\sqrt{L - 1}} \sum_{l=1}^{L-1} \xi_l\, b_l(\varphi),
    \qquad \xi_l \sim N(0, 1),

the same at every longitude, for amplitude :math:`a_c` (physical units,
``training.zonal_mean_noise``), normalisation std :math:`\sigma_c` and the
degrees :math:`l < L = \lfloor (n_{lat} + 1) / 2 \rfloor` the grid resolves.
The basis is that of the zonal (:math:`m = 0`) harmonics: for a scalar
:math:`b_l \propto P_l(\mu)`; for a wind component :math:`b_l \propto
\cos\varphi\, P_l'(\mu)`, the zonal wind of the :math:`m = 0` vector harmonic
(the gradient of :math:`P_l`), which vanishes at the poles as the zonal mean
of a smooth tangent field must. Each :math:`b_l` is normalised to an
area-weighted RMS of 1; the :math:`b_l` of one kind are orthogonal under the
area weight (to 1% on a 33-row grid), so :math:`a_c` is the expected
area-weighted RMS of the profile. Degree 0 is left out: a global-mean offset (the planet's mass, for
z500) persists in the true system and must not be taught to vanish.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.polynomial import legendre

from pipeline.data.channels import parse_channel
from pipeline.errors import MyriadError
from pipeline.grid import Grid

WIND_COMPONENTS = ("eastward_wind", "northward_wind")
"""Standard names whose zonal-mean profiles take the tangent-vector form."""


def zonal_profiles(grid: Grid, wind: bool) -> np.ndarray:
    r"""The basis :math:`b_l(\varphi_j)`, :math:`l = 1 .. L-1`, shape ``(L - 1, nlat)``, area-weighted RMS 1 each."""
    mu = np.sin(np.deg2rad(grid.latitudes))
    degrees = range(1, (grid.nlat + 1) // 2)
    rows = []
    for degree in degrees:
        coefficients = np.zeros(degree + 1)
        coefficients[degree] = 1.0
        if wind:
            profile = np.cos(np.deg2rad(grid.latitudes)) * legendre.legval(mu, legendre.legder(coefficients))
        else:
            profile = legendre.legval(mu, coefficients)
        rows.append(profile)
    basis = np.array(rows)
    weights = grid.area_weights()
    return basis / np.sqrt((basis**2 * weights).sum(axis=1, keepdims=True) / weights.sum())


class ZonalMeanNoise:
    """Draws the profiles of the module docstring for a batch, in normalised units.

    Parameters
    ----------
    grid
        The fields' grid.
    channels
        Channel names in the model's order.
    std
        Normalisation std per channel (physical units per normalised unit).
    amplitudes
        ``training.zonal_mean_noise``: RMS of the profile in physical units, per channel (others: none).

    Raises
    ------
    MyriadError
        An amplitude for a channel that is not configured.
    """

    def __init__(self, grid: Grid, channels: list[str], std: np.ndarray, amplitudes: dict[str, float]) -> None:
        unknown = [name for name in amplitudes if name not in channels]
        if unknown:
            raise MyriadError(f"training.zonal_mean_noise: {unknown} are not among the configured channels {channels}")
        self.channels = [k for k, name in enumerate(channels) if amplitudes.get(name, 0.0) > 0]
        scalar, wind = zonal_profiles(grid, wind=False), zonal_profiles(grid, wind=True)
        bases = [wind if parse_channel(channels[k]).info.standard_name in WIND_COMPONENTS else scalar
                 for k in self.channels]
        scales = [amplitudes[channels[k]] / float(std[k]) / np.sqrt(len(scalar)) for k in self.channels]
        self.basis = torch.as_tensor(np.stack([s * b for s, b in zip(scales, bases)]) if bases else np.zeros((0, 1, 1)),
                                     dtype=torch.float32)
        """Scaled basis, shape ``(C_noised, L - 1, nlat)``."""

    @property
    def active(self) -> bool:
        return bool(self.channels)

    def draw(self, states: torch.Tensor) -> torch.Tensor:
        """One random profile per sample and channel for ``states`` (B, C, nlat, nlon), normalised:
        shape (B, C, nlat, 1), zero for the channels without noise; add it to the states."""
        basis = self.basis.to(states.device)
        xi = torch.randn(states.shape[0], *basis.shape[:2], device=states.device)
        noise = torch.zeros(states.shape[0], states.shape[1], states.shape[2], 1, device=states.device, dtype=states.dtype)
        noise[:, self.channels] = torch.einsum("bcl,clj->bcj", xi, basis)[..., None].to(states.dtype)
        return noise
