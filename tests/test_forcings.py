"""Forcing inputs of the valid time (models.forcings) and the SFNO that takes them."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
import torch

from models.forcings import DAY_SECONDS, EPOCH_2000, YEAR_SECONDS, check_forcings, forcing_fields, n_forcing_channels, posix_seconds
from models.sfno import SFNO
from pipeline.config import config_from_dict
from pipeline.errors import MyriadError
from pipeline.training.config import ModelConfig
from pipeline.training.forecast import Forecaster
from pipeline.training.normalisation import Normalisation

NLAT, NLON = 9, 16


def test_posix_seconds_reads_every_time_type_as_utc() -> None:
    expected = EPOCH_2000 + 6 * 3600.0
    for value in (np.datetime64("2000-01-01T06:00"), np.datetime64("2000-01-01T06:00:00.000000000"),
                  dt.datetime(2000, 1, 1, 6), dt.datetime(2000, 1, 1, 7, tzinfo=dt.timezone(dt.timedelta(hours=1))),
                  torch.tensor(expected, dtype=torch.float64), torch.tensor(int(expected))):
        seconds = posix_seconds(value, batch=3)
        assert seconds.dtype == torch.float64 and seconds.tolist() == [expected] * 3
    array = np.array(["2000-01-01T00:00", "2009-03-01T18:00"], dtype="datetime64[s]")
    assert posix_seconds(array).tolist() == [EPOCH_2000, float(array[1].astype(np.int64))]
    with pytest.raises(ValueError, match=r"one per batch row \(3\)"):
        posix_seconds(array, batch=3)
    with pytest.raises(ValueError, match="float64 or int64"):
        posix_seconds(torch.tensor([expected]))  # float32 would be off by 32 s
    with pytest.raises(ValueError, match="float64 or int64"):
        posix_seconds(np.array([expected], dtype=np.float32))
    assert posix_seconds(np.array([expected]), batch=2).tolist() == [expected] * 2  # one time of shape (1,)
    aware = pd.DatetimeIndex(["2000-01-01T07:00", "2000-01-01T07:00"]).tz_localize("Europe/Berlin")
    assert posix_seconds(aware).tolist() == [expected] * 2
    assert posix_seconds(aware[0], batch=1).tolist() == [expected]
    assert posix_seconds(pd.DatetimeIndex(["2000-01-01T06:00"])).tolist() == [expected]


def test_year_progress_is_the_phase_of_the_julian_year_from_2000() -> None:
    seconds = torch.tensor([EPOCH_2000, EPOCH_2000 + YEAR_SECONDS / 4, EPOCH_2000 + 10.5 * YEAR_SECONDS,
                            EPOCH_2000 - YEAR_SECONDS / 4], dtype=torch.float64)
    fields = forcing_fields(["year_progress"], seconds, NLAT, NLON)
    assert fields.shape == (4, 2, NLAT, NLON) and fields.dtype == torch.float32
    expected = [(1, 0), (0, 1), (-1, 0), (0, -1)]
    for row, (cos, sin) in enumerate(expected):
        assert torch.allclose(fields[row, 0], torch.full((NLAT, NLON), float(cos)), atol=1e-6)
        assert torch.allclose(fields[row, 1], torch.full((NLAT, NLON), float(sin)), atol=1e-6)


def test_day_progress_is_the_local_mean_solar_time() -> None:
    seconds = torch.tensor([EPOCH_2000 + 6 * 3600.0, EPOCH_2000 + 30 * DAY_SECONDS], dtype=torch.float64)
    fields = forcing_fields(["day_progress"], seconds, NLAT, NLON)
    longitude = np.arange(NLON) * 360.0 / NLON
    for row, hour in enumerate((6.0, 0.0)):
        phase = 2 * np.pi * (hour / 24 + longitude / 360)
        np.testing.assert_allclose(fields[row, 0].numpy(), np.broadcast_to(np.cos(phase), (NLAT, NLON)), atol=1e-6)
        np.testing.assert_allclose(fields[row, 1].numpy(), np.broadcast_to(np.sin(phase), (NLAT, NLON)), atol=1e-6)
    # 06 UTC at longitude 0 is a quarter of the local day; at 90 E it is local noon
    assert fields[0, 1, 0, 0] == pytest.approx(1.0) and fields[0, 0, 0, NLON // 4] == pytest.approx(-1.0, abs=1e-6)


def test_insolation_follows_the_sun() -> None:
    nlat, nlon = 33, 64
    times = np.array(["2009-06-21T12:00", "2009-03-20T12:00", "2009-12-21T12:00"], dtype="datetime64[s]")
    daily = forcing_fields(["daily_insolation"], posix_seconds(times), nlat, nlon)[:, 0].double()
    north, equator, south = daily[:, 0, 0], daily[:, nlat // 2, 0], daily[:, -1, 0]
    # June solstice: the north pole gets E0 sin(23.44 deg) (about 524 W m-2), the south pole nothing, and vice versa
    assert float(north[0]) == pytest.approx(0.967 * math.sin(math.radians(23.44)), rel=0.01) and float(south[0]) == 0.0
    assert float(south[2]) == pytest.approx(1.034 * math.sin(math.radians(23.44)), rel=0.01) and float(north[2]) == 0.0
    assert float(equator[1]) == pytest.approx(1.0 / math.pi, rel=0.02)  # equinox at the equator: S0 / pi
    assert torch.equal(daily, daily[:, :, :1].expand_as(daily))  # a daily mean does not depend on longitude
    # the daily mean is the mean of the instantaneous flux over the day (15-minute samples)
    offsets = np.arange(-12 * 3600, 12 * 3600, 900).astype("timedelta64[s]")
    instant = torch.stack([forcing_fields(["toa_insolation"], posix_seconds(times + k), nlat, nlon)[:, 0] for k in offsets])
    assert float((instant.double().mean(0).mean(-1) - daily.mean(-1)).abs().max()) < 2e-3
    # at 12 UTC the sun stands over longitude 0: the largest flux is there, E0 cos(lat - declination); night is 0
    noon = instant[len(offsets) // 2]
    assert int(noon[0].max(dim=0).values.argmax()) == 0 and float(noon[0].max()) == pytest.approx(0.967, rel=0.01)
    assert float(noon[0, nlat // 2 :, nlon // 2].max()) == 0.0  # midnight south of the equator (the Arctic has polar day)


def test_forcing_names_are_checked() -> None:
    assert check_forcings(["day_progress", "year_progress"]) == ("day_progress", "year_progress")
    assert n_forcing_channels(["year_progress", "day_progress"]) == 4 and n_forcing_channels([]) == 0
    with pytest.raises(ValueError, match=r"unknown forcing\(s\) \['insolation'\]"):
        check_forcings(["insolation"])
    with pytest.raises(ValueError, match="repeated"):
        check_forcings(["year_progress", "year_progress"])
    with pytest.raises(ValueError, match="forcings"):
        ModelConfig(forcings=["year_progress", "year_progress"])
    with pytest.raises(ValueError, match="year_progress"):
        ModelConfig(forcings=["sunshine"])
    assert "forcings" not in ModelConfig().hparams(["z500", "t850", "u10m"], 0, NLAT, NLON)  # old checkpoints keep resuming
    assert ModelConfig(forcings=["year_progress"]).hparams(["z500", "t850", "u10m"], 0, NLAT, NLON)["forcings"] == ["year_progress"]


def test_year_forcings_are_refused_on_a_planet_with_another_year() -> None:
    base = {"run_dir": "run", "grid": {"nlat": NLAT, "nlon": NLON}, "channels": ["z500"],
            "time": {"start": "2000-01-01T00:00", "end": "2000-02-01T00:00", "step_hours": 6}}
    short_year = {**base, "source": {"kind": "planet", "year_days": 100}}
    with pytest.raises(MyriadError, match=r"model.forcings \['toa_insolation'\] follow a 365.25-day year but source.year_days is 100"):
        config_from_dict({**short_year, "model": {"forcings": ["toa_insolation", "day_progress"]}})
    assert config_from_dict({**short_year, "model": {"forcings": ["day_progress"]}}).model.forcings == ["day_progress"]
    assert config_from_dict({**base, "model": {"forcings": ["year_progress"]}}).source.year_days == 365.25


def test_a_forecaster_without_a_time_step_rolls_out_a_model_without_forcings() -> None:
    normalisation = Normalisation(("z500",), np.zeros(1), np.ones(1))
    plain = Forecaster(SFNO(NLAT, NLON, 1, 1, embed_dim=8, num_layers=1), normalisation)
    x = torch.randn(2, 1, NLAT, NLON)
    timed = list(plain.rollout(x, 2, time=np.datetime64("2000-01-01T00:00")))
    torch.testing.assert_close(torch.stack(timed), torch.stack(list(plain.rollout(x, 2))))
    forced = Forecaster(SFNO(NLAT, NLON, 1, 1, embed_dim=8, num_layers=1, forcings=["year_progress"]), normalisation)
    assert forced.takes_time and not plain.takes_time
    with pytest.raises(ValueError, match="this model has forcings or a seasonal cycle: a rollout with valid times needs the forecaster's step_hours"):
        next(forced.rollout(x, 2, time=np.datetime64("2000-01-01T00:00")))


def test_an_sfno_with_forcings_needs_the_valid_time_and_uses_it() -> None:
    torch.manual_seed(0)
    model = SFNO(NLAT, NLON, 3, embed_dim=8, num_layers=2, scale_factor=1, forcings=["year_progress"]).eval()
    assert model.encoder.in_channels == 3 + 4 + 2
    x = torch.randn(2, 3, NLAT, NLON)
    with pytest.raises(ValueError, match=r"takes the forcings \['year_progress'\]: pass the valid time"):
        model(x)
    with torch.no_grad():
        winter = model(x, time=np.datetime64("2009-01-01T00:00"))
        summer = model(x, time=np.datetime64("2009-07-02T12:00"))
        one_year_on = model(x, time=np.datetime64("2009-01-01T00:00") + np.timedelta64(int(YEAR_SECONDS), "s"))
    assert not torch.allclose(winter, summer)
    torch.testing.assert_close(winter, one_year_on, rtol=1e-5, atol=1e-5)
    # per-row times: each row is its own valid time
    both = model(x, time=np.array(["2009-01-01T00:00", "2009-07-02T12:00"], dtype="datetime64[s]"))
    torch.testing.assert_close(both[0], winter[0])
    torch.testing.assert_close(both[1], summer[1])
    # a model without forcings ignores the time
    plain = SFNO(NLAT, NLON, 3, embed_dim=8, num_layers=2, scale_factor=1).eval()
    assert torch.equal(plain(x), plain(x, time=np.datetime64("2009-07-02T12:00")))
