"""Verification regions, area weights and area means (the one place for them).

Weights are the project's cell-area latitude weights
(:func:`pipeline.grid.latitude_weights`, WeatherBench2 / REFERENCE.md "Metric
definitions"): a row is a cell bounded at the midpoints between rows and at
+-90 deg, ``w_j = sin(phi_upper) - sin(phi_lower)``, normalised to mean 1 over
all rows. On an equiangular grid that is exactly proportional to ``cos(phi_j)``
for every interior row; the pole rows get the small area of their polar cap
instead of ``cos(90) = 0``.

A region is a latitude band ``lo <= phi <= hi`` (both ends included, so a row
at exactly 20 deg belongs to both neighbouring bands); weights are zero outside
it. An area mean is ``sum_jk w_j f_jk / sum_jk w_j`` over the region's points;
points where ``field`` is NaN are left out of both sums (xarray's weighted
mean).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.errors import MyriadError
from pipeline.grid import latitude_weights

REGIONS: dict[str, tuple[float, float]] = {
    "global": (-90.0, 90.0),
    "nh_extratropics": (20.0, 90.0),
    "tropics": (-20.0, 20.0),
    "sh_extratropics": (-90.0, -20.0),
}
"""Latitude bands ``(south, north)`` in degrees, both ends included."""

SPATIAL_DIMS: tuple[str, str] = ("latitude", "longitude")


def region_bounds(region: str) -> tuple[float, float]:
    """``(south, north)`` of a named region, or raise naming the known ones."""
    try:
        return REGIONS[region]
    except KeyError:
        raise MyriadError(f"diagnostics: unknown region {region!r} (known: {', '.join(REGIONS)})") from None


def region_mask(latitude: xr.DataArray, region: str | None = "global") -> xr.DataArray:
    """Boolean DataArray on ``latitude``: True inside the region (all True for None)."""
    lat = np.asarray(latitude.values, dtype=float)
    if region is None:
        inside = np.ones(lat.shape, dtype=bool)
    else:
        lo, hi = region_bounds(region)
        inside = (lat >= lo - 1e-9) & (lat <= hi + 1e-9)
    return xr.DataArray(inside, dims=latitude.dims, coords=latitude.coords)


def area_weights(latitude: xr.DataArray, region: str = "global") -> xr.DataArray:
    """Cell-area latitude weights (mean 1 over all rows), zero outside ``region``.

    Parameters
    ----------
    latitude
        The ``latitude`` coordinate (degrees north, any order).
    region
        A key of :data:`REGIONS`.

    Returns
    -------
    xr.DataArray
        float64 weights on the ``latitude`` dimension (in memory: they are tiny).
    """
    w = latitude_weights(np.asarray(latitude.values, dtype=float))
    mask = region_mask(latitude, region).values
    return xr.DataArray(np.where(mask, w, 0.0), dims=latitude.dims, coords=latitude.coords, name="area_weight")


def area_mean(field: xr.DataArray, region: str = "global") -> xr.DataArray:
    """Area-weighted mean over ``latitude`` and ``longitude`` (lazy under Dask).

    ``mean = sum_jk w_j f_jk / sum_jk w_j`` over the points of ``region`` where
    ``field`` is not NaN; every other dimension is kept.
    """
    for dim in SPATIAL_DIMS:
        if dim not in field.dims:
            raise MyriadError(f"diagnostics: area_mean needs dims {SPATIAL_DIMS}, got {field.dims}")
    if field.dtype == bool:
        field = field.astype("float32")
    weights = area_weights(field["latitude"], region)
    return field.weighted(weights).mean(list(SPATIAL_DIMS))
