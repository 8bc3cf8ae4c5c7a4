"""The seasonal cycle of a forecaster that works on departures from it (models/seasonal.py)."""

from __future__ import annotations

import math

import pytest
import torch

from models.dyffusion import DYffusionForecaster
from models.forcings import EPOCH_2000, YEAR_SECONDS
from models.seasonal import SeasonalCycle, fit_seasonal_cycle, harmonic_basis

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
