"""Angular (spherical harmonic) and zonal power spectra, lazy under Dask.

Both spectra take ``latitude`` (and ``longitude``) as core dims, so every chunk
must hold the full grid (a block of members of full grids, DESIGN.md 4.4);
split grid dims are rechunked lazily. Any other dims (member, init_time,
lead_time, ...) pass through.

Angular power spectrum
    With torch-harmonics' orthonormal real SHT (``norm="ortho"``: the
    ``Y_lm`` are orthonormal on the unit sphere) on the equiangular grid,
    ``f = sum_lm a_lm Y_lm`` and, for real ``f``,
    ``E(l) = |a_l0|^2 + 2 sum_{m>=1} |a_lm|^2`` (REFERENCE.md). We return
    ``P(l) = E(l) / (4 pi)`` so that the spectrum sums to the mean square::

        sum_l P(l) = (1 / 4 pi) int f^2 dOmega = sum_j q_j mean_k f_jk^2

    where ``q_j`` are the SHT's own Clenshaw-Curtis quadrature weights
    (``torch_harmonics.quadrature.precompute_latitudes(nlat)[1] / 2``, summing
    to 1). The equality is exact (to round-off) for fields band-limited to
    degree ``l < lmax`` (default ``lmax = (nlat + 1) // 2``, torch-harmonics'
    default for equiangular grids, up to which the quadrature is exact for
    ``f^2``). For a general field the sum is the mean square of its
    projection onto degrees ``< lmax``. Against the cell-area weights of
    :mod:`pipeline.diagnostics.regions` it agrees to quadrature error only.

Zonal energy spectrum
    Per latitude circle ``F_k = rfft(f, norm="forward")`` and
    ``S_0 = |F_0|^2``, ``S_k = 2 |F_k|^2`` for ``0 < k < nlon/2`` and
    ``S_{nlon/2} = |F_{nlon/2}|^2`` (Nyquist, even ``nlon``), so
    ``sum_k S_k = mean_k f_k^2`` exactly (Parseval along each circle). The
    spectrum is then area-averaged over latitude (cell-area weights, region),
    so ``sum_k S_k = area_mean(f^2)``; or kept per latitude. With
    ``circumference=True`` each circle's spectrum is multiplied by its length
    ``C = 2 pi R cos(lat)`` (WeatherBench2's units, R = 6367.5 km).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import xarray as xr

from pipeline.diagnostics._core import float_dtype, require_dims, whole
from pipeline.diagnostics.regions import SPATIAL_DIMS, area_weights
from pipeline.errors import MyriadError

WB2_EARTH_RADIUS_M = 6_367_500.0
"""Earth radius of WeatherBench2's zonal energy spectrum (REFERENCE.md)."""


def _check_equiangular(latitude: xr.DataArray) -> bool:
    """True if latitude is descending 90 -> -90 with poles, False if ascending; else raise."""
    lat = np.asarray(latitude.values, dtype=float)
    n = lat.size
    expected = np.linspace(90.0, -90.0, n)
    if n >= 3 and np.allclose(lat, expected, atol=1e-6):
        return True
    if n >= 3 and np.allclose(lat, expected[::-1], atol=1e-6):
        return False
    raise MyriadError(
        f"diagnostics: the angular power spectrum needs an equiangular latitude grid with poles "
        f"(90 -> -90 in {n} rows); got {lat[0]:g} -> {lat[-1]:g}"
    )


@functools.lru_cache(maxsize=8)
def _sht(nlat: int, nlon: int, lmax: int):
    """A cached float64 ``RealSHT`` (ortho) for the grid."""
    import torch
    from torch_harmonics import RealSHT

    mmax = min(lmax, nlon // 2 + 1)
    return RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid="equiangular", norm="ortho").to(torch.float64)


def default_lmax(nlat: int) -> int:
    """torch-harmonics' default equiangular truncation ``(nlat + 1) // 2`` (degrees ``0..lmax-1``)."""
    return (nlat + 1) // 2


def _power_kernel(f: np.ndarray, lmax: int, descending: bool, dtype: np.dtype) -> np.ndarray:
    import torch

    from models.spectral import harmonic_factors

    nlat, nlon = f.shape[-2:]
    lead = f.shape[:-2]
    x = np.asarray(f, dtype=np.float64).reshape((-1, nlat, nlon))
    if not descending:
        x = x[:, ::-1, :]
    sht = _sht(nlat, nlon, lmax)
    with torch.no_grad():
        coeffs = sht(torch.from_numpy(np.ascontiguousarray(x))).numpy()  # (rows, lmax, mmax)
    power = np.abs(coeffs) ** 2
    e_l = power @ harmonic_factors(nlon, power.shape[-1]).numpy()  # orders m > 0 count twice, 0 and Nyquist once
    return (e_l / (4.0 * math.pi)).reshape(lead + (lmax,)).astype(dtype, copy=False)


def power_spectrum(field: xr.DataArray, lmax: int | None = None) -> xr.DataArray:
    """Angular power per total wavenumber ``l`` (new dim ``wavenumber``, 0..lmax-1).

    ``P(l) = (|a_l0|^2 + 2 sum_{m>=1} |a_lm|^2) / (4 pi)`` with the orthonormal
    real SHT, so ``sum_l P(l)`` is the quadrature mean of ``field^2`` over the
    sphere (exact for fields band-limited below ``lmax``; see the module
    docstring). Units: those of ``field`` squared. ``latitude`` must be
    equiangular with poles (either order); ``lmax`` defaults to
    ``(nlat + 1) // 2``.
    """
    require_dims(field, SPATIAL_DIMS, "power_spectrum")
    descending = _check_equiangular(field["latitude"])
    nlat = field.sizes["latitude"]
    lmax = default_lmax(nlat) if lmax is None else int(lmax)
    if not 1 <= lmax <= nlat:
        raise MyriadError(f"diagnostics: lmax={lmax} out of range 1..{nlat} for {nlat} latitudes")
    dtype = float_dtype(field)
    out = xr.apply_ufunc(
        _power_kernel,
        whole(field, *SPATIAL_DIMS),
        input_core_dims=[list(SPATIAL_DIMS)],
        output_core_dims=[["wavenumber"]],
        kwargs={"lmax": lmax, "descending": descending, "dtype": dtype},
        dask="parallelized",
        output_dtypes=[dtype],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": lmax}},
    )
    out = out.assign_coords(wavenumber=np.arange(lmax))
    out["wavenumber"].attrs = {"long_name": "total spherical harmonic wavenumber", "units": "1"}
    return out.rename(f"{field.name}_power" if field.name else "power")


def _zonal_kernel(f: np.ndarray, dtype: np.dtype) -> np.ndarray:
    n = f.shape[-1]
    coef = np.fft.rfft(np.asarray(f, dtype=np.float64), axis=-1, norm="forward")
    s = np.abs(coef) ** 2
    s[..., 1:] *= 2.0
    if n % 2 == 0:
        s[..., -1] *= 0.5
    return s.astype(dtype, copy=False)


def zonal_energy_spectrum(
    field: xr.DataArray,
    region: str = "global",
    keep_latitude: bool = False,
    circumference: bool = False,
) -> xr.DataArray:
    """Zonal (longitudinal FFT) spectrum over dim ``zonal_wavenumber`` (0..nlon//2).

    Per circle ``S_k`` with ``sum_k S_k = mean_lon f^2`` (see the module
    docstring); then the cell-area weighted mean over the latitudes of
    ``region`` unless ``keep_latitude``. ``circumference=True`` multiplies by
    ``2 pi R cos(lat)`` (metres), WeatherBench2's convention. Only
    ``longitude`` need be whole in a chunk.
    """
    require_dims(field, SPATIAL_DIMS, "zonal_energy_spectrum")
    nlon = field.sizes["longitude"]
    nk = nlon // 2 + 1
    dtype = float_dtype(field)
    spec = xr.apply_ufunc(
        _zonal_kernel,
        whole(field, "longitude"),
        input_core_dims=[["longitude"]],
        output_core_dims=[["zonal_wavenumber"]],
        kwargs={"dtype": dtype},
        dask="parallelized",
        output_dtypes=[dtype],
        dask_gufunc_kwargs={"output_sizes": {"zonal_wavenumber": nk}},
    ).assign_coords(zonal_wavenumber=np.arange(nk))
    if circumference:
        circ = 2 * np.pi * WB2_EARTH_RADIUS_M * np.cos(np.deg2rad(field["latitude"].astype(np.float64)))
        spec = spec * circ.clip(min=0.0)
    if not keep_latitude:
        spec = spec.weighted(area_weights(field["latitude"], region)).mean("latitude")
    return spec.rename(f"{field.name}_zonal_spectrum" if field.name else "zonal_spectrum")

