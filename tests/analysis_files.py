"""Test helpers: small reanalysis-like NetCDF files, run configs for them, store snapshots."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.config import MyriadConfig, config_from_dict
from pipeline.data.channels import channel_attrs
from pipeline.grid import Grid

CHANNELS = ["t2m", "msl", "u10m"]
FILE_NAMES = {"t2m": "t2m", "msl": "msl", "u10m": "u10"}
"""Channel -> variable name in the files (CDS short names)."""
_SCALE = {"t2m": (280.0, 15.0), "msl": (101325.0, 900.0), "u10m": (0.0, 6.0)}
GRID = Grid(9, 16)


def make_fields(times: pd.DatetimeIndex, grid: Grid = GRID, seed: int = 0) -> xr.Dataset:
    """Canonical float32 fields with a smooth signal plus seeded noise, at ``times``."""
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(grid.latitudes)[None, :, None]
    lon = np.deg2rad(grid.longitudes)[None, None, :]
    hours = ((times - pd.Timestamp("2000-01-01")) / pd.Timedelta(hours=1)).values[:, None, None]
    fields = {}
    for k, name in enumerate(CHANNELS):
        offset, scale = _SCALE[name]
        signal = np.cos(lat) * np.sin(lon + hours / 24.0 + k) + 0.3 * np.sin(2 * lat)
        noise = rng.standard_normal((len(times), grid.nlat, grid.nlon))
        fields[name] = (("time", "latitude", "longitude"), (offset + scale * (signal + 0.2 * noise)).astype("float32"))
    return xr.Dataset(fields, coords={"time": times.values.astype("datetime64[ns]"), **grid.coords()})


def write_file(path: Path, fields: xr.Dataset, lsm: np.ndarray | None = None) -> None:
    """Write canonical ``fields`` as a CDS-like NetCDF file (short names, units attrs)."""
    out = xr.Dataset(coords={"time": fields.time, "latitude": fields.latitude, "longitude": fields.longitude})
    for name in fields.data_vars:
        out[FILE_NAMES.get(str(name), str(name))] = fields[name].assign_attrs(units=channel_attrs(str(name))["units"])
    if lsm is not None:
        out["lsm"] = (("latitude", "longitude"), lsm.astype("float32"), {"units": "1"})
    out.to_netcdf(path, engine="netcdf4")


def land_sea_mask(grid: Grid = GRID) -> np.ndarray:
    """A fixed 0/1 mask."""
    return (np.add.outer(np.arange(grid.nlat), np.arange(grid.nlon)) % 3 == 0).astype("float32")


def write_files(directory: Path, start: str, n_files: int, times_per_file: int, grid: Grid = GRID,
                seed: int = 0, first_index: int = 0) -> xr.Dataset:
    """Write ``n_files`` consecutive 6-hourly files ``part-XX.nc``; return the canonical reference.

    The first file (index 0) also holds the static land-sea mask ``lsm``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    times = pd.date_range(start, periods=n_files * times_per_file, freq="6h")
    reference = make_fields(times, grid, seed)
    for i in range(n_files):
        part = reference.isel(time=slice(i * times_per_file, (i + 1) * times_per_file))
        index = first_index + i
        write_file(directory / f"part-{index:02d}.nc", part, land_sea_mask(grid) if index == 0 else None)
    return reference


def files_config(run_dir: Path, data_dir: Path, start: str, end: str, **sections: Any) -> MyriadConfig:
    """A run config reading ``data_dir/*.nc`` on :data:`GRID` (sections override the defaults)."""
    data: dict[str, Any] = {
        "run_dir": str(run_dir),
        "source": {"kind": "files", "paths": [str(data_dir / "*.nc")]},
        "grid": {"nlat": GRID.nlat, "nlon": GRID.nlon},
        "channels": list(CHANNELS),
        "static": ["lsm"],
        "time": {"start": start, "end": end, "step_hours": 6},
        "ingest": {"block_size": 8, "chunk_time": 2, "compression_level": 3},
        "dask": {"cluster": "threads", "n_workers": 2},
    }
    data.update(sections)
    return config_from_dict(data)


def snapshot(path: Path) -> dict[str, tuple[int, str]]:
    """``{relative file: (mtime_ns, sha1 of content)}`` for every file under ``path``."""
    return {
        str(p.relative_to(path)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(path.rglob("*")) if p.is_file()
    }
