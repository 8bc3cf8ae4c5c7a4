"""Ingest into the analysis store: layout, values, idempotence, resume, extension, refusals.

Every test drives real NetCDF files through the real FilesSource into a real
Zarr store in tmp_path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from pipeline.config import INGEST_SECTIONS, load_config
from pipeline.data.ingest import ingest
from pipeline.data.inspect import render_summary, summarize
from pipeline.data.store import (
    COMPLETE_VAR,
    completed_blocks,
    is_complete,
    missing_time_ranges,
    open_analysis,
    store_matches_config,
)
from pipeline.errors import MyriadError
from tests.analysis_files import CHANNELS, GRID, files_config, land_sea_mask, make_fields, snapshot, write_file, write_files

START = "2000-01-01T00:00"
END = "2000-01-20T18:00"  # 80 times = 4 files x 20, 10 blocks of 8


@pytest.fixture
def data_dir(tmp_path: Path) -> tuple[Path, xr.Dataset]:
    directory = tmp_path / "data"
    return directory, write_files(directory, START, n_files=4, times_per_file=20)


@pytest.fixture
def ingested(tmp_path: Path, data_dir: tuple[Path, xr.Dataset]):
    """A complete store over START..END; yields (config, reference)."""
    directory, reference = data_dir
    config = files_config(tmp_path / "run", directory, START, END)
    result = ingest(config, progress=False)
    assert (result.blocks_written, result.blocks_skipped, result.n_blocks) == (10, 0, 10)
    return config, reference


def _chunk_files(store: Path, variable: str) -> dict[str, tuple[int, str]]:
    return {k: v for k, v in snapshot(store).items() if k.startswith(f"{variable}/c/")}


def test_round_trip_layout_attrs_and_values(ingested) -> None:
    config, reference = ingested
    ds = xr.open_zarr(config.analysis_path, consolidated=False)
    assert set(ds.data_vars) == {*CHANNELS, "lsm", COMPLETE_VAR}
    for name in CHANNELS:
        var = ds[name]
        assert var.dims == ("time", "latitude", "longitude") and var.dtype == np.float32
        assert var.encoding["chunks"] == (2, GRID.nlat, GRID.nlon)
        (codec,) = var.encoding["compressors"]
        assert isinstance(codec, BloscCodec) and codec.cname.value == "zstd" and codec.clevel == 3
        assert var.attrs["units"] and var.attrs["long_name"]
        np.testing.assert_array_equal(var.values, reference[name].values)
    assert ds["lsm"].dims == ("latitude", "longitude") and ds["lsm"].dtype == np.float32
    np.testing.assert_array_equal(ds["lsm"].values, land_sea_mask())
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds.time.encoding["units"].startswith("hours since 2000-01-01")
    np.testing.assert_array_equal(ds.time.values, pd.date_range(START, END, freq="6h").values)
    assert ds.latitude.values[0] == 90 and ds.latitude.values[-1] == -90
    assert ds.latitude.attrs["units"] == "degrees_north" and ds.longitude.attrs["units"] == "degrees_east"
    assert ds.attrs["source"] == "files" and ds.attrs["grid"] == "equiangular-9x16"
    assert ds.attrs["channels"] == CHANNELS and ds.attrs["time_step_hours"] == 6
    assert ds.attrs["config_hash"] == config.section_hash(*INGEST_SECTIONS)
    assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["software"].startswith("myriad ")
    assert (ds.attrs["block_size"], ds.attrs["n_blocks"]) == (8, 10) and "created" in ds.attrs
    assert ds[COMPLETE_VAR].dims == ("time_block",) and ds[COMPLETE_VAR].encoding["chunks"] == (1,)
    assert "flag_meanings" in ds[COMPLETE_VAR].attrs

    analysis = open_analysis(config.analysis_path)
    assert COMPLETE_VAR not in analysis and set(analysis.data_vars) == {*CHANNELS, "lsm"}
    assert is_complete(config.analysis_path) and store_matches_config(config)


def test_rerun_of_complete_store_writes_nothing(ingested) -> None:
    config, _ = ingested
    before = snapshot(config.analysis_path)
    result = ingest(config, progress=False)
    assert (result.blocks_written, result.blocks_skipped, result.bytes_written) == (0, 10, 0)
    assert snapshot(config.analysis_path) == before


def test_resume_rewrites_only_incomplete_blocks(ingested) -> None:
    config, reference = ingested
    group = zarr.open_group(str(config.analysis_path), mode="r+")
    for block in (1, 6):  # as a killed writer leaves them: flag 0, data partly garbage
        group[COMPLETE_VAR][block] = 0
        group["t2m"][block * 8: block * 8 + 2] = -1.0
    assert missing_time_ranges(config.analysis_path) == [
        (pd.Timestamp("2000-01-03T00:00"), pd.Timestamp("2000-01-04T18:00")),
        (pd.Timestamp("2000-01-13T00:00"), pd.Timestamp("2000-01-14T18:00")),
    ]
    with pytest.raises(MyriadError, match="incomplete, no data yet for 2000-01-03T00:00 .. 2000-01-04T18:00"):
        open_analysis(config.analysis_path)
    before = _chunk_files(config.analysis_path, "msl")

    result = ingest(config, progress=False)

    assert (result.blocks_written, result.blocks_skipped) == (2, 8)
    after = _chunk_files(config.analysis_path, "msl")
    changed = {k for k in before if before[k][0] != after[k][0]}
    assert changed == {f"msl/c/{i}/0/0" for i in (*range(4, 8), *range(24, 28))}  # chunks of blocks 1 and 6 only
    assert completed_blocks(config.analysis_path).all()
    np.testing.assert_array_equal(open_analysis(config.analysis_path)["t2m"].values, reference["t2m"].values)


def test_extension_of_time_end_appends(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    reference = write_files(directory, START, n_files=4, times_per_file=20)
    short_end = "2000-01-11T12:00"  # 43 times: the last block (40..42) is partial
    short = files_config(tmp_path / "run", directory, START, short_end)
    ingest(short, progress=False)
    assert xr.open_zarr(short.analysis_path).sizes["time"] == 43  # consolidated view of the complete store
    early = {k: v for k, v in _chunk_files(short.analysis_path, "t2m").items() if int(k.split("/")[2]) < 20}

    longer = files_config(tmp_path / "run", directory, START, END)
    result = ingest(longer, progress=False)

    assert (result.n_blocks, result.blocks_written, result.blocks_skipped) == (10, 5, 5)  # partial block 5 redone
    ds = open_analysis(longer.analysis_path)
    np.testing.assert_array_equal(ds.time.values, reference.time.values)
    for name in CHANNELS:
        np.testing.assert_array_equal(ds[name].values, reference[name].values)
    assert ds.attrs["config_hash"] == longer.section_hash(*INGEST_SECTIONS) and ds.attrs["n_blocks"] == 10
    after = _chunk_files(longer.analysis_path, "t2m")
    assert {k: after[k] for k in early} == early  # complete blocks 0..4 untouched
    assert store_matches_config(longer) and not store_matches_config(short)
    consolidated = xr.open_zarr(longer.analysis_path, consolidated=True)  # re-consolidated, not stale
    assert consolidated.sizes["time"] == 80 and consolidated.attrs["n_blocks"] == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channels": ["t2m", "msl"]}, r"channels: \['t2m', 'msl', 'u10m'\] -> \['t2m', 'msl'\]"),
        ({"time": {"start": "2000-01-02T00:00", "end": END}}, "time.start"),
        ({"ingest": {"block_size": 4, "chunk_time": 2}}, "ingest.block_size: 8 -> 4"),
        ({"time": {"start": START, "end": "2000-01-10T00:00"}}, "is never shortened"),
        ({"time": {"start": START, "end": "2000-01-20T12:00", "step_hours": 12}}, "time.step_hours: 6 -> 12"),
    ],
    ids=["channels", "start", "block_size", "shorter", "step"],
)
def test_config_mismatch_is_refused_and_store_unchanged(ingested, change: dict, message: str) -> None:
    config, _ = ingested
    before = snapshot(config.analysis_path)
    other = files_config(config.run_dir, Path(config.source.paths[0]).parent, START, END, **change)
    with pytest.raises(MyriadError, match=message):
        ingest(other, progress=False)
    assert snapshot(config.analysis_path) == before and is_complete(config.analysis_path)


def _bad_nan(directory: Path) -> None:
    fields = make_fields(pd.date_range("2000-01-21", periods=8, freq="6h"))
    fields["msl"][3, 2, 5] = np.nan
    write_file(directory / "part-04.nc", fields)


def _bad_missing_channel(directory: Path) -> None:
    write_file(directory / "part-04.nc", make_fields(pd.date_range("2000-01-21", periods=8, freq="6h")).drop_vars("msl"))


def _bad_grid(directory: Path) -> None:
    from pipeline.grid import Grid

    write_file(directory / "part-04.nc", make_fields(pd.date_range("2000-01-21", periods=8, freq="6h"), Grid(17, 32)))


def _bad_duplicate_time(directory: Path) -> None:
    write_file(directory / "part-04.nc", make_fields(pd.date_range("2000-01-20T18:00", periods=9, freq="6h")))


def _bad_truncated(directory: Path) -> None:
    write_file(directory / "part-04.nc", make_fields(pd.date_range("2000-01-21", periods=8, freq="6h")))
    path = directory / "part-04.nc"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_gap(directory: Path) -> None:
    write_file(directory / "part-04.nc", make_fields(pd.date_range("2000-01-22", periods=4, freq="6h")))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_bad_nan, r"channel 'msl' has 1 NaN/inf values at 1 time\(s\), first at 2000-01-21 18:00"),
        (_bad_missing_channel, r"source files: no data for 2000-01-21T00:00 .. 2000-01-22T18:00 \(8 of the 8"),
        (_bad_grid, "grid equiangular-17x32 does not match the configured grid equiangular-9x16"),
        (_bad_duplicate_time, r"time 2000-01-20 18:00:00 of channel 't2m' is in two files"),
        (_bad_truncated, r"part-04.nc: cannot be read as NetCDF"),
        (_bad_gap, r"source files: no data for 2000-01-21T00:00 .. 2000-01-21T18:00 \(4 of the 8"),
    ],
    ids=["nan", "missing-channel", "wrong-grid", "duplicate-time", "truncated", "gap"],
)
def test_bad_input_leaves_complete_store_complete(ingested, spoil, message: str) -> None:
    """Extending a complete store over a bad new file: one clear error, store byte-identical."""
    config, _ = ingested
    directory = Path(config.source.paths[0]).parent
    before = snapshot(config.analysis_path)
    spoil(directory)
    extended = files_config(config.run_dir, directory, START, "2000-01-22T18:00")
    with pytest.raises(MyriadError, match=message):
        ingest(extended, progress=False)
    assert snapshot(config.analysis_path) == before
    assert is_complete(config.analysis_path) and store_matches_config(config)


def test_bad_config_key_fails_before_touching_store(ingested, tmp_path: Path) -> None:
    config, _ = ingested
    before = snapshot(config.analysis_path)
    path = tmp_path / "run.yaml"
    path.write_text(
        f"run_dir: {config.run_dir}\nsource: {{kind: files, paths: ['{config.source.paths[0]}']}}\n"
        f"grid: {{nlat: 9, nlon: 16}}\nchannels: [t2m, msl, u10m]\nstatic: [lsm]\n"
        f"time: {{start: {START}, end: 2000-01-22T18:00}}\ningest: {{block_size: 8, chunk_tme: 2}}\n"
    )
    with pytest.raises(MyriadError, match="ingest.chunk_tme: unknown key"):
        ingest(load_config(path), progress=False)
    assert snapshot(config.analysis_path) == before and is_complete(config.analysis_path)


def test_nan_mid_run_leaves_that_block_incomplete_and_rerun_finishes(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    reference = write_files(directory, START, n_files=4, times_per_file=20)
    good = directory / "part-02.nc"
    shutil.copy(good, tmp_path / "good.nc")
    spoiled = reference.isel(time=slice(40, 60)).copy(deep=True)
    spoiled["u10m"][13, 0, 0] = np.inf  # time index 53 -> block 6
    write_file(good, spoiled)
    config = files_config(tmp_path / "run", directory, START, END)

    with pytest.raises(MyriadError, match=r"channel 'u10m' has 1 NaN/inf values .* first at 2000-01-14 06:00"):
        ingest(config, progress=False)
    done = completed_blocks(config.analysis_path)
    assert done[0] and not done[6] and not is_complete(config.analysis_path)

    shutil.copy(tmp_path / "good.nc", good)
    result = ingest(config, progress=False)
    assert result.blocks_written == 10 - int(done.sum())
    np.testing.assert_array_equal(open_analysis(config.analysis_path)["u10m"].values, reference["u10m"].values)


@pytest.mark.slow
def test_local_cluster_writes_the_same_store_as_threads(ingested, tmp_path: Path) -> None:
    config, _ = ingested
    distributed = files_config(
        tmp_path / "run-local", Path(config.source.paths[0]).parent, START, END,
        dask={"cluster": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"},
    )
    result = ingest(distributed, progress=False)
    assert result.blocks_written == 10
    a, b = open_analysis(config.analysis_path), open_analysis(distributed.analysis_path)
    a.attrs.pop("created"), b.attrs.pop("created")
    xr.testing.assert_identical(a, b)
    for name in CHANNELS:  # identical bytes on disk, chunk by chunk
        assert [v[1] for v in _chunk_files(config.analysis_path, name).values()] == [
            v[1] for v in _chunk_files(distributed.analysis_path, name).values()
        ]


def test_inspect_summary_of_incomplete_store(ingested) -> None:
    config, _ = ingested
    zarr.open_group(str(config.analysis_path), mode="r+")[COMPLETE_VAR][9] = 0
    summary = summarize(config.run_dir)
    assert summary["channels"] == {"t2m": "K", "msl": "Pa", "u10m": "m s-1"}
    assert (summary["nlat"], summary["nlon"], summary["n_times"], summary["time_step_hours"]) == (9, 16, 80, 6)
    assert (summary["time_start"], summary["time_end"]) == ("2000-01-01T00:00", END)
    assert (summary["blocks_complete"], summary["n_blocks"], summary["complete"]) == (9, 10, False)
    assert summary["missing"] == [["2000-01-19T00:00", END]]
    assert summary["statistics"] is None
    json.dumps(summary)  # plain data

    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(render_summary(config.analysis_path))
    text = console.export_text()
    assert "9/10 blocks (INCOMPLETE)" in text and "msl [Pa]" in text and "2000-01-19T00:00 .. 2000-01-20T18:00" in text


def test_open_analysis_rejects_a_foreign_or_missing_store(tmp_path: Path) -> None:
    with pytest.raises(MyriadError, match="does not exist"):
        open_analysis(tmp_path / "nothing.zarr")
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(MyriadError, match="not a Myriad analysis store"):
        open_analysis(tmp_path / "other.zarr")
