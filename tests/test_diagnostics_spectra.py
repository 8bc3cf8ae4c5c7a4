"""Angular and zonal power spectra: Parseval, single harmonics, laziness."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import torch
import xarray as xr
from torch_harmonics import InverseRealSHT
from torch_harmonics.quadrature import precompute_latitudes

from pipeline.diagnostics.regions import area_mean
from pipeline.diagnostics.spectra import WB2_EARTH_RADIUS_M, default_lmax, power_spectrum, zonal_energy_spectrum

NLAT, NLON = 33, 64


def _refuse(*args, **kwargs):
    raise AssertionError("a spectrum computed eagerly")


def _grid_da(values: np.ndarray, extra: tuple[str, ...] = ()) -> xr.DataArray:
    dims = extra + ("latitude", "longitude")
    coords = {"latitude": np.linspace(90, -90, NLAT), "longitude": np.arange(NLON) * 360.0 / NLON}
    return xr.DataArray(values, dims=dims, coords=coords, name="z500")


def _band_limited(rng: np.random.Generator, n: int, lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Random fields with degrees < lmax and the expected P(l) from their coefficients."""
    coeffs = rng.normal(size=(n, lmax, lmax)) + 1j * rng.normal(size=(n, lmax, lmax))
    coeffs[..., 0] = coeffs[..., 0].real  # m = 0 is real for a real field
    coeffs *= np.tril(np.ones((lmax, lmax)))  # m <= l
    isht = InverseRealSHT(NLAT, NLON, lmax=lmax, mmax=lmax, grid="equiangular", norm="ortho").to(torch.float64)
    fields = isht(torch.from_numpy(coeffs)).numpy()
    w = np.full(lmax, 2.0)
    w[0] = 1.0
    expected = (np.abs(coeffs) ** 2 @ w) / (4 * np.pi)
    return fields, expected


def _lat_lon() -> tuple[np.ndarray, np.ndarray]:
    lat = np.deg2rad(np.linspace(90, -90, NLAT))[:, None]
    lon = np.deg2rad(np.arange(NLON) * 360.0 / NLON)[None, :]
    return lat, lon


def test_power_spectrum_parseval_against_sht_quadrature() -> None:
    rng = np.random.default_rng(0)
    lmax = default_lmax(NLAT)
    fields, expected = _band_limited(rng, 3, lmax)
    spec = power_spectrum(_grid_da(fields, ("member",)))
    assert spec.dims == ("member", "wavenumber") and spec.sizes["wavenumber"] == lmax
    np.testing.assert_allclose(spec.values, expected, rtol=1e-10, atol=1e-14)
    # sum_l P(l) == sum_j q_j mean_k f^2 with the SHT's own Clenshaw-Curtis weights (sum q = 1)
    q = precompute_latitudes(NLAT, grid="equiangular")[1].numpy() / 2.0
    assert q.sum() == pytest.approx(1.0)
    mean_sq = (fields**2).mean(axis=-1) @ q
    np.testing.assert_allclose(spec.sum("wavenumber").values, mean_sq, rtol=1e-10)
    # against the cell-area weights it is only a quadrature approximation
    np.testing.assert_allclose(spec.sum("wavenumber").values,
                               area_mean(_grid_da(fields, ("member",)) ** 2).values, rtol=2e-2)


def test_single_harmonics_put_all_power_in_their_degree() -> None:
    lat, lon = _lat_lon()
    cases = {
        # (field, degree, mean square over the sphere)
        "constant": (np.full((NLAT, NLON), 3.0), 0, 9.0),
        "l1m1": (np.cos(lat) * np.cos(lon) + 0 * lon, 1, 1 / 3),
        "l2m0": ((3 * np.sin(lat) ** 2 - 1) / 2 + 0 * lon, 2, 1 / 5),
        "l3m2": (np.cos(lat) ** 2 * np.sin(lat) * np.sin(2 * lon), 3, 4 / 105),
    }
    for name, (field, degree, mean_sq) in cases.items():
        spec = power_spectrum(_grid_da(field)).values
        assert spec[degree] == pytest.approx(mean_sq, rel=1e-10), name
        others = np.delete(spec, degree)
        assert np.all(np.abs(others) < 1e-12 * mean_sq + 1e-20), name


def test_power_spectrum_lazy_member_blocks_and_ascending_latitude() -> None:
    rng = np.random.default_rng(1)
    fields, expected = _band_limited(rng, 4, default_lmax(NLAT))
    da = _grid_da(fields, ("member",))
    with dask.config.set(scheduler=_refuse):  # building the graph computes nothing
        lazy = power_spectrum(da.chunk({"member": 2, "latitude": 11}))  # grid split: rechunked to full grids
        assert zonal_energy_spectrum(da.chunk({"member": 2})).chunks is not None
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, expected, rtol=1e-10, atol=1e-14)
    flipped = da.isel(latitude=slice(None, None, -1))
    np.testing.assert_allclose(power_spectrum(flipped).values, expected, rtol=1e-10, atol=1e-14)
    assert power_spectrum(da.astype("float32")).dtype == np.float32


def test_zonal_spectrum_parseval_and_single_wave() -> None:
    rng = np.random.default_rng(2)
    f = _grid_da(rng.normal(size=(2, NLAT, NLON)), ("member",))
    per_lat = zonal_energy_spectrum(f, keep_latitude=True)
    assert per_lat.sizes["zonal_wavenumber"] == NLON // 2 + 1
    np.testing.assert_allclose(per_lat.sum("zonal_wavenumber").values, (f.values**2).mean(axis=-1), rtol=1e-12)
    glob = zonal_energy_spectrum(f)
    np.testing.assert_allclose(glob.sum("zonal_wavenumber").values, area_mean(f**2).values, rtol=1e-12)
    lazy = zonal_energy_spectrum(f.chunk({"member": 1, "latitude": 5, "longitude": 16}), region="tropics")
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, zonal_energy_spectrum(f, region="tropics").values, rtol=1e-12)

    lat, lon = _lat_lon()
    wave = _grid_da(2.0 * np.cos(5 * lon) + 0 * lat + 1.0)
    s = zonal_energy_spectrum(wave, keep_latitude=True).isel(latitude=4).values
    expected = np.zeros(NLON // 2 + 1)
    expected[0], expected[5] = 1.0, 2.0  # mean^2, amplitude^2 / 2
    np.testing.assert_allclose(s, expected, atol=1e-12)
    nyq = _grid_da(np.cos(NLON // 2 * lon) + 0 * lat)  # Nyquist (+-1 alternating): counted once
    np.testing.assert_allclose(zonal_energy_spectrum(nyq, keep_latitude=True).values[:, -1], 1.0, rtol=1e-12)
    circ = zonal_energy_spectrum(wave, keep_latitude=True, circumference=True).isel(latitude=4).values
    np.testing.assert_allclose(circ, expected * 2 * np.pi * WB2_EARTH_RADIUS_M * np.cos(lat[4, 0]),
                               rtol=1e-12, atol=1e-6)
