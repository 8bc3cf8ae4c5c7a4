"""The one place for latitude/longitude grids, quadrature and area weights.

Canonical grid (DESIGN.md section 3): latitude in degrees north, *descending*
from 90 to -90 with both poles included ("equiangular", as ERA5 and
torch-harmonics' ``grid="equiangular"``); longitude in degrees east, ascending
from 0, spacing 360/nlon, 360 excluded.

Area weights follow WeatherBench2: each latitude row is a cell bounded at the
midpoints between rows and at +-90 deg at the ends, its weight is
``w_j = sin(phi_upper) - sin(phi_lower)``, normalised to mean 1 over the rows,
so that an area-weighted mean is ``mean_j,k (w_j f_jk)``. The same weights,
divided by ``nlon`` and normalised to sum 1, are the quadrature weights for
integrals over the sphere: ``<f> = sum_jk q_j f_jk`` with ``sum_jk q_j = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from pipeline.errors import MyriadError

EARTH_RADIUS_M = 6_371_220.0
"""Mean Earth radius used by the planet and spectra (torch-harmonics' value)."""


@dataclass(frozen=True)
class Grid:
    """An equiangular latitude/longitude grid with poles, latitude descending.

    Parameters
    ----------
    nlat
        Number of latitude rows, poles included (spacing ``180/(nlat-1)``).
    nlon
        Number of longitudes (spacing ``360/nlon``, starting at 0).
    """

    nlat: int
    nlon: int

    def __post_init__(self) -> None:
        if self.nlat < 3 or self.nlon < 4:
            raise MyriadError(f"grid: nlat={self.nlat}, nlon={self.nlon} is too small (need nlat>=3, nlon>=4)")

    @property
    def name(self) -> str:
        """Short text form, e.g. ``equiangular-32x64``."""
        return f"equiangular-{self.nlat}x{self.nlon}"

    @property
    def resolution_deg(self) -> float:
        """Longitude spacing in degrees."""
        return 360.0 / self.nlon

    @property
    def latitudes(self) -> np.ndarray:
        """Latitudes in degrees north, 90 -> -90 inclusive (float64)."""
        return np.linspace(90.0, -90.0, self.nlat)

    @property
    def longitudes(self) -> np.ndarray:
        """Longitudes in degrees east, 0 -> 360 exclusive (float64)."""
        return np.arange(self.nlon) * (360.0 / self.nlon)

    def area_weights(self) -> np.ndarray:
        """Per-row cell-area weights ``sin(phi_upper) - sin(phi_lower)``, mean 1."""
        return latitude_weights(self.latitudes)

    def quadrature_weights(self) -> np.ndarray:
        """Weights of shape (nlat, nlon) summing to 1: ``<f> = sum q * f``."""
        w = self.area_weights()
        return np.broadcast_to((w / w.sum() / self.nlon)[:, None], (self.nlat, self.nlon)).copy()

    def coords(self) -> dict[str, xr.DataArray]:
        """CF-annotated ``latitude`` / ``longitude`` coordinates."""
        return {
            "latitude": xr.DataArray(
                self.latitudes,
                dims="latitude",
                attrs={"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
            ),
            "longitude": xr.DataArray(
                self.longitudes,
                dims="longitude",
                attrs={"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
            ),
        }

    @classmethod
    def from_coords(cls, latitude: np.ndarray, longitude: np.ndarray, where: str = "data") -> "Grid":
        """Recognise a canonical grid from coordinate values, or raise naming ``where``."""
        lat = np.asarray(latitude, dtype=float)
        lon = np.asarray(longitude, dtype=float)
        grid = cls(len(lat), len(lon))
        if not np.allclose(lat, grid.latitudes, atol=1e-6) or not np.allclose(lon, grid.longitudes, atol=1e-6):
            raise MyriadError(
                f"{where}: latitude/longitude are not the canonical equiangular grid "
                f"(expected latitude 90 -> -90 in {len(lat)} rows with poles and longitude 0 -> "
                f"{360 - 360 / len(lon):g} in {len(lon)} columns; got latitude {lat[0]:g} -> {lat[-1]:g}, "
                f"longitude {lon[0]:g} -> {lon[-1]:g})"
            )
        return grid

    @classmethod
    def of(cls, ds: xr.Dataset | xr.DataArray, where: str = "data") -> "Grid":
        """The canonical grid of an xarray object, or raise naming ``where``."""
        if "latitude" not in ds.coords or "longitude" not in ds.coords:
            raise MyriadError(f"{where}: has no latitude/longitude coordinates")
        return cls.from_coords(ds["latitude"].values, ds["longitude"].values, where)

    def require(self, ds: xr.Dataset | xr.DataArray, where: str = "data") -> None:
        """Raise a clear :class:`MyriadError` unless ``ds`` lies on this grid."""
        other = Grid.of(ds, where)
        if other != self:
            raise MyriadError(f"{where}: grid {other.name} does not match the configured grid {self.name}")


def latitude_weights(latitude: np.ndarray) -> np.ndarray:
    """Cell-area weights for latitude rows (any order), normalised to mean 1.

    Cell bounds lie at midpoints between rows and at +-90 deg at the ends;
    ``w_j = |sin(phi_upper) - sin(phi_lower)|``.
    """
    lat = np.asarray(latitude, dtype=float)
    order = np.argsort(lat)
    s = lat[order]
    mids = np.concatenate([[-90.0], 0.5 * (s[1:] + s[:-1]), [90.0]])
    w_sorted = np.diff(np.sin(np.deg2rad(mids)))
    w = np.empty_like(w_sorted)
    w[order] = w_sorted
    return w / w.mean()


def latitude_weights_da(latitude: xr.DataArray) -> xr.DataArray:
    """:func:`latitude_weights` as a DataArray on the ``latitude`` dimension."""
    return xr.DataArray(latitude_weights(latitude.values), dims=latitude.dims, coords=latitude.coords)
