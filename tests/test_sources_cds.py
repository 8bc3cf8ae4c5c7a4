"""CDS source against a stand-in cdsapi client (the network edge).

The stand-in answers ``retrieve(dataset, request, target)`` like the new CDS:
a NetCDF in the new layout (``valid_time``, ``pressure_level``, short names)
on the requested grid, or, when asked to, a ZIP of an instant and an
accumulated NetCDF; it can fail a number of times first, and it records
every request. Everything after the download is the real reading path.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.config import MyriadConfig, config_from_dict
from pipeline.data.channels import code_for_name
from pipeline.data.sources.cds import PRESSURE_LEVELS, SINGLE_LEVELS, CdsSource
from pipeline.data.sources.base import Source
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from tests.era5_samples import new_cds_dataset, truth, write_grib

GRID = Grid(9, 16)
FAKE_KEY = "abcd1234-fake-cds-token-5678"
TIMES = pd.date_range("2020-01-31T00:00", "2020-02-01T18:00", freq="6h").as_unit("ns")


class StandInCds:
    """Stand-in for ``cdsapi.Client``: writes new-CDS NetCDF files and records requests."""

    def __init__(self, fail_first: int = 0, failure: Exception | None = None, zip_accumulated: bool = False) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.credentials: list[tuple[str, str]] = []
        self.fail_first = fail_first
        self.failure = failure or ConnectionResetError("connection reset by peer")
        self.zip_accumulated = zip_accumulated

    def factory(self, url: str, key: str) -> "StandInCds":
        self.credentials.append((url, key))
        return self

    def retrieve(self, dataset: str, request: dict[str, Any], target: str) -> None:
        self.requests.append((dataset, request))
        if len(self.requests) <= self.fail_first:
            Path(target).write_bytes(b"partial")
            raise self.failure
        spacing = request["grid"][0]
        grid = Grid(int(round(180 / spacing)) + 1, int(round(360 / spacing)))
        (year,), (month,) = request["year"], request["month"]
        times = pd.DatetimeIndex(
            [pd.Timestamp(f"{year}-{month}-{day}T{hour}") for day in request["day"] for hour in request["time"]]
        )
        channels = []
        for long_name in request["variable"]:
            code = code_for_name(long_name)
            if dataset == PRESSURE_LEVELS:
                channels += [f"{code}{level}" for level in request["pressure_level"]]
            else:
                channels.append("orog" if code == "z" else code)
        accumulated = [c for c in channels if c == "tp"]
        if request["data_format"] == "grib":
            write_grib(Path(target), channels, times, grid)
        elif self.zip_accumulated and accumulated:
            instant = [c for c in channels if c not in accumulated]
            with zipfile.ZipFile(target, "w") as archive:
                for name, group in (("instant", instant), ("accum", accumulated)):
                    archive.writestr(f"data_stream-oper_stepType-{name}.nc", new_cds_dataset(group, times, grid).to_netcdf())
        else:
            new_cds_dataset(channels, times, grid).to_netcdf(target)


def cds_config(tmp_path: Path, channels, static=(), grid: Grid = GRID, end: str = "2020-02-01T18:00", **source) -> MyriadConfig:
    return config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "source": {"kind": "cds", "backoff_seconds": 0, **source},
            "grid": {"nlat": grid.nlat, "nlon": grid.nlon},
            "channels": list(channels),
            "static": list(static),
            "time": {"start": "2020-01-31T00:00", "end": end, "step_hours": 6},
        }
    )


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDSAPI_URL", "https://cds.example.invalid/api")
    monkeypatch.setenv("CDSAPI_KEY", FAKE_KEY)


def test_requests_are_split_by_month_and_read_back_to_the_source_values(tmp_path: Path, credentials: None) -> None:
    stand_in = StandInCds()
    config = cds_config(tmp_path, ["z500", "t850", "t2m", "u10m"], static=["orog", "lsm"])
    source = CdsSource(config, client_factory=stand_in.factory)
    assert source.network and source.available_times().equals(TIMES)
    assert isinstance(source, Source)

    block = source.read_block(TIMES)
    for name in ("z500", "t850", "t2m", "u10m"):
        assert block[name].dtype == np.float32
        np.testing.assert_array_equal(block[name].values, truth(name, TIMES, GRID), err_msg=name)
    static = source.static_fields()
    np.testing.assert_array_equal(static["orog"].values, truth("orog", TIMES[:1], GRID)[0])
    np.testing.assert_array_equal(static["lsm"].values, truth("lsm", TIMES[:1], GRID)[0])

    assert stand_in.credentials == [("https://cds.example.invalid/api", FAKE_KEY)]
    by_month = {(dataset, r["month"][0]): r for dataset, r in stand_in.requests if r["variable"] != ["geopotential", "land_sea_mask"]}
    assert sorted(by_month) == [(PRESSURE_LEVELS, "01"), (PRESSURE_LEVELS, "02"), (SINGLE_LEVELS, "01"), (SINGLE_LEVELS, "02")]
    assert by_month[(PRESSURE_LEVELS, "01")] == {
        "product_type": ["reanalysis"],
        "variable": ["geopotential", "temperature"],
        "year": ["2020"],
        "month": ["01"],
        "day": ["31"],
        "time": ["00:00", "06:00", "12:00", "18:00"],
        "data_format": "netcdf",
        "download_format": "unarchived",
        "grid": [22.5, 22.5],
        "pressure_level": ["500", "850"],
    }
    assert by_month[(SINGLE_LEVELS, "02")]["variable"] == ["10m_u_component_of_wind", "2m_temperature"]
    assert by_month[(SINGLE_LEVELS, "02")]["day"] == ["01"] and "pressure_level" not in by_month[(SINGLE_LEVELS, "02")]
    assert len(stand_in.requests) == 5  # 2 datasets x 2 months + the static fields

    # finished months are skipped: a new source over the same download directory asks for nothing
    again = StandInCds()
    reread = CdsSource(config, client_factory=again.factory).read_block(TIMES[2:6])
    np.testing.assert_array_equal(reread["z500"].values, truth("z500", TIMES[2:6], GRID))
    assert again.requests == [] and again.credentials == []


def test_zip_response_of_instant_and_accumulated_fields_is_unpacked(tmp_path: Path, credentials: None) -> None:
    stand_in = StandInCds(zip_accumulated=True)
    source = CdsSource(cds_config(tmp_path, ["t2m", "msl", "tp"], end="2020-01-31T18:00"), client_factory=stand_in.factory)
    block = source.read_block(TIMES[:4])
    for name in ("t2m", "msl", "tp"):
        np.testing.assert_array_equal(block[name].values, truth(name, TIMES[:4], GRID), err_msg=name)
    (download,) = (tmp_path / "run" / "downloads" / SINGLE_LEVELS).iterdir()
    names = sorted(p.name for p in download.rglob("*") if p.is_file())
    assert names == ["data_stream-oper_stepType-accum.nc", "data_stream-oper_stepType-instant.nc", "request.json"]


def test_grib_downloads_read_through_the_same_path(tmp_path: Path, credentials: None) -> None:
    stand_in = StandInCds()
    config = cds_config(tmp_path, ["z500", "t2m"], end="2020-01-31T18:00", data_format="grib")
    block = CdsSource(config, client_factory=stand_in.factory).read_block(TIMES[:4])
    for name in ("z500", "t2m"):
        np.testing.assert_array_equal(block[name].values, truth(name, TIMES[:4], GRID), err_msg=name)
    assert {r["data_format"] for _, r in stand_in.requests} == {"grib"}
    assert len(list((tmp_path / "run" / "downloads").rglob("*.grib"))) == 2


def test_transient_failures_are_retried_and_the_key_is_never_logged(
    tmp_path: Path, credentials: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stand_in = StandInCds(fail_first=2, failure=ConnectionResetError(f"reset while sending Authorization: {FAKE_KEY}"))
    source = CdsSource(cds_config(tmp_path, ["t2m"], end="2020-01-31T18:00", retries=3), client_factory=stand_in.factory)
    block = source.read_block(TIMES[:4])
    np.testing.assert_array_equal(block["t2m"].values, truth("t2m", TIMES[:4], GRID))
    assert len(stand_in.requests) == 3
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "***" in retries[0].getMessage()
    assert FAKE_KEY not in caplog.text

    dead = StandInCds(fail_first=99, failure=ConnectionResetError(f"key {FAKE_KEY} refused"))
    source = CdsSource(cds_config(tmp_path / "dead", ["t2m"], end="2020-01-31T18:00", retries=1), client_factory=dead.factory)
    with pytest.raises(MyriadError, match=r"failed after 2 attempt\(s\)") as error:
        source.read_block(TIMES[:4])
    assert FAKE_KEY not in str(error.value) and FAKE_KEY not in caplog.text
    assert not list((tmp_path / "dead" / "run" / "downloads" / SINGLE_LEVELS).iterdir()), "nothing may look downloaded"


def test_rejected_requests_are_not_retried(tmp_path: Path, credentials: None) -> None:
    class BadRequest(Exception):
        response = type("Response", (), {"status_code": 400})()

    stand_in = StandInCds(fail_first=99, failure=BadRequest("400 Client Error: invalid variable"))
    source = CdsSource(cds_config(tmp_path, ["t2m"], end="2020-01-31T18:00"), client_factory=stand_in.factory)
    with pytest.raises(MyriadError, match=r"CDS request reanalysis-era5-single-levels 2020-01: failed \(BadRequest: 400"):
        source.read_block(TIMES[:4])
    assert len(stand_in.requests) == 1


def test_an_interrupted_download_never_looks_complete(tmp_path: Path, credentials: None) -> None:
    stand_in = StandInCds(fail_first=1, failure=KeyboardInterrupt())
    config = cds_config(tmp_path, ["t2m"], end="2020-01-31T18:00")
    with pytest.raises(KeyboardInterrupt):
        CdsSource(config, client_factory=stand_in.factory).read_block(TIMES[:4])
    assert not list((tmp_path / "run" / "downloads" / SINGLE_LEVELS).iterdir())
    block = CdsSource(config, client_factory=stand_in.factory).read_block(TIMES[:4])
    np.testing.assert_array_equal(block["t2m"].values, truth("t2m", TIMES[:4], GRID))


def test_missing_credentials_explain_how_to_set_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDSAPI_URL", raising=False)
    monkeypatch.delenv("CDSAPI_KEY", raising=False)
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "no-such-cdsapirc"))
    source = CdsSource(cds_config(tmp_path, ["t2m"]), client_factory=StandInCds().factory)
    with pytest.raises(MyriadError, match=r"CDS credentials not found: set CDSAPI_URL and CDSAPI_KEY, or write ~/.cdsapirc"):
        source.read_block(TIMES[:1])

    rc = tmp_path / "cdsapirc"
    rc.write_text(f"url: https://cds.example.invalid/api\nkey: {FAKE_KEY}\n")
    monkeypatch.setenv("CDSAPI_RC", str(rc))
    stand_in = StandInCds()
    CdsSource(cds_config(tmp_path, ["t2m"]), client_factory=stand_in.factory).read_block(TIMES[:1])
    assert stand_in.credentials == [("https://cds.example.invalid/api", FAKE_KEY)]


def test_grids_the_cds_cannot_produce_with_poles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MyriadError, match=r"latitude spacing 20 deg differs from longitude spacing 22.5 deg"):
        CdsSource(cds_config(tmp_path, ["t2m"], grid=Grid(10, 16)))
    with pytest.raises(MyriadError, match=r"source.grid_deg=1 does not match grid equiangular-9x16"):
        CdsSource(cds_config(tmp_path, ["t2m"], grid_deg=1.0))
    with pytest.raises(MyriadError, match=r"channel 'tp6h': has no ERA5 equivalent"):
        CdsSource(cds_config(tmp_path, ["tp6h"]))
