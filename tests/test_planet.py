"""The embedded shallow-water planet: dynamics, climate, determinism, resume, interface.

The climate tests share one 5-year run on a coarse 17x32 grid (dt = 30 min,
stirring band moved inside the grid's truncation, degrees 0..8), read through
the real :class:`PlanetSource` in yearly blocks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from pipeline.config import MyriadConfig, PlanetSourceConfig, config_from_dict
from pipeline.data.sources.canonical import validate_block
from pipeline.data.sources.planet import PLANET_CHANNELS, PlanetSource, build_planet_source, global_budgets, state_fingerprint
from pipeline.data.sources.planet_budget import balanced_geopotential_flux, equilibrium_zonal_geopotential, mean_seasonal_factor
from pipeline.data.sources.planet_dynamics import SpectralShallowWater
from pipeline.data.sources.planet_simulation import simulation_context
from pipeline.errors import MyriadError
from pipeline.grid import EARTH_RADIUS_M, Grid

COARSE_SOURCE = {"kind": "planet", "dt_seconds": 1800, "stirring_lmin": 3, "stirring_lmax": 7}
ALL_CHANNELS = list(PLANET_CHANNELS)
BUDGET_CLOSURE = 0.1
"""Largest RMS residual of the steady zonal mass budget over five years, as a fraction of the flux's RMS."""


def planet_config(tmp_path: Path, start: str = "2000-01-01T00:00", end: str = "2000-01-06T18:00", *,
                  channels: list[str] | None = None, grid: tuple[int, int] = (17, 32), **source: object) -> MyriadConfig:
    return config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "source": {**COARSE_SOURCE, "spinup_days": 2, **source},
            "grid": {"nlat": grid[0], "nlon": grid[1]},
            "channels": channels or ALL_CHANNELS,
            "time": {"start": start, "end": end, "step_hours": 6},
        }
    )


def assert_identical(a: xr.Dataset, b: xr.Dataset) -> None:
    assert list(a.data_vars) == list(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a["time"].equals(b["time"])


# --------------------------------------------------------------------------- dynamics


@pytest.mark.parametrize("nlat,nlon", [(17, 32), (33, 64)])
def test_fast_tendency_equals_torch_harmonics_solver(nlat: int, nlon: int) -> None:
    solver = SpectralShallowWater(nlat, nlon, dt=600.0, mean_depth=8000.0)
    torch.manual_seed(1)
    uspec = solver.random_initial_condition(mach=0.2)
    uspec[..., 0] = uspec[..., 0].real.to(uspec.dtype)  # a real field has real m = 0 coefficients
    state = solver.to_real(uspec)
    assert torch.equal(solver.to_complex(state), uspec)

    tendency, grid = solver.tendency(state)

    reference = solver.to_real(solver.dudtspec(uspec))
    assert (tendency - reference).abs().max() <= 1e-12 * reference.abs().max()
    reference_grid = torch.cat((solver.spec2grid(uspec), solver.getuv(uspec[1:]))).permute(2, 0, 1)
    assert (grid - reference_grid).abs().max() <= 1e-12 * reference_grid.abs().max()


def test_global_mean_depth_is_conserved_to_the_bit(tmp_path: Path) -> None:
    simulation = PlanetSource(planet_config(tmp_path), None).simulation
    initial = simulation.spectral[0, 0, 0].item()
    with simulation_context():
        simulation.advance(8)
    assert simulation.spectral[0, 0, 0].item() == initial
    assert simulation.spectral[:, :, 1:].abs().max() > 0  # the flow did evolve


# --------------------------------------------------------------------------- climate (one 5-year run)


@pytest.fixture(scope="module")
def climate(tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    config = planet_config(tmp_path_factory.mktemp("climate"), "2000-01-01T00:00", "2004-12-31T18:00", spinup_days=30)
    source = PlanetSource(config, state_dir=None)
    times = source.available_times()
    years = [source.read_block(times[times.year == year]) for year in range(2000, 2005)]
    return xr.concat(years, dim="time")


@pytest.mark.slow
def test_energy_is_stationary_over_five_years(climate: xr.Dataset) -> None:
    energy = global_budgets(climate)["energy"]
    yearly = energy.groupby("time.year").mean().values
    assert len(yearly) == 5
    drift = (yearly.max() - yearly.min()) / yearly.mean()
    assert drift < 0.05, f"yearly-mean energy {yearly} drifts by {drift:.1%}"


@pytest.mark.slow
def test_mass_is_conserved(climate: xr.Dataset) -> None:
    mass = global_budgets(climate)["mass"].values
    assert np.abs(mass / mass[0] - 1.0).max() < 1e-6


@pytest.mark.slow
def test_nothing_is_nan_and_the_flow_is_earth_like(climate: xr.Dataset) -> None:
    for name in climate.data_vars:
        assert np.isfinite(climate[name].values).all(), name
    assert 20.0 < float(np.abs(climate["u500"]).max()) < 150.0
    vorticity_rms = float(np.sqrt((climate["vo500"] ** 2).mean()))
    assert 2e-6 < vorticity_rms < 1e-4
    # westerly jets in both hemispheres' mid-latitudes (row 4 is 45N, row 12 is 45S)
    zonal_mean_u = climate["u500"].mean(("time", "longitude"))
    assert float(zonal_mean_u.sel(latitude=45.0)) > 5.0
    assert float(zonal_mean_u.sel(latitude=-45.0)) > 5.0
    # eddies: the fields are not zonally symmetric
    assert float(climate["z500"].std("longitude").mean()) > 100.0


@pytest.mark.slow
def test_seasonal_cycle_in_zonal_mean_geopotential(climate: xr.Dataset) -> None:
    weights = xr.DataArray(Grid(17, 32).area_weights(), dims="latitude", coords={"latitude": climate["latitude"]})
    z = climate["z500"].mean("longitude")
    north = z.where(z.latitude > 0).weighted(weights).mean("latitude")
    south = z.where(z.latitude < 0).weighted(weights).mean("latitude")
    contrast = (north - south).groupby("time.month").mean()
    january, july = float(contrast.sel(month=1)), float(contrast.sel(month=7))
    assert january < 0.0 < july, "the summer hemisphere's layer must be the deeper one"
    assert july - january > 5000.0, f"seasonal swing {july - january:.0f} m2 s-2 is too weak"
    # the winter hemisphere's jet is the stronger one
    assert strongest_jet(climate, month=1, north=True) > strongest_jet(climate, month=7, north=True)
    assert strongest_jet(climate, month=7, north=False) > strongest_jet(climate, month=1, north=False)


def strongest_jet(climate: xr.Dataset, month: int, north: bool) -> float:
    """Maximum over one hemisphere's latitudes of the monthly-mean zonal-mean u500."""
    u = climate["u500"].sel(time=climate.time.dt.month == month).mean(("time", "longitude"))
    return float(u.where(u.latitude > 0 if north else u.latitude < 0).max())


@pytest.mark.slow
def test_rain_is_non_negative_and_heavy_tailed(climate: xr.Dataset) -> None:
    rain = climate["tp6h"].values.astype(np.float64).ravel()
    assert rain.min() >= 0.0
    assert 0.1 < rain.mean() < 3.0, "a few mm per day on global average"
    assert np.percentile(rain, 99.9) / np.median(rain) > 10.0
    excess_kurtosis = ((rain - rain.mean()) ** 4).mean() / rain.var() ** 2 - 3.0
    assert excess_kurtosis > 2.0
    assert climate["tp6h"].attrs["units"] == "kg m-2"
    assert climate["tp6h"].attrs["standard_name"] == "precipitation_amount"


@pytest.mark.slow
def test_five_years_close_the_steady_zonal_mass_budget(climate: xr.Dataset) -> None:
    """The time-mean northward geopotential flux [z500 v500] is the one the relaxation of [z500] implies."""
    source = PlanetSourceConfig(**COARSE_SOURCE)
    latitudes = climate["latitude"].values
    zonal_geopotential = climate["z500"].astype(np.float64).mean(("time", "longitude")).values
    flux = (climate["z500"].astype(np.float64) * climate["v500"]).mean(("time", "longitude")).values
    equilibrium = equilibrium_zonal_geopotential(latitudes, source, mean_seasonal_factor(climate["time"].values, source.year_days))
    balanced = balanced_geopotential_flux(zonal_geopotential, equilibrium, latitudes, source.relaxation_days)
    weights = Grid(17, 32).area_weights()

    def rms(profile: np.ndarray) -> float:
        return float(np.sqrt(np.average(profile**2, weights=weights)))

    assert rms(flux) > 5_000.0, "the planet has a mean meridional circulation"
    assert rms(balanced - flux) < BUDGET_CLOSURE * rms(flux), f"residual {rms(balanced - flux):.0f} of {rms(flux):.0f} m3 s-3"
    # an equilibrium a tenth steeper than the planet's does not close it
    steeper = balanced_geopotential_flux(zonal_geopotential, 1.1 * equilibrium, latitudes, source.relaxation_days)
    assert rms(steeper - flux) > 2 * BUDGET_CLOSURE * rms(flux)


def test_balanced_flux_inverts_the_zonal_mass_budget() -> None:
    """For [Phi v] = V sin(phi) cos(phi), the budget's departure is D = -(tau a^-1) V (1 - 3 sin^2 phi)."""
    latitudes = Grid(33, 64).latitudes
    sin_lat, cos_lat = np.sin(np.deg2rad(latitudes)), np.cos(np.deg2rad(latitudes))
    tau, speed = 3.0 * 86_400.0, 8.0e4
    departure = -(tau / EARTH_RADIUS_M) * speed * (1.0 - 3.0 * sin_lat**2)
    equilibrium = np.full_like(latitudes, 123.0)  # the global mean of [Phi] - [Phi_eq] plays no part
    balanced = balanced_geopotential_flux(departure + equilibrium + 7.0, equilibrium, latitudes, 3.0)
    np.testing.assert_allclose(balanced, speed * sin_lat * cos_lat, atol=0.002 * speed)
    assert balanced[0] == balanced[-1] == 0.0  # pole rows
    np.testing.assert_allclose(balanced_geopotential_flux(departure[::-1], 0.0 * latitudes, latitudes[::-1], 3.0), balanced[::-1],
                               atol=1e-9 * speed)


# --------------------------------------------------------------------------- interface


def test_block_is_canonical(tmp_path: Path) -> None:
    config = planet_config(tmp_path)
    source = build_planet_source(config, tmp_path / "state")
    assert (source.name, source.sequential, source.network) == ("planet", True, False)
    times = source.available_times()
    assert len(times) == 24 and times[0] == pd.Timestamp("2000-01-01") and times.dtype == "datetime64[ns]"

    block = source.read_block(times[:5])

    grid = Grid(17, 32)
    validate_block(block, grid, config.channels, "planet block", times[:5])
    np.testing.assert_array_equal(block["latitude"].values, grid.latitudes)
    np.testing.assert_array_equal(block["longitude"].values, grid.longitudes)
    for name in config.channels:
        assert block[name].dims == ("time", "latitude", "longitude")
        assert block[name].dtype == np.float32
        assert {"units", "long_name", "standard_name"} <= set(block[name].attrs)
    assert block["z500"].attrs["units"] == "m2 s-2" and block["u500"].attrs["units"] == "m s-1"
    assert block["vo500"].attrs["units"] == "s-1" and block["z500"].attrs["level"] == 500
    # one value per pole for scalars
    assert (block["z500"].isel(latitude=[0, -1]).std("longitude") == 0).all()
    assert len(source.static_fields().data_vars) == 0


def test_subset_of_channels(tmp_path: Path) -> None:
    full = PlanetSource(planet_config(tmp_path), None)
    subset = PlanetSource(planet_config(tmp_path, channels=["tp6h", "z500"]), None)
    times = full.available_times()[:3]
    a, b = full.read_block(times), subset.read_block(times)
    assert list(b.data_vars) == ["tp6h", "z500"]
    assert_identical(a[["tp6h", "z500"]], b)


def test_same_seed_same_bits_other_seed_other_fields(tmp_path: Path) -> None:
    times = pd.date_range("2000-01-02", periods=4, freq="6h")
    first = PlanetSource(planet_config(tmp_path, seed=7), None).read_block(times)
    again = PlanetSource(planet_config(tmp_path, seed=7), None).read_block(times)
    other = PlanetSource(planet_config(tmp_path, seed=8), None).read_block(times)
    assert_identical(first, again)
    for name in ("vo500", "u500", "tp6h"):
        assert not np.allclose(first[name].values, other[name].values), name


def test_resume_from_saved_state_is_bitwise_identical(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = planet_config(tmp_path)
    state_dir = tmp_path / "state"
    times = PlanetSource(config, None).available_times()
    blocks = [times[i : i + 8] for i in range(0, 24, 8)]
    uninterrupted = PlanetSource(config, state_dir)
    expected = [uninterrupted.read_block(block) for block in blocks]

    saved = sorted((state_dir / state_fingerprint(config)).iterdir())
    assert [p.name for p in saved] == ["20000102T180000.pt", "20000104T180000.pt", "20000106T180000.pt"]
    assert not list(state_dir.rglob("*.tmp"))

    with caplog.at_level(logging.INFO, logger="pipeline.data.sources.planet"):
        resumed = PlanetSource(config, state_dir).read_block(blocks[2])  # a fresh "process"
    assert "resumed from the saved state of 2000-01-04 18:00" in caplog.text
    assert_identical(resumed, expected[2])

    # going back in time on the same instance, and a damaged newest state, still give the same bits
    assert_identical(uninterrupted.read_block(blocks[1]), expected[1])
    saved[1].write_bytes(saved[1].read_bytes()[:100])
    assert_identical(PlanetSource(config, state_dir).read_block(blocks[2]), expected[2])


def test_without_state_cache_nothing_is_written(tmp_path: Path) -> None:
    config = planet_config(tmp_path, state_cache=False)
    source = PlanetSource(config, tmp_path / "state")
    source.read_block(source.available_times()[:2])
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"channels": ["z500", "t850"]}, "the planet has no channel 't850' (it provides z500, u500, v500, vo500, d500, tp6h)"),
        ({"static": ["lsm"]}, "static: the planet has no static fields"),
        ({"source": {"dt_seconds": 700}}, "source.dt_seconds (700) must divide the output step"),
        ({"source": {"stirring_lmax": 12}}, "source.stirring_lmax (12) exceeds the spectral truncation of the 17x32 grid"),
        ({"time": {"step_hours": 3}}, "'tp6h' accumulates over 6 h but time.step_hours is 3"),
    ],
)
def test_configuration_errors(tmp_path: Path, change: dict, message: str) -> None:
    raw = planet_config(tmp_path).model_dump(mode="json")
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(MyriadError) as error:
        PlanetSource(config_from_dict(raw), None)
    assert message in str(error.value)


def test_times_off_the_axis_or_with_gaps_are_refused(tmp_path: Path) -> None:
    source = PlanetSource(planet_config(tmp_path), None)
    times = source.available_times()
    with pytest.raises(MyriadError, match="is not on the configured axis"):
        source.read_block(pd.DatetimeIndex([pd.Timestamp("1999-12-31T18:00")]))
    with pytest.raises(MyriadError, match="not consecutive"):
        source.read_block(times[[0, 2]])
