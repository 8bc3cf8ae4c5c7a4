"""The polar emphasis of the training loss (pipeline/training/polar_loss.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.grid import Grid
from pipeline.training.losses import SphericalAMSE, SphericalL1, SphericalMSE
from pipeline.training.polar_loss import PolarEmphasis, polar_rows, polar_term

GRID = Grid(33, 64)
WEIGHTS = np.array([1.0, 3.0])


def error_in_rows(rows: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random target and a prediction that differs from it only on ``rows`` (boolean, ``(nlat,)``)."""
    target = torch.randn(4, 2, GRID.nlat, GRID.nlon, generator=generator)
    error = torch.randn(4, 2, GRID.nlat, GRID.nlon, generator=generator) * torch.as_tensor(rows, dtype=torch.float32)[:, None]
    return target + error, target


def test_the_polar_rows_are_those_poleward_of_the_latitude_in_both_hemispheres() -> None:
    rows = polar_rows(GRID, 60.0)
    assert sorted(GRID.latitudes[rows == 1]) == pytest.approx([-90, -84.375, -78.75, -73.125, -67.5, -61.875,
                                                               61.875, 67.5, 73.125, 78.75, 84.375, 90])
    assert set(np.unique(rows)) == {0.0, 1.0}
    # their share of the sphere: the caps down to their cells' edge, midway to the next row (59.06 deg)
    share = (GRID.quadrature_weights() * rows[:, None]).sum()
    assert share == pytest.approx(1 - np.sin(np.deg2rad(59.0625)), rel=0.02)


@pytest.mark.parametrize("absolute", [False, True])
def test_an_error_in_the_polar_rows_counts_one_plus_beta_times_its_area_and_elsewhere_by_area(absolute: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    base = (SphericalL1 if absolute else SphericalMSE)(GRID, WEIGHTS)
    loss = PolarEmphasis(base, polar_term(GRID, 60.0, WEIGHTS, absolute), weight=4.0)
    polar = polar_rows(GRID, 60.0).astype(bool)
    prediction, target = error_in_rows(~polar, generator)
    assert loss(prediction, target).item() == pytest.approx(base(prediction, target).item(), rel=1e-6)
    prediction, target = error_in_rows(polar, generator)
    assert loss(prediction, target).item() == pytest.approx(5.0 * base(prediction, target).item(), rel=1e-5)
    # the same as scoring the polar rows' area five times over
    rows = np.where(polar, 5.0, 1.0)
    reweighted = (SphericalL1 if absolute else SphericalMSE)(GRID, WEIGHTS, row_weights=rows)
    mixed, target = error_in_rows(np.ones(GRID.nlat, dtype=bool), generator)
    assert loss(mixed, target).item() == pytest.approx(reweighted(mixed, target).item(), rel=1e-5)


def test_beside_the_adjusted_mse_the_polar_term_is_a_squared_error_with_the_channel_weights() -> None:
    generator = torch.Generator().manual_seed(1)
    base = SphericalAMSE(GRID, WEIGHTS)
    loss = PolarEmphasis(base, polar_term(GRID, 70.0, WEIGHTS, absolute=False), weight=2.0)
    prediction, target = error_in_rows(np.ones(GRID.nlat, dtype=bool), generator)
    rows = np.abs(GRID.latitudes) >= 70.0
    squared = (prediction - target).square() * torch.as_tensor(GRID.quadrature_weights() * rows[:, None], dtype=torch.float32)
    expected = base(prediction, target) + 2.0 * (squared.sum(dim=(-2, -1)) * torch.as_tensor(WEIGHTS, dtype=torch.float32)).mean()
    torch.testing.assert_close(loss(prediction, target), expected.float())
    prediction.requires_grad_(True)
    loss(prediction, target).backward()
    assert torch.isfinite(prediction.grad).all()
