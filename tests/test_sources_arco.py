"""ARCO-ERA5 source against a local Zarr store laid out like the public one.

The store is small (21x40, 3 levels) but keeps ARCO's shape: dims (time,
level, latitude, longitude), latitude 90 -> -90, ERA5 long names, an hourly
time axis that starts before the data and runs past it with NaN there, and
the ``valid_time_start`` / ``valid_time_stop`` attributes bounding the record.
Only the opener (the GCS edge) is replaced where a test needs network faults.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline.config import MyriadConfig, config_from_dict
from pipeline.data.sources.arco import ArcoSource, ConservativeCoarsening, open_zarr_store
from pipeline.data.sources.base import Source
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from tests.era5_samples import truth

NATIVE = Grid(21, 40)
LEVELS = [300, 500, 850]
HOURS = pd.date_range("1999-12-31T12:00", "2000-01-03T23:00", freq="h").as_unit("ns")
VALID = (HOURS >= pd.Timestamp("2000-01-01")) & (HOURS < pd.Timestamp("2000-01-03"))
CHANNELS = ["z500", "t850", "t2m"]
EXPECTED_TIMES = pd.date_range("2000-01-01T00:00", "2000-01-02T18:00", freq="6h").as_unit("ns")


def nan_outside_record(cube: np.ndarray) -> np.ndarray:
    cube = cube.copy()
    cube[~VALID] = np.nan
    return cube


@pytest.fixture(scope="module")
def arco_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("arco") / "era5.zarr"
    z = np.stack([truth(f"z{lev}", HOURS, NATIVE) for lev in LEVELS], axis=1)
    t = np.stack([truth(f"t{lev}", HOURS, NATIVE) for lev in LEVELS], axis=1)
    cube = ("time", "level", "latitude", "longitude")
    ds = xr.Dataset(
        {
            "geopotential": (cube, nan_outside_record(z), {"units": "m**2 s**-2"}),
            "temperature": (cube, nan_outside_record(t), {"units": "K"}),
            "2m_temperature": (("time", "latitude", "longitude"), nan_outside_record(truth("t2m", HOURS, NATIVE)), {"units": "K"}),
            "geopotential_at_surface": (("latitude", "longitude"), truth("orog", HOURS[:1], NATIVE)[0], {"units": "m**2 s**-2"}),
            "land_sea_mask": (
                ("time", "latitude", "longitude"),
                nan_outside_record(np.broadcast_to(truth("lsm", HOURS[:1], NATIVE), (len(HOURS), NATIVE.nlat, NATIVE.nlon))),
                {"units": "(0 - 1)"},
            ),
        },
        coords={"time": HOURS, "level": ("level", LEVELS, {"units": "millibars"}), **NATIVE.coords()},
        attrs={"valid_time_start": "2000-01-01", "valid_time_stop": "2000-01-02"},
    )
    encoding = {name: {"chunks": (1,) + ds[name].shape[1:]} for name in ds.data_vars if "time" in ds[name].dims}
    ds.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding)
    return path


def arco_config(tmp_path: Path, url: Path, grid: Grid = NATIVE, channels=CHANNELS, **source) -> MyriadConfig:
    return config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "source": {"kind": "arco", "url": str(url), "backoff_seconds": 0, **source},
            "grid": {"nlat": grid.nlat, "nlon": grid.nlon},
            "channels": list(channels),
            "static": ["orog", "lsm"],
            "time": {"start": "2000-01-01T00:00", "end": "2000-01-03T12:00", "step_hours": 6},
        }
    )


def test_native_grid_reads_valid_times_only_with_source_values(tmp_path: Path, arco_store: Path) -> None:
    source = ArcoSource(arco_config(tmp_path, arco_store))
    assert source.network and not source.sequential
    assert isinstance(source, Source)
    times = source.available_times()
    np.testing.assert_array_equal(times.values, EXPECTED_TIMES.values)  # valid_time_stop is a whole day
    block = source.read_block(times[2:6])
    for name in CHANNELS:
        assert block[name].dtype == np.float32 and block[name].dims == ("time", "latitude", "longitude")
        np.testing.assert_array_equal(block[name].values, truth(name, times[2:6], NATIVE))
    static = source.static_fields()
    np.testing.assert_array_equal(static["orog"].values, truth("orog", HOURS[:1], NATIVE)[0])
    np.testing.assert_array_equal(static["lsm"].values, truth("lsm", HOURS[:1], NATIVE)[0])
    revived = pickle.loads(pickle.dumps(source))  # as Dask ships it to a worker process
    np.testing.assert_array_equal(revived.read_block(times[:1])["z500"].values, truth("z500", times[:1], NATIVE))
    with pytest.raises(MyriadError, match="time 2000-01-03 00:00:00 is not available"):
        source.read_block(pd.DatetimeIndex(["2000-01-03T00:00"]))


def test_coarsened_reads_are_area_weighted_means_that_keep_the_poles(tmp_path: Path, arco_store: Path) -> None:
    coarse = Grid(11, 20)
    source = ArcoSource(arco_config(tmp_path, arco_store, grid=coarse, coarsen=2))
    times = source.available_times()[:3]
    block = source.read_block(times)
    np.testing.assert_array_equal(block["latitude"].values, coarse.latitudes)
    for name in CHANNELS:
        native = truth(name, times, NATIVE).astype(np.float64)
        coarse_values = block[name].values.astype(np.float64)
        # the area-weighted global mean is preserved exactly by a conservative remap
        native_mean = (native * NATIVE.quadrature_weights()).sum(axis=(1, 2))
        coarse_mean = (coarse_values * coarse.quadrature_weights()).sum(axis=(1, 2))
        np.testing.assert_allclose(coarse_mean, native_mean, rtol=1e-6)
        # north-pole cell [81, 90] deg: the pole row [85.5, 90] and the part [81, 85.5] of the 81-deg row,
        # each averaged over longitudes with weights 1/4, 1/2, 1/4 (half cells at the coarse cell edges)
        w_pole = 1 - np.sin(np.deg2rad(85.5))
        w_row = np.sin(np.deg2rad(85.5)) - np.sin(np.deg2rad(81.0))
        around = (np.arange(0, 40, 2)[:, None] + np.array([-1, 0, 1])) % 40
        rings = native[:, :2, around] @ np.array([0.25, 0.5, 0.25])  # (time, row, coarse longitude)
        expected_pole = (w_pole * rings[:, 0] + w_row * rings[:, 1]) / (w_pole + w_row)
        np.testing.assert_allclose(coarse_values[:, 0, :], expected_pole, rtol=1e-6)
    assert source.static_fields()["lsm"].shape == (11, 20)


def test_coarsening_averages_grid_scale_noise_instead_of_aliasing_it() -> None:
    coarsen = ConservativeCoarsening(NATIVE.latitudes, NATIVE.nlon, 2)
    stripes = np.broadcast_to((np.arange(NATIVE.nlon) % 2 == 0).astype(np.float32), (NATIVE.nlat, NATIVE.nlon))
    np.testing.assert_allclose(coarsen(stripes), 0.5, rtol=1e-6)  # subsampling would give 1 everywhere
    np.testing.assert_allclose(coarsen(np.full((NATIVE.nlat, NATIVE.nlon), 7.0)), 7.0, rtol=1e-6)
    with pytest.raises(MyriadError, match="source.coarsen=3 must divide nlat-1=20 and nlon=40"):
        ConservativeCoarsening(NATIVE.latitudes, NATIVE.nlon, 3)


def test_grid_mismatch_and_missing_level_are_clear_errors(tmp_path: Path, arco_store: Path) -> None:
    with pytest.raises(MyriadError, match=r"grid 21x40 coarsened by source.coarsen=1 gives equiangular-21x40, but grid is equiangular-11x20; set grid.nlat=21"):
        ArcoSource(arco_config(tmp_path, arco_store, grid=Grid(11, 20)))
    with pytest.raises(MyriadError, match=r"ARCO store .*era5.zarr: has no data for channel\(s\) t925"):
        ArcoSource(arco_config(tmp_path, arco_store, channels=["z500", "t925"]))
    with pytest.raises(MyriadError, match=r"ARCO store .*missing.zarr: cannot be opened \(FileNotFoundError"):
        ArcoSource(arco_config(tmp_path, tmp_path / "missing.zarr"))


def test_network_errors_are_retried_and_then_reported(tmp_path: Path, arco_store: Path) -> None:
    calls = []

    def flaky_opener(url: str) -> xr.Dataset:
        calls.append(url)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return open_zarr_store(url, {})

    source = ArcoSource(arco_config(tmp_path, arco_store, retries=2), opener=flaky_opener)
    assert len(calls) == 3 and len(source.available_times()) == len(EXPECTED_TIMES)

    def dead_opener(url: str) -> xr.Dataset:
        raise TimeoutError("timed out")

    with pytest.raises(MyriadError, match=r"open: failed after 3 attempt\(s\) \(TimeoutError: timed out\)"):
        ArcoSource(arco_config(tmp_path, arco_store, retries=2), opener=dead_opener)
