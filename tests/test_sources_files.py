"""Local NetCDF/GRIB files to canonical blocks: round trips in every layout, and bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline.config import MyriadConfig, config_from_dict
from pipeline.data.channels import channel_attrs
from pipeline.data.sources.canonical import to_canonical, validate_block
from pipeline.data.sources.files import FilesSource
from pipeline.data.sources.base import Source
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from tests.era5_samples import classic_dataset, new_cds_dataset, truth, write_grib

GRID = Grid(9, 16)
CHANNELS = ["z500", "t850", "t2m", "msl"]
DAY = pd.date_range("2020-01-01", periods=4, freq="6h").as_unit("ns")


def files_config(
    tmp_path: Path, paths: list[Path | str], channels=CHANNELS, grid=GRID, static=(), **source
) -> MyriadConfig:
    return config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "source": {"kind": "files", "paths": [str(p) for p in paths], **source},
            "grid": {"nlat": grid.nlat, "nlon": grid.nlon},
            "channels": list(channels),
            "static": list(static),
            "time": {"start": "2020-01-01T00:00", "end": "2020-01-10T18:00", "step_hours": 6},
        }
    )


def assert_canonical(block: xr.Dataset, channels, times, grid=GRID, member=0) -> None:
    assert list(block.data_vars) == list(channels)
    np.testing.assert_array_equal(block["latitude"].values, grid.latitudes)
    np.testing.assert_array_equal(block["longitude"].values, grid.longitudes)
    assert block["time"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(block["time"].values, pd.DatetimeIndex(times).values)
    for name in channels:
        assert block[name].dims == ("time", "latitude", "longitude")
        assert block[name].dtype == np.float32
        assert block[name].attrs == channel_attrs(name)
        np.testing.assert_array_equal(block[name].values, truth(name, times, grid, member), err_msg=name)


# --------------------------------------------------------------------------- round trips


def test_new_cds_classic_and_grib_files_read_to_the_source_values(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    day1, day2, day3 = DAY, DAY + pd.Timedelta(days=1), DAY + pd.Timedelta(days=2)
    new_cds_dataset(CHANNELS, day1, GRID).to_netcdf(data / "a-new-cds.nc")
    classic = classic_dataset(CHANNELS, day2, GRID)
    assert classic["latitude"].values[0] == -90 and classic["longitude"].values.min() < 0
    classic.to_netcdf(data / "b-classic.nc", format="NETCDF3_64BIT")
    write_grib(data / "c.grib", CHANNELS, day3, GRID)

    source = FilesSource(files_config(tmp_path, [data / "*.nc", data / "c.grib"]))
    assert isinstance(source, Source) and not source.network

    all_times = day1.append(day2).append(day3)
    pd.testing.assert_index_equal(source.available_times(), all_times, check_names=False)
    assert_canonical(source.read_block(all_times), CHANNELS, all_times)
    # one block spanning two files, and a block from a single file
    assert_canonical(source.read_block(all_times[3:6]), CHANNELS, all_times[3:6])
    assert not list(data.glob("*.idx")), "cfgrib index files must not litter the data directory"


def test_read_block_opens_only_the_files_that_hold_the_times(tmp_path: Path) -> None:
    new_cds_dataset(CHANNELS, DAY, GRID).to_netcdf(tmp_path / "day1.nc")
    new_cds_dataset(CHANNELS, DAY + pd.Timedelta(days=1), GRID).to_netcdf(tmp_path / "day2.nc")
    source = FilesSource(files_config(tmp_path, [tmp_path / "day*.nc"]))
    (tmp_path / "day2.nc").write_bytes(b"")  # would fail if it were opened
    assert_canonical(source.read_block(DAY), CHANNELS, DAY)


def test_several_members_read_the_configured_member(tmp_path: Path) -> None:
    new_cds_dataset(CHANNELS, DAY, GRID, members=[0, 1, 2]).to_netcdf(tmp_path / "ens.nc")
    source = FilesSource(files_config(tmp_path, [tmp_path / "ens.nc"], member=2))
    assert_canonical(source.read_block(DAY), CHANNELS, DAY, member=2)
    with pytest.raises(MyriadError, match=r"ens\.nc: holds ensemble members \[0, 1, 2\] but not the configured member 5"):
        FilesSource(files_config(tmp_path, [tmp_path / "ens.nc"], member=5))


def test_zip_of_instant_and_pressure_files_is_unpacked_into_the_cache(tmp_path: Path) -> None:
    new_cds_dataset(["t2m", "msl"], DAY, GRID).to_netcdf(tmp_path / "single.nc")
    new_cds_dataset(["z500", "t850"], DAY, GRID).to_netcdf(tmp_path / "levels.nc")
    with zipfile.ZipFile(tmp_path / "download.nc", "w") as archive:  # a ZIP named .nc, as the CDS does
        archive.write(tmp_path / "single.nc", "data_stream-oper_stepType-instant.nc")
        archive.write(tmp_path / "levels.nc", "data_stream-oper_pressure.nc")
    source = FilesSource(files_config(tmp_path, [tmp_path / "download.nc"]))
    assert_canonical(source.read_block(DAY), CHANNELS, DAY)
    unpacked = sorted(p.name for p in (tmp_path / "run" / "cache" / "files" / "unzipped").rglob("*.nc"))
    assert unpacked == ["data_stream-oper_pressure.nc", "data_stream-oper_stepType-instant.nc"]


def test_units_in_gpm_and_hpa_are_converted_and_unknown_units_raise(tmp_path: Path) -> None:
    ds = new_cds_dataset(["z500", "msl"], DAY, GRID)
    ds["z"] = (ds["z"].dims, ds["z"].values.astype(np.float64) / 9.80665, {"units": "gpm"})
    ds["msl"] = (ds["msl"].dims, ds["msl"].values.astype(np.float64) / 100.0, {"units": "hPa"})
    ds.to_netcdf(tmp_path / "units.nc")
    block = FilesSource(files_config(tmp_path, [tmp_path / "units.nc"], channels=["z500", "msl"])).read_block(DAY)
    for name in ("z500", "msl"):
        np.testing.assert_allclose(block[name].values, truth(name, DAY, GRID), rtol=1e-6)
    ds["msl"].attrs["units"] = "furlongs"
    ds.to_netcdf(tmp_path / "odd.nc")
    source = FilesSource(files_config(tmp_path, [tmp_path / "odd.nc"], channels=["msl"]))
    with pytest.raises(MyriadError, match=r"odd\.nc: channel 'msl' has units 'furlongs' but 'Pa' is expected"):
        source.read_block(DAY)


def test_static_fields_come_from_the_first_time_of_the_file(tmp_path: Path) -> None:
    new_cds_dataset(["t2m", "orog", "lsm"], DAY, GRID).to_netcdf(tmp_path / "sfc.nc")
    config = files_config(tmp_path, [tmp_path / "sfc.nc"], channels=["t2m"], static=["orog", "lsm"])
    static = FilesSource(config).static_fields()
    for name in ("orog", "lsm"):
        assert static[name].dims == ("latitude", "longitude") and static[name].dtype == np.float32
        np.testing.assert_array_equal(static[name].values, truth(name, DAY[:1], GRID)[0])
    assert static["orog"].attrs["units"] == "m2 s-2"


def test_other_layouts_map_to_canonical_form() -> None:
    """WeatherBench2 (long names, latitude ascending, dims (time, level, longitude, latitude)) and cfgrib scalars."""
    times = DAY[:2]
    z = np.stack([truth("z500", times, GRID), truth("z850", times, GRID)], axis=1)
    wb2 = xr.Dataset(
        {
            "geopotential": (("time", "level", "longitude", "latitude"), z[..., ::-1, :].transpose(0, 1, 3, 2)),
            "2m_temperature": (("time", "longitude", "latitude"), truth("t2m", times, GRID)[:, ::-1, :].transpose(0, 2, 1)),
        },
        coords={"time": times, "level": [500, 850], "latitude": GRID.latitudes[::-1], "longitude": GRID.longitudes},
    )
    block = to_canonical(wb2, GRID, ["z850", "t2m"], "wb2")
    np.testing.assert_array_equal(block["z850"].values, truth("z850", times, GRID))
    np.testing.assert_array_equal(block["t2m"].values, truth("t2m", times, GRID))

    one = times[:1]
    cfgrib_like = xr.Dataset(
        {
            "t": (("latitude", "longitude"), truth("t850", one, GRID)[0], {"units": "K"}),
            "gh": (("latitude", "longitude"), truth("z850", one, GRID)[0].astype(np.float64) / 9.80665, {"units": "gpm"}),
        },
        coords={
            "time": one[0] - pd.Timedelta(hours=6),
            "step": pd.Timedelta(hours=6),
            "valid_time": one[0],
            "isobaricInhPa": 850.0,
            "number": 0,
            "latitude": GRID.latitudes,
            "longitude": GRID.longitudes,
        },
    )
    block = to_canonical(cfgrib_like, GRID, ["t850", "z850"], "cfgrib")
    np.testing.assert_array_equal(block["time"].values, one.values)
    np.testing.assert_array_equal(block["t850"].values, truth("t850", one, GRID))
    np.testing.assert_allclose(block["z850"].values, truth("z850", one, GRID), rtol=1e-6)

    cmip_like = xr.Dataset(
        {"t": (("time", "plev", "lat", "lon"), truth("t500", one, GRID)[:, None], {"units": "K"})},
        coords={"time": one, "plev": ("plev", [50000.0], {"units": "Pa"}), "lat": GRID.latitudes, "lon": GRID.longitudes},
    )
    np.testing.assert_array_equal(to_canonical(cmip_like, GRID, ["t500"], "cmip")["t500"].values, truth("t500", one, GRID))


def test_validate_block_rejects_unsorted_duplicate_and_non_float32_blocks() -> None:
    times = DAY[:3]
    block = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), truth("t2m", times, GRID))},
        coords={"time": times, **GRID.coords()},
    )
    validate_block(block, GRID, ["t2m"], "block", times)
    with pytest.raises(MyriadError, match=r"block: times are not sorted \(2020-01-01 06:00:00 follows 2020-01-01 12:00:00\)"):
        validate_block(block.isel(time=[0, 2, 1]), GRID, ["t2m"], "block")
    with pytest.raises(MyriadError, match="block: duplicate time 2020-01-01 06:00:00"):
        validate_block(block.isel(time=[0, 1, 1]), GRID, ["t2m"], "block")
    with pytest.raises(MyriadError, match="block: channel 't2m' has dtype float64, expected float32"):
        validate_block(block.astype(np.float64), GRID, ["t2m"], "block")
    with pytest.raises(MyriadError, match="block: channel 'msl' is missing"):
        validate_block(block, GRID, ["t2m", "msl"], "block")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("file_format", ["NETCDF4", "NETCDF3_64BIT"])
def test_truncated_netcdf_is_a_clear_error(tmp_path: Path, file_format: str) -> None:
    path = tmp_path / "cut.nc"
    new_cds_dataset(CHANNELS, DAY, GRID).to_netcdf(path, format=file_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MyriadError, match=rf"file {path}: cannot be read as NetCDF \("):
        source = FilesSource(files_config(tmp_path, [path]))
        source.read_block(DAY)


def test_corrupt_grib_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.grib"
    write_grib(path, CHANNELS, DAY, GRID)
    raw = bytearray(path.read_bytes())
    raw[-100:] = b"\0" * 100  # the last message loses its data and its '7777' end marker
    path.write_bytes(bytes(raw))
    with pytest.raises(MyriadError, match=rf"file {path}: cannot be read as GRIB \("):
        source = FilesSource(files_config(tmp_path, [path]))
        source.read_block(DAY)


def test_nan_in_a_field_names_file_channel_and_time(tmp_path: Path) -> None:
    ds = new_cds_dataset(CHANNELS, DAY, GRID)
    ds["t2m"][2, 3, 4] = np.nan
    ds.to_netcdf(tmp_path / "holes.nc")
    source = FilesSource(files_config(tmp_path, [tmp_path / "holes.nc"]))
    with pytest.raises(MyriadError, match=r"holes\.nc: channel 't2m' has 1 NaN/inf values at 1 time\(s\), first at 2020-01-01 12:00:00"):
        source.read_block(DAY)


def test_missing_channel_names_channel_and_file(tmp_path: Path) -> None:
    new_cds_dataset(CHANNELS, DAY, GRID).to_netcdf(tmp_path / "some.nc")
    with pytest.raises(MyriadError, match=rf"channel\(s\) q700 not found in file\(s\) {tmp_path / 'some.nc'}"):
        FilesSource(files_config(tmp_path, [tmp_path / "some.nc"], channels=[*CHANNELS, "q700"]))


def test_duplicate_time_across_files_names_both_files(tmp_path: Path) -> None:
    new_cds_dataset(CHANNELS, DAY, GRID).to_netcdf(tmp_path / "one.nc")
    new_cds_dataset(CHANNELS, DAY[3:].append(DAY[3:] + pd.Timedelta(hours=6)), GRID).to_netcdf(tmp_path / "two.nc")
    with pytest.raises(
        MyriadError, match=rf"time 2020-01-01 18:00:00 of channel 'z500' is in two files: {tmp_path / 'one.nc'} and {tmp_path / 'two.nc'}"
    ):
        FilesSource(files_config(tmp_path, [tmp_path / "*.nc"]))


def test_wrong_grid_names_file_and_both_grids(tmp_path: Path) -> None:
    new_cds_dataset(CHANNELS, DAY, Grid(7, 16)).to_netcdf(tmp_path / "coarse.nc")
    source = FilesSource(files_config(tmp_path, [tmp_path / "coarse.nc"]))
    with pytest.raises(MyriadError, match=r"coarse\.nc: grid equiangular-7x16 does not match the configured grid equiangular-9x16"):
        source.read_block(DAY)


def test_unknown_format_and_missing_paths_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.nc").write_text("not a data file")
    with pytest.raises(MyriadError, match=r"notes\.nc: is neither NetCDF, GRIB nor ZIP"):
        FilesSource(files_config(tmp_path, [tmp_path / "notes.nc"]))
    with pytest.raises(MyriadError, match=r"source.paths: '.*\*.grib' matches no file"):
        FilesSource(files_config(tmp_path, [tmp_path / "*.grib"]))
