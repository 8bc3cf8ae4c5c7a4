"""The wind pairs' loss on their rotational and divergent parts (pipeline/training/wind_loss.py).

Winds are synthesised from known vector spherical harmonic coefficients with
torch-harmonics' inverse vector transform, so each part's kinetic energy is
known on the grid independently of the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_harmonics import InverseRealVectorSHT

from pipeline.grid import Grid
from pipeline.training.losses import SphericalAMSE, SphericalMSE, channel_weight_vector
from pipeline.training.normalisation import Normalisation
from pipeline.training.wind_loss import HelmholtzWindLoss, WindPotentials, helmholtz_channel_weights

GRID = Grid(33, 64)
CHANNELS = ["z500", "u500", "v500"]
PAIRS = [(1, 2)]
NORMALISATION = Normalisation(tuple(CHANNELS), np.array([5e4, 10.0, 0.0]), np.array([3e3, 15.0, 5.0]))
L = (GRID.nlat + 1) // 2


def band_limited_wind(part: str, generator: torch.Generator, batch: int = 3) -> torch.Tensor:
    """Winds ``(batch, 2, nlat, nlon)`` (u, v in m/s) of one part only, degrees 1..L-1, random coefficients."""
    coefficients = torch.zeros(batch, 2, L, L, dtype=torch.complex128)
    values = torch.randn(batch, L, L, 2, generator=generator, dtype=torch.float64)
    degree, order = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    kept = (order <= degree) & (degree >= 1)
    values[..., 0, 1] = 0.0  # order 0 is real
    coefficients[:, 0 if part == "divergent" else 1] = torch.view_as_complex(values) * kept
    colatitude_longitude = InverseRealVectorSHT(GRID.nlat, GRID.nlon, lmax=L, mmax=L, grid="equiangular").double()(coefficients)
    return torch.stack([colatitude_longitude[:, 1], -colatitude_longitude[:, 0]], dim=1)


def normalised_fields(wind: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(batch, 3, nlat, nlon)`` normalised fields: random z500 and the given physical winds."""
    z = torch.randn(wind.shape[0], 1, GRID.nlat, GRID.nlon, generator=generator, dtype=torch.float64)
    physical = torch.cat([z * 3e3 + 5e4, wind], dim=1)
    return NORMALISATION.normalise(physical).float()


def area_mean(field: torch.Tensor) -> torch.Tensor:
    return (field * torch.as_tensor(GRID.quadrature_weights(), dtype=field.dtype)).sum(dim=(-2, -1))


@pytest.mark.parametrize("part", ["rotational", "divergent"])
def test_each_potential_carries_its_parts_kinetic_energy_and_nothing_of_the_other(part: str) -> None:
    generator = torch.Generator().manual_seed(3)
    wind = band_limited_wind(part, generator)
    potentials = WindPotentials(GRID, PAIRS, NORMALISATION)(normalised_fields(wind, generator))
    energy = area_mean(wind.square().sum(dim=1))
    own, other = (1, 2) if part == "rotational" else (2, 1)
    torch.testing.assert_close(area_mean(potentials[:, own].double().square()), energy, rtol=0.02, atol=0.0)
    assert float(area_mean(potentials[:, other].double().square()).max()) < 1e-6 * float(energy.min())
    if part == "rotational":  # the zonal-mean v is the divergent wind's alone
        assert float(wind[:, 1].mean(dim=-1).abs().max()) < 1e-10 * float(wind.abs().max())


def test_z500_passes_through_unchanged() -> None:
    generator = torch.Generator().manual_seed(4)
    fields = normalised_fields(band_limited_wind("rotational", generator), generator)
    torch.testing.assert_close(WindPotentials(GRID, PAIRS, NORMALISATION)(fields)[:, 0], fields[:, 0])


@pytest.mark.parametrize("loss_class", [SphericalMSE, SphericalAMSE])
def test_a_divergent_error_is_scored_in_the_divergent_slot_by_the_divergent_scale(loss_class: type[SphericalMSE]) -> None:
    generator = torch.Generator().manual_seed(5)
    target_wind = band_limited_wind("rotational", generator) + 0.01 * band_limited_wind("divergent", generator)
    error = 0.002 * band_limited_wind("divergent", generator)  # tiny next to the rotational wind
    target = normalised_fields(target_wind, generator)
    prediction = target.clone()
    prediction[:, 1:] += (error / torch.as_tensor(NORMALISATION.std[1:], dtype=torch.float64)[:, None, None]).float()
    scales = np.array([[0.5, 0.01]])
    units = np.array([0.01, 0.04, 0.05])  # tendency std / std per channel
    weights = {"v500": 3.0}
    loss = HelmholtzWindLoss(loss_class(GRID, helmholtz_channel_weights(CHANNELS, weights, PAIRS, units)),
                             WindPotentials(GRID, PAIRS, NORMALISATION, scales))
    per_channel = loss.per_channel(prediction, target).double()
    expected = area_mean(error.square().sum(dim=1)) / scales[0, 1] ** 2
    torch.testing.assert_close(per_channel[:, 2], expected, rtol=0.05, atol=0.0)
    assert float(per_channel[:, 1].max()) < 1e-3 * float(expected.min())  # the rotational slot sees nothing
    # both slots carry the pair's mean weight, unit 1; z500 keeps its own
    vector = helmholtz_channel_weights(CHANNELS, weights, PAIRS, units)
    np.testing.assert_allclose(vector, np.array([1.0, 2.0, 2.0]) * 3 / 5 / np.array([units[0] ** 2, 1.0, 1.0]))
    tenth = helmholtz_channel_weights(CHANNELS, weights, PAIRS, units, divergent_weight=0.1)
    np.testing.assert_allclose(tenth, vector * np.array([1.0, 1.0, 0.1]))  # training.divergent_wind_weight
    # scored as components, the same error weighs (0.002 / 0.01 x divergent over total wind)^2 less
    components = loss_class(GRID, channel_weight_vector(CHANNELS, weights, units))
    assert float((components(prediction, target))) < 0.01 * float(loss(prediction, target))


def test_scales_must_be_finite_and_positive() -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        WindPotentials(GRID, PAIRS, NORMALISATION, np.array([[0.5, 0.0]]))
