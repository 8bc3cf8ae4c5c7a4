"""NetCDF -> Zarr throughput: Myriad's ingest against a plain ``open_mfdataset().to_zarr()``.

Generates N CDS-like NetCDF files (6-hourly, equiangular grid with poles,
single-level channels) in a temporary directory, then times, in the same run
and onto the same filesystem:

* **myriad**: ``pipeline.data.ingest.ingest`` with the files source, full
  validation (grid, channels, float32, NaN/inf, times), Blosc-zstd, blocks
  written in parallel on the configured Dask cluster; once per store layout
  in ``--chunk-times`` (time steps per Zarr chunk: 1 is the config default,
  4 the "small block" of DESIGN.md section 3);
* **baseline**: ``xr.open_mfdataset(files).to_zarr(out)`` with default settings.

Throughput is the uncompressed float32 bytes of the channel data divided by
wall time (MB = 1e6 bytes). Each method runs ``--repeats`` times, rotating
which goes first, and the median is reported. Prints a table and writes JSON
(``ratio`` per Myriad layout, against the baseline of the same run).

    python benchmarks/ingest.py [--files 8] [--days-per-file 6] [--nlat 181] [--nlon 360] [--chunk-times 1,4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from rich.console import Console
from rich.table import Table

from pipeline.config import config_from_dict
from pipeline.data.channels import channel_attrs
from pipeline.data.ingest import ingest
from pipeline.grid import Grid

CHANNELS = {"t2m": "t2m", "msl": "msl", "u10m": "u10", "v10m": "v10", "tcwv": "tcwv", "sp": "sp"}
"""Channel -> variable name in the generated files (CDS short names)."""
_LEVELS = {"t2m": (280.0, 20.0), "msl": (101325.0, 1000.0), "u10m": (0.0, 8.0), "v10m": (0.0, 6.0),
           "tcwv": (25.0, 12.0), "sp": (98000.0, 3000.0)}


def generate_files(directory: Path, n_files: int, days_per_file: int, grid: Grid, seed: int = 0) -> list[Path]:
    """Write smooth-plus-noise fields, one file per ``days_per_file`` days, 6-hourly."""
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(grid.latitudes)[None, :, None].astype(np.float32)
    lon = np.deg2rad(grid.longitudes)[None, None, :].astype(np.float32)
    steps = days_per_file * 4
    paths = []
    for i in range(n_files):
        times = pd.date_range("2000-01-01", periods=steps, freq="6h") + pd.Timedelta(days=i * days_per_file)
        phase = (np.arange(i * steps, (i + 1) * steps, dtype=np.float32) / 8.0)[:, None, None]
        data = {}
        for k, (channel, name) in enumerate(CHANNELS.items()):
            mean, scale = _LEVELS[channel]
            field = np.cos(lat) * np.sin(2 * lon + phase + k) + 0.5 * np.sin(3 * lat + phase)
            noise = rng.standard_normal(field.shape, dtype=np.float32) * 0.05
            values = (mean + scale * (field + noise)).astype(np.float32)
            data[name] = (("time", "latitude", "longitude"), values, {"units": channel_attrs(channel)["units"]})
        ds = xr.Dataset(data, coords={"time": times, "latitude": grid.latitudes, "longitude": grid.longitudes})
        path = directory / f"era5-{i:03d}.nc"
        ds.to_netcdf(path, engine="netcdf4")
        paths.append(path)
    return paths


def run_myriad(files_dir: Path, run_dir: Path, n_times: int, grid: Grid, chunk_time: int, args: argparse.Namespace) -> float:
    """Wall seconds of one full Myriad ingest into ``run_dir`` with ``ingest.chunk_time = chunk_time``."""
    end = pd.Timestamp("2000-01-01") + pd.Timedelta(hours=6 * (n_times - 1))
    config = config_from_dict({
        "run_dir": str(run_dir),
        "source": {"kind": "files", "paths": [str(files_dir / "*.nc")]},
        "grid": {"nlat": grid.nlat, "nlon": grid.nlon},
        "channels": list(CHANNELS),
        "time": {"start": "2000-01-01T00:00", "end": end.isoformat(), "step_hours": 6},
        "ingest": {"block_size": args.block_size, "chunk_time": chunk_time,
                   **({} if args.compression_level is None else {"compression_level": args.compression_level})},
        "dask": {"cluster": args.cluster, "n_workers": args.workers, "threads_per_worker": 1, "memory_limit": "4GiB"},
    }, "benchmark")
    start = time.perf_counter()
    result = ingest(config, progress=False)
    seconds = time.perf_counter() - start
    assert result.blocks_written == result.n_blocks
    return seconds


def run_baseline(files: list[Path], out: Path) -> float:
    """Wall seconds of ``xr.open_mfdataset(files).to_zarr(out)`` with default settings."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr v3 consolidated-metadata warning
        with xr.open_mfdataset(files) as ds:
            ds.to_zarr(out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--days-per-file", type=int, default=6)
    parser.add_argument("--nlat", type=int, default=181)
    parser.add_argument("--nlon", type=int, default=360)
    parser.add_argument("--block-size", type=int, default=16, help="Myriad ingest.block_size (time steps)")
    parser.add_argument("--chunk-times", default="1,4",
                        help="comma-separated ingest.chunk_time values to measure (each must divide --block-size)")
    parser.add_argument("--compression-level", type=int, default=None, help="ingest.compression_level (default: the config default)")
    parser.add_argument("--cluster", choices=["threads", "local"], default="threads")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="work directory (default: a system temp dir)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "ingest.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    grid = Grid(args.nlat, args.nlon)
    n_times = args.files * args.days_per_file * 4
    data_mb = n_times * len(CHANNELS) * grid.nlat * grid.nlon * 4 / 1e6
    work = Path(tempfile.mkdtemp(prefix="myriad-bench-", dir=args.tmp))
    console = Console()
    try:
        files_dir = work / "files"
        files_dir.mkdir()
        console.print(f"generating {args.files} files, {n_times} times x {len(CHANNELS)} channels on {grid.name} "
                      f"({data_mb:.0f} MB of float32) in {work}")
        files = generate_files(files_dir, args.files, args.days_per_file, grid)
        chunk_times = [int(c) for c in args.chunk_times.split(",")]
        methods = {"baseline": lambda out: run_baseline(files, out)}
        for chunk_time in chunk_times:
            methods[f"myriad_chunk_time_{chunk_time}"] = (
                lambda out, chunk_time=chunk_time: run_myriad(files_dir, out, n_times, grid, chunk_time, args))
        timings: dict[str, list[float]] = {name: [] for name in methods}
        for repeat in range(args.repeats):  # rotate the order so no method always runs first
            names = list(methods)
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                out = work / f"{name}-{repeat}"
                timings[name].append(methods[name](out))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    seconds = {name: statistics.median(values) for name, values in timings.items()}
    throughput = {name: data_mb / s for name, s in seconds.items()}
    ratio = {name: throughput[name] / throughput["baseline"] for name in throughput if name != "baseline"}
    table = Table(title=f"NetCDF -> Zarr ingest, {data_mb:.0f} MB, {os.cpu_count()} CPU cores, median of {args.repeats}")
    for column in ("method", "seconds", "MB/s", "vs baseline"):
        table.add_column(column, justify="right" if column != "method" else "left")
    table.add_row("xr.open_mfdataset().to_zarr() (defaults)", f"{seconds['baseline']:.2f}", f"{throughput['baseline']:.1f}", "1.00x")
    for name in ratio:
        label = (f"myriad ingest, chunk_time={name.rsplit('_', 1)[1]} (validated, blosc-zstd, "
                 f"dask {args.cluster} x{args.workers})")
        table.add_row(label, f"{seconds[name]:.2f}", f"{throughput[name]:.1f}", f"{ratio[name]:.2f}x")
    console.print(table)

    result = {
        "benchmark": "ingest",
        "data_mb": data_mb,
        "files": args.files,
        "times": n_times,
        "channels": list(CHANNELS),
        "grid": grid.name,
        "block_size": args.block_size,
        "chunk_times": chunk_times,
        "compression_level": args.compression_level,
        "cluster": args.cluster,
        "workers": args.workers,
        "repeats": args.repeats,
        "seconds": seconds,
        "seconds_all": timings,
        "throughput_mb_s": throughput,
        "ratio": ratio,
        "target_ratio": 1.0,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
