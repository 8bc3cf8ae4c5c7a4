"""Small ERA5-like files for source tests: known float32 truth in several layouts.

``truth(channel, times, grid)`` gives deterministic float32 fields in the
canonical orientation (latitude 90 -> -90, longitude 0 -> 360); the writers
put them into files laid out as the new CDS NetCDF, the classic CDS NetCDF
and GRIB2 (IEEE packing, so values survive exactly), reordering the grid as
those layouts do.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import eccodes
import numpy as np
import pandas as pd
import xarray as xr

from pipeline.data.channels import parse_channel
from pipeline.grid import Grid

_BASE = {"z": 5.0e4, "t": 250.0, "u": 0.0, "v": 0.0, "q": 0.005, "t2m": 280.0, "msl": 1.0e5, "u10m": 0.0, "v10m": 0.0}
_BASE |= {"tp": 0.002, "orog": 3000.0, "lsm": 0.5}
_SCALE = {"z": 500.0, "t": 10.0, "u": 10.0, "v": 10.0, "q": 0.001, "t2m": 10.0, "msl": 1000.0, "u10m": 5.0, "v10m": 5.0}
_SCALE |= {"tp": 0.0005, "orog": 1000.0, "lsm": 0.1}
UNITS = {"z": "m**2 s**-2", "t": "K", "t2m": "K", "msl": "Pa", "q": "kg kg**-1", "tp": "m", "orog": "m**2 s**-2"}
UNITS |= {"lsm": "(0 - 1)", "u": "m s**-1", "v": "m s**-1", "u10m": "m s**-1", "v10m": "m s**-1"}

NEW_CDS_NAMES = {"t2m": "t2m", "msl": "msl", "u10m": "u10", "v10m": "v10", "tp": "tp", "orog": "z", "lsm": "lsm"}
"""Our single-level codes -> new CDS NetCDF short names (pressure-level codes are unchanged)."""
GRIB_SHORT_NAMES = {"t2m": "2t", "msl": "msl", "u10m": "10u", "v10m": "10v"}


def truth(channel: str, times: pd.DatetimeIndex, grid: Grid, member: int = 0) -> np.ndarray:
    """Deterministic float32 field (time, lat, lon) for a channel, in canonical orientation."""
    code = parse_channel(channel).code
    noise = np.stack(
        [
            np.random.default_rng(zlib.crc32(f"{channel}/{member}/{t.isoformat()}".encode())).standard_normal(
                (grid.nlat, grid.nlon)
            )
            for t in pd.DatetimeIndex(times)
        ]
    )
    return (_BASE[code] + _SCALE[code] * noise).astype(np.float32)


def _split(channels: Sequence[str]) -> tuple[dict[str, list[int]], list[str]]:
    levels: dict[str, list[int]] = {}
    single = []
    for name in channels:
        ch = parse_channel(name)
        if ch.level is None:
            single.append(name)
        else:
            levels.setdefault(ch.code, []).append(ch.level)
    return levels, single


def _pressure_cube(code: str, levels: list[int], times: pd.DatetimeIndex, grid: Grid, member: int) -> np.ndarray:
    return np.stack([truth(f"{code}{lev}", times, grid, member) for lev in levels], axis=1)


def new_cds_dataset(
    channels: Sequence[str], times: pd.DatetimeIndex, grid: Grid, members: Sequence[int] | None = None
) -> xr.Dataset:
    """New CDS layout: valid_time as int64 seconds, pressure_level, number, expver, short names."""
    levels, single = _split(channels)
    all_levels = sorted({lev for levs in levels.values() for lev in levs})
    seconds = ((times - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    coords: dict[str, object] = {
        "valid_time": ("valid_time", seconds, {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"}),
        "latitude": ("latitude", grid.latitudes, {"units": "degrees_north"}),
        "longitude": ("longitude", grid.longitudes, {"units": "degrees_east"}),
        "expver": ("valid_time", np.array(["0001"] * len(times))),
    }
    if all_levels:
        coords["pressure_level"] = ("pressure_level", np.array(all_levels, float), {"units": "hPa"})
    member_list = [0] if members is None else list(members)

    def stack(make):  # add a number dim when several members are asked for
        cubes = [make(m) for m in member_list]
        return (cubes[0], False) if members is None else (np.stack(cubes), True)

    data_vars = {}
    for code in levels:
        cube, has_number = stack(lambda m: _pressure_cube(code, all_levels, times, grid, m))
        dims = ("valid_time", "pressure_level", "latitude", "longitude")
        data_vars[code] = ((("number",) + dims) if has_number else dims, cube, {"units": UNITS[code]})
    for name in single:
        cube, has_number = stack(lambda m: truth(name, times, grid, m))
        dims = ("valid_time", "latitude", "longitude")
        data_vars[NEW_CDS_NAMES[name]] = ((("number",) + dims) if has_number else dims, cube, {"units": UNITS[name]})
    coords["number"] = ("number", np.array(member_list)) if members is not None else ((), 0)
    return xr.Dataset(data_vars, coords=coords)


def classic_dataset(channels: Sequence[str], times: pd.DatetimeIndex, grid: Grid) -> xr.Dataset:
    """Classic CDS layout, reordered: time, level, latitude ascending, longitude -180..180.

    It also carries an ``expver`` dimension mixing ERA5 (1, first half of the
    times) and ERA5T (5, the rest), NaN where an expver has no data.
    """
    levels, single = _split(channels)
    all_levels = sorted({lev for levs in levels.values() for lev in levs})
    half = len(times) // 2

    def with_expver(cube: np.ndarray) -> np.ndarray:
        era5, era5t = cube.copy(), cube.copy()
        era5[half:] = np.nan
        era5t[:half] = np.nan
        return np.stack([era5, era5t], axis=1)

    lon = grid.longitudes
    order = np.argsort(np.where(lon >= 180, lon - 360, lon))
    data_vars = {}
    for code in levels:
        cube = _pressure_cube(code, all_levels, times, grid, 0)[..., ::-1, :][..., order]
        data_vars[code] = (("time", "expver", "level", "latitude", "longitude"), with_expver(cube), {"units": UNITS[code]})
    for name in single:
        cube = truth(name, times, grid)[..., ::-1, :][..., order]
        data_vars[NEW_CDS_NAMES[name]] = (("time", "expver", "latitude", "longitude"), with_expver(cube), {"units": UNITS[name]})
    coords = {
        "time": times,
        "expver": np.array([1, 5], np.int32),
        "latitude": grid.latitudes[::-1],
        "longitude": np.where(lon >= 180, lon - 360, lon)[order],
    }
    if all_levels:
        coords["level"] = ("level", np.array(all_levels, np.int32), {"units": "millibars"})
    return xr.Dataset(data_vars, coords=coords)


def write_grib(path: Path, channels: Sequence[str], times: pd.DatetimeIndex, grid: Grid) -> None:
    """GRIB2 messages (IEEE 32-bit packing) for each channel and time, latitude 90 -> -90."""
    with open(path, "wb") as out:
        for name in channels:
            ch = parse_channel(name)
            fields = truth(name, times, grid)
            for t, field in zip(times, fields):
                sample = "regular_ll_pl_grib2" if ch.level is not None else "regular_ll_sfc_grib2"
                handle = eccodes.codes_grib_new_from_samples(sample)
                try:
                    for key, value in {
                        "Ni": grid.nlon,
                        "Nj": grid.nlat,
                        "latitudeOfFirstGridPointInDegrees": 90.0,
                        "latitudeOfLastGridPointInDegrees": -90.0,
                        "longitudeOfFirstGridPointInDegrees": 0.0,
                        "longitudeOfLastGridPointInDegrees": float(grid.longitudes[-1]),
                        "iDirectionIncrementInDegrees": grid.resolution_deg,
                        "jDirectionIncrementInDegrees": 180.0 / (grid.nlat - 1),
                        "jScansPositively": 0,
                        "dataDate": int(t.strftime("%Y%m%d")),
                        "dataTime": int(t.strftime("%H%M")),
                    }.items():
                        eccodes.codes_set(handle, key, value)
                    if ch.level is not None:
                        eccodes.codes_set(handle, "shortName", ch.code)
                        eccodes.codes_set(handle, "level", ch.level)
                    else:
                        eccodes.codes_set(handle, "shortName", GRIB_SHORT_NAMES[name])
                    eccodes.codes_set(handle, "packingType", "grid_ieee")
                    eccodes.codes_set_values(handle, field.ravel().astype(np.float64))
                    eccodes.codes_write(handle, out)
                finally:
                    eccodes.codes_release(handle)
