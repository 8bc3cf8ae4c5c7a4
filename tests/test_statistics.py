"""stats.nc: area-weighted statistics against a numpy reference, periods, bad files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.data.ingest import ingest
from pipeline.data.inspect import summarize
from pipeline.data.statistics import STAT_VARIABLES, compute_statistics, load_statistics, statistics_match_config
from pipeline.data.store import COMPLETE_VAR
from pipeline.errors import MyriadError
from tests.analysis_files import CHANNELS, GRID, files_config, write_files

START, END = "2000-01-01T00:00", "2000-01-10T18:00"  # 40 times


@pytest.fixture
def run(tmp_path: Path):
    """A complete analysis store; yields (config, reference fields)."""
    reference = write_files(tmp_path / "data", START, n_files=2, times_per_file=20)
    config = files_config(tmp_path / "run", tmp_path / "data", START, END)
    ingest(config, progress=False)
    return config, reference


def _reference_stats(x: np.ndarray) -> dict[str, float]:
    """Numpy reference: cell-area weights from sin of the cell edges, written out here."""
    lat = GRID.latitudes
    edges = np.concatenate([[90.0], 0.5 * (lat[1:] + lat[:-1]), [-90.0]])
    w = np.sin(np.deg2rad(edges[:-1])) - np.sin(np.deg2rad(edges[1:]))
    w = (w / w.mean())[None, :, None]
    x = x.astype(np.float64)
    dx = x[1:] - x[:-1]
    mean = (w * x).mean()
    tmean = (w * dx).mean()
    return {
        "mean": mean,
        "std": np.sqrt((w * (x - mean) ** 2).mean()),
        "min": x.min(),
        "max": x.max(),
        "tendency_mean": tmean,
        "tendency_std": np.sqrt((w * (dx - tmean) ** 2).mean()),
    }


def test_statistics_match_numpy_reference(run) -> None:
    config, reference = run
    path = compute_statistics(config)
    assert path == config.stats_path
    stats = load_statistics(path)
    assert list(stats["channel"].values) == CHANNELS
    assert list(stats["channel_units"].values) == ["K", "Pa", "m s-1"]
    for name in STAT_VARIABLES:
        assert stats[name].dims == ("channel",) and stats[name].dtype == np.float64
        assert stats[name].attrs["units"] and stats[name].attrs["long_name"]
    for channel in CHANNELS:
        expected = _reference_stats(reference[channel].values)
        for name, value in expected.items():
            np.testing.assert_allclose(float(stats[name].sel(channel=channel)), value, rtol=1e-9, err_msg=f"{channel} {name}")
    attrs = stats.attrs
    assert (attrs["period_start"], attrs["period_end"], attrs["n_times"], attrs["time_step_hours"]) == (START, END, 40, 6)
    assert attrs["weighting"] == "cos-latitude cell-area (pipeline.grid.latitude_weights)"
    assert attrs["analysis_store"] == str(config.analysis_path.resolve())
    assert attrs["analysis_config_hash"] == xr.open_zarr(config.analysis_path, consolidated=False).attrs["config_hash"]
    assert statistics_match_config(config)
    assert not list(path.parent.glob(".stats.nc.*"))  # no temporary file left
    summary = summarize(config.run_dir)["statistics"]
    assert summary["channels"]["msl"]["std"] == pytest.approx(float(stats["std"].sel(channel="msl")))


def test_statistics_period_selection(run) -> None:
    config, reference = run
    period = config.model_copy(update={"statistics": config.statistics.model_copy(
        update={"start": datetime(2000, 1, 3), "end": datetime(2000, 1, 5, 12)})})
    stats = load_statistics(compute_statistics(period))
    assert (stats.attrs["n_times"], stats.attrs["period_start"], stats.attrs["period_end"]) == (11, "2000-01-03T00:00", "2000-01-05T12:00")
    expected = _reference_stats(reference["t2m"].sel(time=slice("2000-01-03T00:00", "2000-01-05T12:00")).values)
    np.testing.assert_allclose(float(stats["tendency_std"].sel(channel="t2m")), expected["tendency_std"], rtol=1e-9)
    np.testing.assert_allclose(float(stats["max"].sel(channel="t2m")), expected["max"], rtol=0)
    assert not statistics_match_config(config)  # stats.nc now describes another period


def test_statistics_period_outside_store_is_refused(run) -> None:
    config, _ = run
    outside = config.model_copy(update={"statistics": config.statistics.model_copy(
        update={"end": datetime(2000, 2, 1)})})
    with pytest.raises(MyriadError, match=r"statistics period 2000-01-01T00:00 .. 2000-02-01T00:00 is not a span inside"):
        compute_statistics(outside)
    assert not config.stats_path.exists()


def test_statistics_need_a_complete_store(run) -> None:
    config, _ = run
    zarr.open_group(str(config.analysis_path), mode="r+")[COMPLETE_VAR][2] = 0
    with pytest.raises(MyriadError, match="incomplete, no data yet for 2000-01-05T00:00 .. 2000-01-06T18:00"):
        compute_statistics(config)


@pytest.mark.parametrize("content", [b"", b"not a netcdf file at all", None], ids=["empty", "garbage", "wrong-variables"])
def test_corrupt_statistics_file_gives_clear_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "stats.nc"
    if content is None:
        xr.Dataset({"mean": ("channel", [1.0])}, coords={"channel": ["t2m"]}).to_netcdf(path, engine="netcdf4")
    else:
        path.write_bytes(content)
    with pytest.raises(MyriadError, match=rf"stats file {path}: unreadable or not a Myriad statistics file"):
        load_statistics(path)
