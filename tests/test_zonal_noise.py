"""Random zonal-mean profiles for training inputs (pipeline/training/zonal_noise.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import MyriadError
from pipeline.grid import Grid
from pipeline.training.config import TrainingConfig
from pipeline.training.zonal_noise import ZonalMeanNoise, zonal_profiles

GRID = Grid(33, 64)
CHANNELS = ["z500", "u500", "v500", "tp6h"]
STD = np.array([3000.0, 10.0, 2.5, 0.8])


def area_mean(values: np.ndarray) -> np.ndarray:
    weights = GRID.area_weights()
    return (values * weights).sum(axis=-1) / weights.sum()


@pytest.mark.parametrize("wind", [False, True])
def test_profiles_are_the_zonal_harmonics_of_degree_1_to_the_grids_limit_each_of_unit_rms(wind: bool) -> None:
    basis = zonal_profiles(GRID, wind)
    assert basis.shape == (16, GRID.nlat)  # degrees 1 .. (33 + 1) // 2 - 1
    np.testing.assert_allclose(area_mean(basis**2), 1.0, rtol=1e-12)
    gram = area_mean(basis[:, None] * basis[None, :])
    assert np.abs(gram - np.eye(16)).max() < 0.01  # orthogonal up to the grid's quadrature
    latitude = np.deg2rad(GRID.latitudes)
    # degree 1: sin(latitude) for a scalar (no global mean), cos(latitude) for a wind component
    expected = np.cos(latitude) if wind else np.sin(latitude)
    np.testing.assert_allclose(basis[0], expected / np.sqrt(area_mean(expected**2)), atol=1e-12)
    if wind:
        np.testing.assert_allclose(basis[:, [0, -1]], 0.0, atol=1e-12)  # a smooth wind's zonal mean at the poles
    else:
        assert np.abs(area_mean(basis)).max() < 0.01


def test_noise_has_the_configured_rms_in_physical_units_on_its_channels_only_and_no_longitude_structure() -> None:
    noise = ZonalMeanNoise(GRID, CHANNELS, STD, {"v500": 0.15, "z500": 30.0})
    states = torch.zeros(4000, len(CHANNELS), GRID.nlat, GRID.nlon)
    torch.manual_seed(0)
    drawn = noise.draw(states)
    assert drawn.shape == (4000, len(CHANNELS), GRID.nlat, 1)
    assert torch.equal(drawn[:, [1, 3]], torch.zeros_like(drawn[:, [1, 3]]))
    physical = drawn[..., 0].double().numpy() * STD[None, :, None]
    rms = np.sqrt(area_mean(physical**2).mean(axis=0))
    np.testing.assert_allclose(rms[[0, 2]], [30.0, 0.15], rtol=0.03)
    np.testing.assert_allclose(physical[:, 2, [0, -1]], 0.0, atol=1e-9)  # v500 vanishes at the poles
    assert abs(physical[:, 0, 0].mean()) < 3.0 and physical[:, 0, 0].std() > 10.0  # z500's may move there
    assert not torch.equal(noise.draw(states), drawn)  # a fresh draw per call


def test_no_amplitudes_no_noise_and_bad_amplitudes_are_named() -> None:
    assert not ZonalMeanNoise(GRID, CHANNELS, STD, {}).active
    assert not ZonalMeanNoise(GRID, CHANNELS, STD, {"v500": 0.0}).active
    with pytest.raises(MyriadError, match=r"training.zonal_mean_noise: \['v850'\] are not among"):
        ZonalMeanNoise(GRID, CHANNELS, STD, {"v850": 0.1})
    with pytest.raises(ValueError, match="zonal_mean_noise for 'v500' must be >= 0"):
        TrainingConfig(max_steps=1, zonal_mean_noise={"v500": -0.1})
    with pytest.raises(ValueError, match="channel_weights for 'v500' must be >= 0"):
        TrainingConfig(max_steps=1, channel_weights={"v500": -1.0})
