"""ERA5 from the ARCO public Zarr store (anonymous gcsfs), optionally coarsened.

The store (google-research/arco-era5) has dims ``(time, level, latitude,
longitude)``, hourly time from 1900, 37 pressure levels, 721x1440 at 0.25 deg
with latitude 90 -> -90, ERA5 long names (``2m_temperature``,
``geopotential``...). Its time axis is padded before and after the data; the
store's ``valid_time_start`` / ``valid_time_stop`` attributes (dates,
inclusive) bound the real record. Available times are the configured time
axis within those bounds. Names and levels map to channels through
:mod:`pipeline.data.sources.canonical`, like every other source.

Coarsening by an integer factor ``k`` keeps every k-th latitude row (poles
included) and every k-th longitude: ``nlat -> (nlat - 1)/k + 1``,
``nlon -> nlon/k``. Each kept point gets the *area-weighted mean over its
coarse cell* (first-order conservative remapping): the coarse cell of kept
point (J, I) spans the latitudes between the midpoints to its neighbouring
kept rows (+-90 deg at the poles) and longitudes ``lon_I +- k dlon/2``; a
native cell contributes with weight equal to the area it shares with that
coarse cell, ``w = (sin(min(phi_up, Phi_up)) - sin(max(phi_lo, Phi_lo))) x
(longitude overlap)``, weights normalised per coarse cell. Area means over the
sphere are therefore preserved exactly, and a field that varies on the native
grid scale is averaged rather than aliased (plain subsampling would alias it).

Network reads are retried with exponential backoff (``source.retries``,
``source.backoff_seconds``); errors the user can fix are not.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.config import ArcoSourceConfig, MyriadConfig
from pipeline.data.sources.canonical import (
    available_channels,
    conform_to_grid,
    extract,
    standardise,
    time_axis,
    validate_block,
    validate_static,
)
from pipeline.data.sources.retry import call_with_retries, is_network_error
from pipeline.errors import MyriadError
from pipeline.grid import Grid

logger = logging.getLogger(__name__)


def open_zarr_store(url: str, storage_options: dict[str, Any]) -> xr.Dataset:
    """Open a Zarr store lazily (no dask); ``storage_options`` go to fsspec for URLs only."""
    kwargs = {"storage_options": storage_options} if "://" in url else {}
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Failed to open Zarr store with consolidated", category=RuntimeWarning
        )
        return xr.open_zarr(url, chunks=None, consolidated=None, **kwargs)


def valid_time_bounds(attrs: dict[str, Any]) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """``[start, stop)`` from ``valid_time_start`` / ``valid_time_stop``; a date-only stop includes its whole day."""
    start = attrs.get("valid_time_start")
    stop = attrs.get("valid_time_stop")
    start_ts = pd.Timestamp(start) if start else None
    stop_ts = None
    if stop:
        stop_ts = pd.Timestamp(stop)
        stop_ts += pd.Timedelta(days=1) if len(str(stop).strip()) <= 10 else pd.Timedelta(1, "ns")
    return start_ts, stop_ts


class ConservativeCoarsening:
    """Area-weighted coarsening by an integer factor that keeps the poles (see module docstring).

    Parameters
    ----------
    latitude
        Native latitudes, descending 90 -> -90 with poles.
    nlon
        Native number of longitudes (equally spaced from 0).
    factor
        ``k``: must divide ``nlat - 1`` and ``nlon``.
    """

    def __init__(self, latitude: np.ndarray, nlon: int, factor: int) -> None:
        nlat = len(latitude)
        if (nlat - 1) % factor or nlon % factor:
            raise MyriadError(
                f"source.coarsen={factor} must divide nlat-1={nlat - 1} and nlon={nlon} of the source grid "
                f"{nlat}x{nlon}"
            )
        self.factor = factor
        half = factor // 2  # the coarse cell spans offsets -k/2 .. k/2 (half cells at the ends for even k)
        self.offsets = np.arange(-half, half + 1)
        centres = np.arange(0, nlat, factor)
        self.rows = np.clip(centres[None, :] + self.offsets[:, None], 0, nlat - 1)
        lat_weights = _band_overlap(np.asarray(latitude, float), centres, self.offsets)
        self.lat_weights = lat_weights / lat_weights.sum(axis=0, keepdims=True)
        lon_overlap = np.clip(
            np.minimum(self.offsets + 0.5, factor / 2) - np.maximum(self.offsets - 0.5, -factor / 2), 0.0, 1.0
        )
        self.lon_weights = lon_overlap / lon_overlap.sum()
        self.columns = (np.arange(0, nlon, factor)[None, :] + self.offsets[:, None]) % nlon

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Coarsen the last two axes (latitude, longitude) of ``values``; float32 out."""
        rows = sum(w[:, None] * values[..., r, :] for w, r in zip(self.lat_weights, self.rows))
        out = sum(w * rows[..., c] for w, c in zip(self.lon_weights, self.columns))
        return np.asarray(out, dtype=np.float32)

    def apply(self, ds: xr.Dataset) -> xr.Dataset:
        """Coarsen every variable of a canonical Dataset; coordinates become every k-th value."""
        k = self.factor
        out = ds.isel(latitude=slice(None, None, k), longitude=slice(None, None, k))
        for name in ds.data_vars:
            out[name] = (ds[name].dims, self(ds[name].values), ds[name].attrs)
        return out


def _band_overlap(latitude: np.ndarray, centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shared area (sin-latitude measure) of native row ``centre + offset`` and coarse row ``centre``.

    Returns shape ``(len(offsets), len(centres))``; rows off the grid get 0.
    """

    def bounds(lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mids = 0.5 * (lat[1:] + lat[:-1])
        return np.concatenate([[90.0], mids]), np.concatenate([mids, [-90.0]])

    upper, lower = bounds(latitude)
    coarse_upper, coarse_lower = bounds(latitude[centres])
    rows = centres[None, :] + offsets[:, None]
    inside = (rows >= 0) & (rows < len(latitude))
    rows = np.clip(rows, 0, len(latitude) - 1)
    top = np.deg2rad(np.minimum(upper[rows], coarse_upper[None, :]))
    bottom = np.deg2rad(np.maximum(lower[rows], coarse_lower[None, :]))
    return np.where(inside, np.clip(np.sin(top) - np.sin(bottom), 0.0, None), 0.0)


class ArcoSource:
    """ERA5 from the ARCO Zarr (``source.kind: arco``).

    Parameters
    ----------
    config
        The run config; ``config.source`` must be an :class:`ArcoSourceConfig`.
    opener
        ``opener(url) -> xr.Dataset`` (lazy). Default: :func:`open_zarr_store`
        with ``source.storage_options`` (anonymous gcsfs). Tests pass a local store.

    Raises
    ------
    MyriadError
        The store cannot be opened, lacks a channel's variable or level, or its
        grid coarsened by ``source.coarsen`` is not the configured grid.
    """

    name = "arco"
    sequential = False
    network = True

    def __init__(self, config: MyriadConfig, opener: Callable[[str], xr.Dataset] | None = None) -> None:
        source = config.source
        if not isinstance(source, ArcoSourceConfig):
            raise MyriadError(f"source.kind is '{source.kind}', not 'arco'")
        self.source = source
        self.grid = config.grid.build()
        self.channels = tuple(config.channels)
        self.static = tuple(config.static)
        self.where = f"ARCO store {source.url}"
        self._opener = opener or partial(open_zarr_store, storage_options=source.storage_options)
        self._std: xr.Dataset | None = None
        std = self._store()
        refs = available_channels(std, self.where)
        missing = [name for name in (*self.channels, *self.static) if name not in refs]
        if missing:
            raise MyriadError(f"{self.where}: has no data for channel(s) {', '.join(missing)}")
        self._variables = sorted({refs[name].variable for name in (*self.channels, *self.static)})
        self._coarsening = self._check_grid(std)
        start, stop = valid_time_bounds(std.attrs)
        axis = time_axis(config.time.start, config.time.end, config.time.step_hours)
        inside = np.ones(len(axis), bool)
        if start is not None:
            inside &= axis >= start
        if stop is not None:
            inside &= axis < stop
        self._times = axis[inside & axis.isin(std.indexes["time"])]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_std"] = None  # reopened lazily in the receiving process
        return state

    def _store(self) -> xr.Dataset:
        if self._std is None:

            def open_store() -> xr.Dataset:
                try:
                    return self._opener(self.source.url)
                except (FileNotFoundError, PermissionError, KeyError, ValueError) as exc:
                    raise MyriadError(f"{self.where}: cannot be opened ({type(exc).__name__}: {exc})") from None

            ds = self._retry(open_store, "open")
            self._std = standardise(ds, self.where)
        return self._std

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return call_with_retries(
            fn,
            what=f"{self.where}: {what}",
            retries=self.source.retries,
            backoff_seconds=self.source.backoff_seconds,
            is_transient=is_network_error,
        )

    def _check_grid(self, std: xr.Dataset) -> ConservativeCoarsening | None:
        nlat, nlon = std.sizes["latitude"], std.sizes["longitude"]
        k = self.source.coarsen
        latitude = np.sort(std["latitude"].values.astype(float))[::-1]
        coarsening = ConservativeCoarsening(latitude, nlon, k) if k > 1 else None
        coarse = Grid((nlat - 1) // k + 1, nlon // k)
        if coarse != self.grid:
            raise MyriadError(
                f"{self.where}: grid {nlat}x{nlon} coarsened by source.coarsen={k} gives {coarse.name}, "
                f"but grid is {self.grid.name}; set grid.nlat={coarse.nlat}, grid.nlon={coarse.nlon} "
                "or choose source.coarsen to match"
            )
        return coarsening

    def _to_grid(self, ds: xr.Dataset) -> xr.Dataset:
        if self._coarsening is not None:
            ds = self._coarsening.apply(ds)
        return conform_to_grid(ds, self.grid, self.where)

    def available_times(self) -> pd.DatetimeIndex:
        return self._times

    def read_block(self, times: pd.DatetimeIndex) -> xr.Dataset:
        times = pd.DatetimeIndex(times).as_unit("ns")
        outside = times[~times.isin(self._times)]
        if len(outside):
            raise MyriadError(
                f"{self.where}: time {outside[0]} is not available "
                "(outside the store's valid times or the configured time axis)"
            )
        std = self._store()[self._variables]
        block = self._retry(lambda: extract(std, self.channels, self.where, times), f"read {times[0]} .. {times[-1]}")
        block = self._to_grid(block)
        validate_block(block, self.grid, self.channels, self.where, times)
        return block

    def static_fields(self) -> xr.Dataset:
        if not self.static:
            return xr.Dataset(coords=self.grid.coords())
        if len(self._times) == 0:
            raise MyriadError(f"{self.where}: no available time to read static fields at")
        std = self._store()[self._variables]
        first = self._times[:1]
        fields = self._retry(lambda: extract(std, self.static, self.where, first, static=True), "read static fields")
        fields = self._to_grid(fields)
        validate_static(fields, self.grid, self.static, self.where)
        return fields
