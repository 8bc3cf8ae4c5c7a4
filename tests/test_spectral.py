"""The pair-layout transforms of models.spectral against torch-harmonics' RealSHT / InverseRealSHT."""

from __future__ import annotations

import pytest
import torch

import models.spectral as spectral
from models.spectral import BandLimit, SpectralAnalysis, SpectralSynthesis, complex_layout, pair_layout
from torch_harmonics import InverseRealSHT, RealSHT

torch.set_num_threads(1)

GRIDS = [
    (17, 32, "equiangular", 8, 8),
    (17, 32, "equiangular", 17, 17),  # the Nyquist order m = 16
    (9, 16, "legendre-gauss", 8, 8),
    (33, 64, "equiangular", 16, 16),
]


@pytest.fixture(params=[True, False], ids=["dense-dft", "fft"])
def dense(request, monkeypatch) -> bool:
    monkeypatch.setattr(spectral, "DENSE_DFT_MAX_NLON", 1024 if request.param else 0)
    return request.param


@pytest.mark.parametrize("nlat,nlon,grid,lmax,mmax", GRIDS)
def test_transforms_equal_torch_harmonics(dense: bool, nlat: int, nlon: int, grid: str, lmax: int, mmax: int) -> None:
    torch.manual_seed(0)
    sht = RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).float()
    isht = InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).float()
    analysis, synthesis = SpectralAnalysis(sht), SpectralSynthesis(isht)
    assert analysis.dense == synthesis.dense == dense
    x = torch.randn(2, 3, nlat, nlon)
    coefficients = analysis(x)
    assert coefficients.shape == (mmax, 2, 2, 3, lmax)
    torch.testing.assert_close(complex_layout(coefficients), sht(x), rtol=1e-5, atol=1e-6)
    # arbitrary coefficients, imaginary parts of m = 0 (and Nyquist) included: dropped alike
    a = torch.randn(2, 3, lmax, mmax, dtype=torch.complex64)
    torch.testing.assert_close(synthesis(pair_layout(a)), isht(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(BandLimit(sht, isht)(x), isht(sht(x)), rtol=1e-5, atol=1e-5)


def test_layouts_round_trip() -> None:
    a = torch.randn(2, 3, 5, 4, dtype=torch.complex64)
    assert pair_layout(a).shape == (4, 2, 2, 3, 5)
    assert torch.equal(complex_layout(pair_layout(a)), a)
