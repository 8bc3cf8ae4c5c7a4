"""The planet's zonal mass budget enforced on a state (:mod:`pipeline.ensemble.mass_budget`).

On a short record of the real planet at the quickstart's resolution (33 x 64, 10-minute
steps, 30 days of spin-up: about 5 s): the planet satisfies its own budget, the correction
closes it exactly by moving the zonal-mean meridional wind alone, and a wrong zonal-mean
meridional wind is put back. The ensemble with the correction is tested in
tests/test_dyffusion_pipeline.py.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from models.forcings import posix_seconds
from pipeline.config import MyriadConfig, config_from_dict
from pipeline.data.sources.planet import PlanetSource
from pipeline.ensemble.mass_budget import MassBudgetCorrection
from pipeline.training.normalisation import Normalisation

CHANNELS = ("z500", "u500", "v500")
NORMALISATION = Normalisation(CHANNELS, np.array([7.8e4, 5.0, 0.0]), np.array([2.0e3, 10.0, 4.0]))
"""Any affine normalisation: the correction works in physical units."""


@pytest.fixture(scope="module")
def planet(tmp_path_factory: pytest.TempPathFactory) -> tuple[MyriadConfig, xr.Dataset]:
    config = config_from_dict({
        "run_dir": str(tmp_path_factory.mktemp("budget") / "run"),
        "source": {"kind": "planet", "dt_seconds": 600, "spinup_days": 30},
        "grid": {"nlat": 33, "nlon": 64}, "channels": list(CHANNELS),
        "time": {"start": "2000-01-01T00:00", "end": "2000-01-05T00:00", "step_hours": 6}})
    record = PlanetSource(config, None).read_block(pd.date_range("2000-01-01", "2000-01-05", freq="6h"))
    return config, record


def test_the_planet_keeps_its_budget_and_the_correction_closes_it_with_the_meridional_wind_alone(
        planet: tuple[MyriadConfig, xr.Dataset]) -> None:
    config, record = planet
    physical = torch.from_numpy(np.stack([record[c].values for c in CHANNELS], axis=1).astype(np.float64))
    states = NORMALISATION.normalise(physical)
    seconds = posix_seconds(record["time"].values, record.sizes["time"])
    correction = MassBudgetCorrection(config.source, CHANNELS, NORMALISATION, record["latitude"].values, 21600.0)
    z, v = physical[:, 0].numpy(), physical[:, 2].numpy()
    before = correction.residual(z[:-1], z[1:], v[1:], seconds[1:].numpy())

    corrected = correction(states[:-1], states[1:], seconds[1:])
    after = NORMALISATION.denormalise(corrected).numpy()
    # the planet's own 6-hourly record closes its budget to a few hundredths of its zonal-mean meridional wind
    zonal_wind_rms = float(np.sqrt(np.mean(v.mean(-1) ** 2)))
    assert correction.steps == 1 and correction.shift_rms < 0.05 * zonal_wind_rms
    np.testing.assert_allclose(correction.shift_rms, np.sqrt(np.mean(before**2)), rtol=1e-12)
    shift = after[:, 2] - v[1:]
    np.testing.assert_allclose(shift, np.broadcast_to(-before[:, :, None], shift.shape), rtol=0, atol=1e-9)
    assert torch.equal(corrected[:, :2], states[1:, :2])  # z500 and u500 untouched
    np.testing.assert_allclose(correction.residual(z[:-1], after[:, 0], after[:, 2], seconds[1:].numpy()), 0.0,
                               atol=1e-9)

    # a tilted zonal-mean meridional wind, 1 m/s sin(latitude) off, is put back where the budget wants it
    tilted = states[1:].clone()
    tilted[:, 2] += torch.from_numpy(np.sin(np.deg2rad(record["latitude"].values))[:, None]) / NORMALISATION.std[2]
    torch.testing.assert_close(correction(states[:-1], tilted, seconds[1:]), corrected, rtol=0, atol=1e-9)
    # a state sampled as the planet's but valid half a year later misses the budget of that season
    late = correction.residual(z[:-1], z[1:], v[1:], seconds[1:].numpy() + 0.5 * 365.25 * 86400.0)
    assert np.sqrt(np.mean(late**2)) > 5 * np.sqrt(np.mean(before**2))


def test_the_correction_needs_the_budgets_channels(planet: tuple[MyriadConfig, xr.Dataset]) -> None:
    config, record = planet
    with pytest.raises(ValueError, match=r"needs the channels \['z500', 'v500'\]; the model lacks \['v500'\]"):
        MassBudgetCorrection(config.source, ("z500", "u500"), NORMALISATION, record["latitude"].values, 21600.0)
