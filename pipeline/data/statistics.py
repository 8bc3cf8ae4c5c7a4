"""Per-channel statistics of the analysis store: ``<run_dir>/stats.nc``.

For each channel ``x`` over the period's times ``t = 1..T`` and grid points
``(j, k)`` with cell-area latitude weights ``w_j`` (mean 1,
:func:`pipeline.grid.latitude_weights`)::

    mean = (1 / (T J K)) sum_tjk w_j x_tjk
    std  = sqrt((1 / (T J K)) sum_tjk w_j (x_tjk - mean)^2)
         = sqrt(E_w[x^2] - mean^2)
    min, max over all t, j, k (unweighted)

and the same mean/std for the one-step tendency ``dx_t = x_{t+1} - x_t``
(the store's time step, ``T - 1`` values per point). Sums run in float64 in a
single lazy Dask pass over the store's chunks (one ``compute``), so the
store is read once whatever its size.

File layout (netCDF4): dimension ``channel`` (string coordinate, plus a
``channel_units`` coordinate), float64 variables ``mean``, ``std``, ``min``,
``max``, ``tendency_mean``, ``tendency_std``; global attributes give the
period, the time step, ``n_times``, the weighting, the analysis store and
its ``config_hash``. Written atomically (temporary file + rename).
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.config import INGEST_SECTIONS, MyriadConfig
from pipeline.dask_cluster import dask_client
from pipeline.data.channels import channel_attrs
from pipeline.data.store import format_time, open_analysis
from pipeline.errors import MyriadError
from pipeline.grid import latitude_weights_da

logger = logging.getLogger(__name__)

STAT_VARIABLES = ("mean", "std", "min", "max", "tendency_mean", "tendency_std")
WEIGHTING = "cos-latitude cell-area (pipeline.grid.latitude_weights)"
_SPACE_TIME = ("time", "latitude", "longitude")

_VARIABLE_ATTRS = {
    "mean": ("area-weighted mean over time and the sphere", "channel units (see channel_units)"),
    "std": ("area-weighted standard deviation over time and the sphere", "channel units (see channel_units)"),
    "min": ("minimum over time and grid points", "channel units (see channel_units)"),
    "max": ("maximum over time and grid points", "channel units (see channel_units)"),
    "tendency_mean": ("area-weighted mean of the one-step tendency x(t+dt) - x(t)", "channel units per time step"),
    "tendency_std": ("area-weighted standard deviation of the one-step tendency x(t+dt) - x(t)", "channel units per time step"),
}


def resolve_period(analysis: xr.Dataset, start: datetime | None, end: datetime | None, where: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The statistics period: ``[start, end]`` defaulting to the store's span; outside it raises."""
    first, last = pd.Timestamp(analysis.time.values[0]), pd.Timestamp(analysis.time.values[-1])
    lo = first if start is None else pd.Timestamp(start)
    hi = last if end is None else pd.Timestamp(end)
    if lo < first or hi > last or lo >= hi:
        raise MyriadError(
            f"statistics period {format_time(lo)} .. {format_time(hi)} is not a span inside the analysis store "
            f"{where} ({format_time(first)} .. {format_time(last)}); fix statistics.start/statistics.end"
        )
    return lo, hi


def _weighted_mean_std(x: xr.Dataset, weights: xr.DataArray) -> tuple[xr.Dataset, xr.Dataset]:
    """Lazy area-weighted mean and std over (time, latitude, longitude), single pass in float64."""
    mean = (x * weights).mean(_SPACE_TIME)
    second = (x * x * weights).mean(_SPACE_TIME)
    return mean, np.sqrt((second - mean * mean).clip(min=0.0))


def statistics_dataset(analysis: xr.Dataset, channels: list[str], start: pd.Timestamp, end: pd.Timestamp) -> xr.Dataset:
    """Lazy statistics of ``channels`` over ``[start, end]`` (see module docstring).

    Returns a Dataset with dimension ``channel``; call ``.compute()`` once.
    """
    x = analysis[channels].sel(time=slice(start, end)).astype("float64")
    if x.sizes["time"] < 2:
        raise MyriadError(f"statistics period {format_time(start)} .. {format_time(end)} holds fewer than 2 times")
    weights = latitude_weights_da(analysis["latitude"])
    tendency = x.diff("time")
    mean, std = _weighted_mean_std(x, weights)
    tendency_mean, tendency_std = _weighted_mean_std(tendency, weights)
    parts = {
        "mean": mean,
        "std": std,
        "min": x.min(_SPACE_TIME),
        "max": x.max(_SPACE_TIME),
        "tendency_mean": tendency_mean,
        "tendency_std": tendency_std,
    }
    stats = xr.Dataset({name: part.to_dataarray("channel") for name, part in parts.items()})
    units = [str(channel_attrs(c)["units"]) for c in channels]
    stats = stats.assign_coords(channel=np.array(channels, dtype=object), channel_units=("channel", np.array(units, dtype=object)))
    for name, (long_name, unit_text) in _VARIABLE_ATTRS.items():
        stats[name].attrs = {"long_name": long_name, "units": unit_text}
    stats["channel"].attrs = {"long_name": "channel name"}
    stats["channel_units"].attrs = {"long_name": "units of each channel"}
    return stats


def compute_statistics(config: MyriadConfig) -> Path:
    """Compute ``<run_dir>/stats.nc`` from the complete analysis store; returns its path.

    Raises
    ------
    MyriadError
        Incomplete or missing store, or a period outside the store.
    """
    store = config.analysis_path
    analysis = open_analysis(store, require_complete=True, chunks="auto")
    start, end = resolve_period(analysis, config.statistics.start, config.statistics.end, str(store))
    lazy = statistics_dataset(analysis, list(config.channels), start, end)
    with dask_client(config.dask):
        stats = lazy.compute()
    n_times = int(analysis.time.sel(time=slice(start, end)).size)
    stats.attrs = {
        "title": "Myriad analysis statistics",
        "Conventions": "CF-1.8",
        "period_start": format_time(start),
        "period_end": format_time(end),
        "time_step_hours": int(analysis.attrs["time_step_hours"]),
        "n_times": n_times,
        "weighting": WEIGHTING,
        "analysis_store": str(store.resolve()),
        "analysis_config_hash": str(analysis.attrs["config_hash"]),
        "statistics_config_hash": config.section_hash(*INGEST_SECTIONS, "statistics"),
    }
    path = config.stats_path
    _write_atomically(stats, path)
    logger.info("wrote %s: %d channels over %s .. %s (%d times)", path, len(config.channels), format_time(start), format_time(end), n_times)
    return path


def _write_atomically(stats: xr.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        stats.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_statistics(path: str | Path) -> xr.Dataset:
    """Read a stats.nc into memory.

    Raises
    ------
    MyriadError
        Missing file, or a file that is unreadable or lacks the statistics variables.
    """
    path = Path(path)
    if not path.exists():
        raise MyriadError(f"stats file {path}: does not exist (run `myriad stats CONFIG`)")
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            stats = ds.load()
    except Exception as exc:  # netCDF4/HDF5 raise OSError, ValueError, RuntimeError... for garbage
        raise MyriadError(f"stats file {path}: unreadable or not a Myriad statistics file ({type(exc).__name__}: {exc})") from None
    missing = [name for name in STAT_VARIABLES if name not in stats.data_vars]
    if missing or "channel" not in stats.coords:
        what = f"missing variables {missing}" if missing else "no 'channel' coordinate"
        raise MyriadError(f"stats file {path}: unreadable or not a Myriad statistics file ({what})")
    return stats


def statistics_match_config(config: MyriadConfig) -> bool:
    """True when stats.nc exists, loads, and was computed for this config's analysis and period."""
    try:
        stats = load_statistics(config.stats_path)
    except MyriadError:
        return False
    return stats.attrs.get("statistics_config_hash") == config.section_hash(*INGEST_SECTIONS, "statistics")
