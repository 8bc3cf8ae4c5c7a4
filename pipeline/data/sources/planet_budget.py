"""The planet's steady zonal-mean mass budget: the meridional flux its relaxation implies.

The planet's geopotential obeys (module :mod:`pipeline.data.sources.planet`)
``dPhi/dt = -div(Phi u) - (Phi - Phi_eq)/tau_r`` on its degrees l >= 1, and
nothing else touches Phi. Averaged over longitude and over a long record
(whole years, so the time tendency is negligible), with ``[.]`` the zonal
mean and ``D = [Phi] - [Phi_eq]`` less its global mean::

    (1 / (a cos phi)) d(cos phi [Phi v]) / d phi = -D / tau_r

and, since the transport ``T = cos phi [Phi v]`` vanishes at the south pole,

    T(phi) = -(a / tau_r) * integral from -pi/2 to phi of D cos phi' dphi'.

So the time-mean zonal-mean layer depth fixes the time-mean northward
geopotential (mass) flux ``[Phi v] = [Phi][v] + [Phi' v']``, mean
circulation plus eddies. Any record of the planet satisfies this to its
sampling error; an emulator's free run need not, because nothing ties its
``v500`` to its ``z500`` tendency. The zonal-mean meridional wind is purely
divergent (the rotational wind's zonal mean of ``v`` is zero), so this is the
budget that constrains it.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import PlanetSourceConfig
from pipeline.data.sources.planet_dynamics import GRAVITY
from pipeline.data.sources.planet_forcing import DAY_SECONDS, JUNE_SOLSTICE
from pipeline.grid import EARTH_RADIUS_M


def seasonal_factor(times: np.ndarray, year_days: float) -> np.ndarray:
    """The planet's seasonal factor ``s(t) = cos(2 pi (t - t_solstice) / Y)`` at each of ``times`` (datetime64)."""
    seconds = (np.asarray(times, dtype="datetime64[ns]") - np.datetime64(JUNE_SOLSTICE, "ns")) / np.timedelta64(1, "s")
    return np.cos(2.0 * np.pi * seconds / (year_days * DAY_SECONDS))


def mean_seasonal_factor(times: np.ndarray, year_days: float) -> float:
    """Mean over ``times`` (datetime64) of the planet's seasonal factor (:func:`seasonal_factor`)."""
    return float(np.mean(seasonal_factor(times, year_days)))


def equilibrium_zonal_geopotential(latitudes: np.ndarray, source: PlanetSourceConfig,
                                   seasonal_factor: float | np.ndarray = 0.0) -> np.ndarray:
    """Degrees l >= 1 of the planet's equilibrium geopotential (m2 s-2) on ``latitudes`` (degrees), averaged over a
    record whose mean seasonal factor is ``seasonal_factor``: ``g dH [(1/3 - sin^2 phi) + A s sin phi]``.

    An array of factors of shape ``(..., 1)`` gives one profile per factor, shape ``(..., nlat)``."""
    sin_lat = np.sin(np.deg2rad(np.asarray(latitudes, dtype=np.float64)))
    contrast = GRAVITY * source.equator_pole_contrast_m
    return contrast * ((1.0 / 3.0 - sin_lat**2) + source.seasonal_amplitude * np.asarray(seasonal_factor) * sin_lat)


def balanced_geopotential_flux(zonal_geopotential: np.ndarray, equilibrium: np.ndarray, latitudes: np.ndarray,
                               relaxation_days: float) -> np.ndarray:
    """The time-mean northward geopotential flux ``[Phi v]`` (m3 s-3) on ``latitudes`` (degrees, any order, poles
    included or not) that balances the relaxation of the time-mean zonal-mean geopotential ``zonal_geopotential``
    towards ``equilibrium`` (module docstring). Both profiles may carry leading axes, ``(..., nlat)``; each
    profile is balanced on its own.

    Finite volumes on the latitude rows: cell edges half-way between rows and at the poles, cell areas
    ``dsin``; ``D`` has its area-weighted mean removed, so the transport is zero at both poles. The transport at
    each edge is the cumulative sum from the south pole of ``-(a / tau_r) D dsin``; divided by the edge's
    ``cos phi`` it is the flux there (zero at the poles), which is interpolated linearly in latitude to the rows.
    """
    lat = np.asarray(latitudes, dtype=np.float64)
    order = np.argsort(lat)
    phi = np.deg2rad(lat[order])
    edges = np.concatenate([[-0.5 * np.pi], 0.5 * (phi[1:] + phi[:-1]), [0.5 * np.pi]])
    area = np.diff(np.sin(edges))
    departure = (np.asarray(zonal_geopotential, dtype=np.float64) - np.asarray(equilibrium, dtype=np.float64))[..., order]
    departure = departure - (departure @ area)[..., None] / np.sum(area)
    tau = relaxation_days * DAY_SECONDS
    transport = np.cumsum(-(EARTH_RADIUS_M / tau) * departure * area, axis=-1)[..., :-1]  # at the inner edges
    zero = np.zeros((*transport.shape[:-1], 1))
    flux_edges = np.concatenate([zero, transport / np.cos(edges[1:-1]), zero], axis=-1)
    # row k lies between edges k and k + 1
    towards_north = (phi - edges[:-1]) / np.diff(edges)
    flux_sorted = (1.0 - towards_north) * flux_edges[..., :-1] + towards_north * flux_edges[..., 1:]
    flux = np.empty_like(flux_sorted)
    flux[..., order] = flux_sorted
    return flux
