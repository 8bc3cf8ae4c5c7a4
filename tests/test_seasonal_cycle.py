"""The seasonal cycle of a forecaster that works on departures from it (models/seasonal.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from models.dyffusion import DYffusionForecaster
from models.forcings import EPOCH_2000, YEAR_SECONDS
from models.seasonal import SeasonalCycle, fit_seasonal_cycle, harmonic_basis
from pipeline.data.ingest import ingest
from pipeline.data.statistics import compute_statistics
from pipeline.training.checkpoint import LAST, load_checkpoint
from pipeline.training.distributed import DistributedContext
from pipeline.training.forecast import Forecaster
from pipeline.training.trainer import Trainer
from tests.analysis_files import GRID, land_sea_mask, make_fields, write_file
from tests.training_fixtures import TINY_MODEL, TINY_TRAINING, write_config

SIX_HOURS = 6 * 3600.0


def year_angle(seconds: torch.Tensor) -> torch.Tensor:
    return 2 * math.pi * torch.remainder(seconds - EPOCH_2000, YEAR_SECONDS) / YEAR_SECONDS


def test_the_fit_recovers_the_annual_harmonics_of_noisy_zonal_means() -> None:
    seconds = EPOCH_2000 + torch.arange(3 * 1461, dtype=torch.float64) * SIX_HOURS  # three years, 6-hourly
    angle = year_angle(seconds)
    zonal = 0.05 * torch.randn(len(seconds), 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    zonal[:, 0, 1] += 5.0 + 2.0 * torch.cos(angle) - 0.5 * torch.sin(2 * angle)  # the mean is the normalisation's
    zonal[:, 1, 2] += 0.3 * torch.sin(angle)
    coefficients = fit_seasonal_cycle(zonal, seconds, 2)  # (C, nlat, [cos 1, cos 2, sin 1, sin 2])
    expected = torch.zeros(2, 3, 4, dtype=torch.float64)
    expected[0, 1] = torch.tensor([2.0, 0.0, 0.0, -0.5])
    expected[1, 2, 2] = 0.3
    torch.testing.assert_close(coefficients, expected, atol=5e-3, rtol=0)
    cycle = SeasonalCycle(2, 3, 2)
    cycle.set_coefficients(coefficients.float(), SIX_HOURS)
    midsummer = torch.tensor([EPOCH_2000 + 0.5 * YEAR_SECONDS])
    values = cycle(midsummer, nlon=4)  # the departure is the same at every longitude
    assert values.shape == (1, 2, 3, 4) and torch.equal(values[..., 0], values[..., 3])
    assert float(values[0, 0, 1, 0]) == pytest.approx(2.0 * math.cos(math.pi) - 0.5 * math.sin(2 * math.pi), abs=5e-3)


def test_a_fit_needs_a_year_of_times_and_matching_shapes() -> None:
    seconds = EPOCH_2000 + torch.arange(300, dtype=torch.float64) * 86400.0
    with pytest.raises(ValueError, match="at least a year"):
        fit_seasonal_cycle(torch.zeros(300, 1, 2), seconds, 1)
    with pytest.raises(ValueError, match="300 zonal means but 299 times"):
        fit_seasonal_cycle(torch.zeros(300, 1, 2), seconds[1:], 1)
    with pytest.raises(ValueError, match="at least one harmonic"):
        SeasonalCycle(1, 2, 0)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 4\), expected \(1, 2, 2\)"):
        SeasonalCycle(1, 2, 1).set_coefficients(torch.zeros(1, 2, 4), SIX_HOURS)


def test_a_seasonal_forecaster_maps_departures_and_adds_the_seasons_change_over_its_jump() -> None:
    torch.manual_seed(0)
    forecaster = DYffusionForecaster(8, 16, 2, horizon=6, seasonal_harmonics=1, embed_dim=8, num_layers=1).eval()
    coefficients = torch.randn(2, 8, 2)
    forecaster.set_seasonal_cycle(coefficients, SIX_HOURS)
    x, start = torch.randn(3, 2, 8, 16), torch.tensor([EPOCH_2000 + 40 * 86400.0] * 3, dtype=torch.float64)
    i = torch.tensor([0.0, 0.5, 5 / 6])  # the chain's start, its middle, its last step

    def cycle(seconds: torch.Tensor) -> torch.Tensor:  # d(t) written out: a cos(gamma) + b sin(gamma)
        angle = year_angle(seconds).float()[:, None, None]
        return (coefficients[None, ..., 0] * torch.cos(angle) + coefficients[None, ..., 1] * torch.sin(angle))[..., None]

    here = cycle(start + i.double() * 6 * SIX_HOURS)
    there = cycle(start + 6 * SIX_HOURS)
    with torch.no_grad():
        expected = forecaster.net(x - here, forecaster._cond(i, x), start) + there
        torch.testing.assert_close(forecaster(x, i, time=start), expected)
    with pytest.raises(ValueError, match="needs the chain's start time"):
        forecaster(x, i)
    with pytest.raises(ValueError, match="built without a seasonal cycle"):
        DYffusionForecaster(8, 16, 2, embed_dim=8, num_layers=1).set_seasonal_cycle(coefficients, SIX_HOURS)
    assert harmonic_basis(start, 2).shape == (3, 4)


def test_a_seasonal_forecaster_learns_its_cycle_from_a_year_of_data_and_warm_starts_from_a_plain_one(tmp_path: Path) -> None:
    """Daily files over 14 months whose t2m has a 10 K annual cycle, antisymmetric about the equator."""
    times = pd.date_range("2000-01-01", "2001-02-28", freq="D")
    fields = make_fields(times)
    angle = 2 * np.pi * ((times - pd.Timestamp("2000-01-01")) / pd.Timedelta(days=365.25)).values
    season = 10.0 * np.sin(np.deg2rad(GRID.latitudes))[None, :, None] * np.cos(angle)[:, None, None]
    fields["t2m"] = fields["t2m"] + season.astype("float32")
    (tmp_path / "data").mkdir()
    write_file(tmp_path / "data" / "part-00.nc", fields, land_sea_mask())
    training = {**TINY_TRAINING, "max_steps": 2, "val_lead_hours": [24, 48], "calibration_lead_hours": 48,
                "train_period": {"start": "2000-01-01T00:00", "end": "2000-12-31T00:00"},
                "val_period": {"start": "2001-01-01T00:00", "end": "2001-02-28T00:00"}}
    model = {**TINY_MODEL, "kind": "dyffusion", "name": "plain", "dyffusion": {"horizon": 2}}
    data = {"run_dir": str(tmp_path / "run"), "source": {"kind": "files", "paths": [str(tmp_path / "data" / "*.nc")]},
            "grid": {"nlat": GRID.nlat, "nlon": GRID.nlon}, "channels": ["t2m", "msl", "u10m"], "static": ["lsm"],
            "time": {"start": "2000-01-01T00:00", "end": "2001-02-28T00:00", "step_hours": 24},
            "ingest": {"block_size": 40, "chunk_time": 4}, "dask": {"cluster": "threads", "n_workers": 1},
            "model": model, "training": training}
    plain = write_config(tmp_path / "plain.yaml", data)
    ingest(plain, progress=False)
    compute_statistics(plain)
    context = DistributedContext(0, 1, 0, torch.device("cpu"), None)
    for stage in ("interpolator", "forecaster"):
        Trainer(plain, 0, context, stage).fit()

    interpolator = tmp_path / "run" / "checkpoints" / "plain-interpolator" / "seed-0"
    seasonal = write_config(tmp_path / "seasonal.yaml", {
        **data, "model": {**model, "name": "seasonal", "dyffusion": {"horizon": 2, "seasonal_harmonics": 1,
                                                                      "interpolator_checkpoint": str(interpolator)}},
        "training": {**training, "init_from": {"model": "plain", "checkpoint": "last"}}})
    result = Trainer(seasonal, 0, context, "forecaster").fit()
    network, info = load_checkpoint(result.directory / LAST)
    assert info.hparams["seasonal_harmonics"] == 1
    cycle = network.forecaster.seasonal
    assert float(cycle.seasonal_step_seconds) == 86400.0

    # the stored cycle is the fit of the normalised training frames' zonal means, recomputed here from the store
    store = xr.open_zarr(tmp_path / "run" / "analysis.zarr").sel(time=slice("2000-01-01", "2000-12-31"))
    zonal = np.stack([((store[c] - m) / sd).mean("longitude").values for c, m, sd in
                      zip(info.channels, info.normalisation.mean, info.normalisation.std)], axis=1)
    seconds = (store.time.values.astype("datetime64[s]").astype(np.int64)).astype(np.float64)
    expected = fit_seasonal_cycle(torch.from_numpy(zonal), torch.from_numpy(seconds), 1).float()
    torch.testing.assert_close(cycle.seasonal_coefficients, expected, atol=1e-4, rtol=1e-4)
    amplitude = expected[0, :, 0].hypot(expected[0, :, 1]) * info.normalisation.std[0]  # t2m in K
    np.testing.assert_allclose(amplitude.numpy(), 10.0 * np.abs(np.sin(np.deg2rad(GRID.latitudes))), atol=0.3)

    # a rollout needs the valid times (its forecaster has no forcings, only the cycle)
    forecaster = Forecaster.from_checkpoint(result.directory / LAST)
    x0 = torch.from_numpy(np.stack([store[c].isel(time=0).values for c in info.channels]))[None]
    with pytest.raises(ValueError, match="needs the chain's start time|valid times"):
        list(forecaster.rollout(x0, 2))
    states = list(forecaster.rollout(x0, 4, time=np.datetime64("2000-01-01T00:00")))
    assert len(states) == 4 and all(torch.isfinite(s).all() for s in states)
