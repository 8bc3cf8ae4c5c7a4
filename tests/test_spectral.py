"""The pair-layout transforms of models.spectral against torch-harmonics' RealSHT / InverseRealSHT; the vector band limit."""

from __future__ import annotations

import math

import pytest
import torch

import models.spectral as spectral
from models.spectral import BandLimit, SpectralAnalysis, SpectralSynthesis, VectorBandLimit, complex_layout, pair_layout
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


def solid_body_rotation(axis: tuple[float, float, float], nlat: int, nlon: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Eastward and northward components of :math:`\boldsymbol\omega \times \mathbf r` on the unit sphere (degree 1 streamfunction)."""
    lat = torch.linspace(math.pi / 2, -math.pi / 2, nlat, dtype=torch.float64)
    lon = torch.arange(nlon, dtype=torch.float64) * 2 * math.pi / nlon
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    r = torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], dim=-1)
    velocity = torch.cross(torch.tensor(axis, dtype=torch.float64).expand_as(r), r, dim=-1)
    east = torch.stack([-torch.sin(lon), torch.cos(lon), torch.zeros_like(lon)], dim=-1)
    north = torch.stack([-torch.sin(lat) * torch.cos(lon), -torch.sin(lat) * torch.sin(lon), torch.cos(lat)], dim=-1)
    return (velocity * east).sum(-1).float(), (velocity * north).sum(-1).float()


def test_vector_band_limit_keeps_winds_across_the_pole_that_scalar_projection_breaks() -> None:
    """A solid-body wind over the pole (u, v ~ cos, sin of longitude on the pole row) is a vector harmonic of degree 1:
    the vector projection keeps it, the scalar projection of each component cannot (its pole row is constant)."""
    nlat, nlon, truncation = 33, 64, 16
    vector = VectorBandLimit(nlat, nlon, truncation, truncation)
    scalar = BandLimit(RealSHT(nlat, nlon, lmax=truncation, mmax=truncation).float(),
                       InverseRealSHT(nlat, nlon, lmax=truncation, mmax=truncation).float())
    for axis in ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.3, -0.8, 0.5)):
        u, v = solid_body_rotation(axis, nlat, nlon)
        pu, pv = vector(u, v)
        torch.testing.assert_close(pu, u, rtol=0, atol=1e-5)
        torch.testing.assert_close(pv, v, rtol=0, atol=1e-5)
    u, v = solid_body_rotation((1.0, 0.0, 0.0), nlat, nlon)
    assert float((scalar(u) - u)[0].abs().max()) > 0.5  # pole row: u = -cos(lon), scalar projection flattens it


def test_vector_band_limit_is_a_projection_with_a_polar_wind_of_order_one() -> None:
    """On any field: idempotent; each pole row's wind is a cos/sin of longitude with zero mean; the two components
    rotate into each other (a field turned by 90 degrees projects to the projection turned by 90 degrees)."""
    torch.manual_seed(0)
    nlat, nlon = 33, 64
    projection = VectorBandLimit(nlat, nlon, 16, 16)
    u, v = torch.randn(2, 3, nlat, nlon).unbind(0)
    pu, pv = projection(u, v)
    ppu, ppv = projection(pu, pv)
    torch.testing.assert_close(ppu, pu, rtol=0, atol=1e-4)
    torch.testing.assert_close(ppv, pv, rtol=0, atol=1e-4)
    for row, hemisphere in ((0, 1.0), (-1, -1.0)):
        cos_sin = {}
        for name, component in (("u", pu[:, row]), ("v", pv[:, row])):
            spectrum = torch.fft.rfft(component, dim=-1)
            assert float(spectrum[:, 0].abs().max()) < 1e-4 * nlon
            assert float(spectrum[:, 2:].abs().max()) < 1e-4 * nlon
            cos_sin[name] = (2 * spectrum[:, 1].real / nlon, -2 * spectrum[:, 1].imag / nlon)
        # one horizontal vector W at the pole seen from each meridian: u = -Wx sin + Wy cos and
        # v = -/+ (Wx cos + Wy sin) at the North / South Pole, so v's cos and sin coefficients
        # are +/- u's sin and -/+ u's cos
        (u_cos, u_sin), (v_cos, v_sin) = cos_sin["u"], cos_sin["v"]
        assert float(u_cos.abs().max()) > 1e-2
        torch.testing.assert_close(v_cos, hemisphere * u_sin, rtol=0, atol=1e-4)
        torch.testing.assert_close(v_sin, -hemisphere * u_cos, rtol=0, atol=1e-4)
    turned_u, turned_v = projection(-v, u)
    torch.testing.assert_close(turned_u, -pv, rtol=0, atol=1e-4)
    torch.testing.assert_close(turned_v, pu, rtol=0, atol=1e-4)
