"""Lazy inputs of the diagnostics stage: the ensemble store and the truth from the analysis.

Everything here reads metadata only (coordinates, attributes, the ensemble
store's completion record through zarr); the data stay lazy Dask arrays.

Chunking (DESIGN.md section 4.4). The ensemble store is chunked
``(1, member_block, 1, nlat, nlon)``: good for spectra (one member's full
grid), bad for member statistics (CRPS, ranks, quantiles need every member at
a point). The store is therefore opened twice:

* ``members``: Dask chunks ``(1, member_block, 1, band, nlon)`` merged to
  ``(1, M, 1, band, nlon)``. Each task reads one stored chunk, keeps only
  its latitude band, and the member merge is a concatenation (no split):
  a worker holds at most one stored chunk plus one all-member band, never a
  whole ``(init, lead)`` slab of all members. The price is read
  amplification: every stored chunk is read and decompressed ``nlat / band``
  times. ``band`` is ``diagnostics.latitude_band`` or sized so that an
  all-member chunk is about ``diagnostics.target_chunk_mb``; at paper scale
  (7,424 members x 1440 longitudes) 128 MB gives 3 rows per band, i.e. 240
  reads of each stored chunk, so a transposed copy of the store (chunked
  ``(1, M, 1, band, nlon)``) pays off when the diagnostics are run more than
  once; at the quickstart's sizes the band is the whole grid (one read).
* ``fields``: the stored chunks themselves (``spectra_member_block`` members
  of full grids), for spectra.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)

MEMBER_COORDS = ("checkpoint", "perturbation", "pair", "sample", "seed")
"""Per-member coordinates of the ensemble store (dropped from member statistics)."""


def latitude_band(n_members: int, nlat: int, nlon: int, target_mb: float, itemsize: int = 4) -> int:
    """Rows per all-member chunk so that ``n_members * band * nlon * itemsize`` is about ``target_mb``."""
    row_bytes = n_members * nlon * itemsize
    return int(min(nlat, max(1, (target_mb * 2**20) // row_bytes)))


def member_chunks(band: int) -> dict[str, int]:
    """Dask chunks for member statistics: all members, a latitude band, one init and lead time."""
    return {"init_time": 1, "member": -1, "lead_time": 1, "latitude": band, "longitude": -1}


def incomplete_units(path: Path, init_indices: list[int] | None = None) -> list[tuple[str, int]]:
    """``(init time, member block)`` of the work units not marked complete (reads the record only)."""
    from pipeline.ensemble.store import COMPLETE_VAR

    group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    flags = np.asarray(group[COMPLETE_VAR][...])
    inits = np.asarray(group["init_time"][...])
    rows = range(flags.shape[0]) if init_indices is None else init_indices
    missing = []
    for i in rows:
        for b in np.flatnonzero(flags[i] != 1):
            missing.append((str(inits[i]), int(b)))
    return missing


def open_ensemble(path: str | Path, chunks: Any = None, require_complete: bool = True) -> xr.Dataset:
    """Open an ensemble store lazily (channels + coordinates, without the completion record).

    Parameters
    ----------
    path
        ``<run_dir>/ensembles/<name>.zarr``.
    chunks
        Dask chunks for :func:`xarray.open_zarr` (default: the stored chunks).
    require_complete
        Raise unless every work unit is marked complete.

    Raises
    ------
    MyriadError
        Missing or foreign store, or incomplete units (with ``require_complete``).
    """
    from pipeline.ensemble.store import COMPLETE_VAR, TITLE

    path = Path(path)
    if not path.is_dir():
        raise MyriadError(f"ensemble store {path}: not found (run `myriad ensemble CONFIG` first)")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        title = group.attrs.get("title")
    except Exception as exc:  # zarr raises several types for unreadable stores
        raise MyriadError(f"ensemble store {path}: not a readable Zarr v3 store ({exc})") from None
    if title != TITLE or COMPLETE_VAR not in group:
        raise MyriadError(f"ensemble store {path}: not a Myriad ensemble store")
    if require_complete:
        missing = incomplete_units(path)
        if missing:
            shown = ", ".join(f"{t} block {b}" for t, b in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise MyriadError(
                f"ensemble store {path}: {len(missing)} work unit(s) incomplete ({shown}{more}); "
                "rerun `myriad ensemble CONFIG` to finish it"
            )
    with warnings.catch_warnings():
        # Band chunks deliberately split the stored chunks (see the module docstring).
        warnings.filterwarnings("ignore", message=".*separate the stored chunks.*")
        warnings.filterwarnings("ignore", message=".*may degrade performance.*")
        ds = xr.open_zarr(path, consolidated=False, zarr_format=3, chunks={} if chunks is None else chunks)
    return ds.drop_vars(COMPLETE_VAR)


def channels_of(ds: xr.Dataset) -> list[str]:
    """The channel variables of an ensemble store, in store order."""
    names = ds.attrs.get("channels")
    if isinstance(names, list) and names:
        return [str(n) for n in names if n in ds.data_vars]
    return [str(n) for n in ds.data_vars if ds[n].dims[:2] == ("init_time", "member")]


def select_times(ds: xr.Dataset, init_times: list[Any] | None, lead_hours: list[int] | None, where: str) -> xr.Dataset:
    """Restrict ``ds`` to configured init times and lead hours, naming what is missing."""
    if init_times is not None:
        wanted = pd.DatetimeIndex(init_times).as_unit("ns")
        have = pd.DatetimeIndex(ds["init_time"].values)
        missing = wanted.difference(have)
        if len(missing):
            raise MyriadError(
                f"{where}: init times {[t.isoformat() for t in missing[:5]]} are not in the ensemble store "
                f"(it has {[t.isoformat() for t in have[:5]]}{'...' if len(have) > 5 else ''})"
            )
        ds = ds.sel(init_time=wanted.values)
    if lead_hours is not None:
        have_h = (ds["lead_time"].values // np.timedelta64(1, "h")).astype(int).tolist()
        missing_h = sorted(set(lead_hours) - set(have_h))
        if missing_h:
            raise MyriadError(f"{where}: lead hours {missing_h} are not in the ensemble store (it has {have_h})")
        ds = ds.sel(lead_time=np.array(lead_hours, dtype="timedelta64[h]").astype("timedelta64[ns]"))
    return ds


def valid_times(ds: xr.Dataset) -> xr.DataArray:
    """``valid_time(init_time, lead_time)`` = init_time + lead_time, from the index coordinates (numpy)."""
    init = ds["init_time"].values.astype("datetime64[ns]")
    lead = ds["lead_time"].values.astype("timedelta64[ns]")
    return xr.DataArray(init[:, None] + lead[None, :], dims=("init_time", "lead_time"),
                        coords={"init_time": init, "lead_time": lead}, name="valid_time",
                        attrs={"standard_name": "time", "long_name": "valid time"})


def truth_at(analysis: xr.Dataset, channels: list[str], valid_time: xr.DataArray, where: str) -> xr.Dataset:
    """The analysis at each valid time: dims ``(init_time, lead_time, latitude, longitude)`` (lazy).

    Raises
    ------
    MyriadError
        A valid time is outside the analysis record, or a channel is not in it.
    """
    absent = [c for c in channels if c not in analysis.data_vars]
    if absent:
        raise MyriadError(f"{where}: channels {absent} are not in the analysis store (it has {list(analysis.data_vars)})")
    have = pd.DatetimeIndex(analysis["time"].values)
    needed = pd.DatetimeIndex(np.unique(valid_time.values.ravel()))
    missing = needed.difference(have)
    if len(missing):
        raise MyriadError(
            f"{where}: no analysis at valid times {[t.isoformat() for t in missing[:5]]}"
            f"{'...' if len(missing) > 5 else ''} (record {have[0].isoformat()} .. {have[-1].isoformat()}); "
            "restrict diagnostics.init_times / diagnostics.lead_hours or extend the analysis"
        )
    truth = analysis[channels].sel(time=valid_time.drop_vars(list(valid_time.coords)))
    return truth.drop_vars("time", errors="ignore").assign_coords(
        init_time=valid_time["init_time"], lead_time=valid_time["lead_time"])


@dataclass(frozen=True)
class ClimateSelection:
    """The analysis climate used for extreme thresholds."""

    analysis: xr.Dataset
    period: tuple[str, str]


def climate_period(analysis: xr.Dataset, start: Any, end: Any, valid_time: xr.DataArray, where: str) -> ClimateSelection:
    """The analysis over the statistics period; checks every valid time's month and hour occur in it."""
    clim = analysis.sel(time=slice(start, end)) if (start is not None or end is not None) else analysis
    times = pd.DatetimeIndex(clim["time"].values)
    if len(times) == 0:
        raise MyriadError(f"{where}: the statistics period {start} .. {end} holds no analysis times")
    have = set(zip(times.month, times.hour))
    vt = pd.DatetimeIndex(valid_time.values.ravel())
    lacking = sorted({(m, h) for m, h in zip(vt.month, vt.hour)} - have)
    if lacking:
        raise MyriadError(
            f"{where}: the climate period {times[0].isoformat()} .. {times[-1].isoformat()} has no analysis at "
            f"(month, hour) {lacking[:5]} needed for the thresholds of some valid times; widen "
            "statistics.start/end or set diagnostics.extremes: false"
        )
    return ClimateSelection(clim, (times[0].isoformat(), times[-1].isoformat()))
