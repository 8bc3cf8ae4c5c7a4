"""Ensemble verification scores as pure functions on xarray objects.

Conventions for every function here:

- ``forecast`` has a ``member`` dimension; ``truth`` has none; both share the
  grid dims ``latitude`` / ``longitude`` and are aligned on every other dim
  (``init_time``, ``lead_time``, ...), which passes through untouched.
  Coordinates must match exactly (``xr.apply_ufunc`` with ``join="exact"``).
- Results stay lazy under Dask. Member statistics take ``member`` as a core
  dim, so a chunk must hold all members of its points (a latitude band of all
  members, DESIGN.md section 4.4); a split member dim is rechunked lazily.
- Area means use the cell-area latitude weights of
  :mod:`pipeline.diagnostics.regions` (zero outside ``region``).
- ``mean_dims`` (optional) are dims to average the *squared* quantities over
  before the square root (REFERENCE.md: "RMSE: square root after the time
  mean"), e.g. ``mean_dims=("init_time",)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from pipeline.diagnostics._core import MEMBER, binned_sum, float_dtype, is_lazy, require_dims, whole
from pipeline.diagnostics.regions import SPATIAL_DIMS, area_mean, region_mask
from pipeline.errors import MyriadError


def _n_members(forecast: xr.DataArray) -> int:
    require_dims(forecast, [MEMBER], "an ensemble forecast")
    return int(forecast.sizes[MEMBER])


def _time_mean(x: xr.DataArray, mean_dims: Sequence[str]) -> xr.DataArray:
    dims = [d for d in mean_dims if d in x.dims]
    return x.mean(dims) if dims else x


def ensemble_mean_rmse(
    forecast: xr.DataArray, truth: xr.DataArray, region: str = "global", mean_dims: Sequence[str] = ()
) -> xr.DataArray:
    """RMSE of the ensemble mean.

    ``RMSE = sqrt( <(mean_m f_m - y)^2> )`` with ``<.>`` the area mean over the
    region (then the mean over ``mean_dims``, before the root).
    """
    _n_members(forecast)
    err2 = (forecast.mean(MEMBER) - truth) ** 2
    return np.sqrt(_time_mean(area_mean(err2, region), mean_dims)).rename("ensemble_mean_rmse")


def ensemble_spread(forecast: xr.DataArray, region: str = "global", mean_dims: Sequence[str] = ()) -> xr.DataArray:
    """Ensemble spread ``sqrt( <var_m f> )``, member variance with ``ddof=1``."""
    if _n_members(forecast) < 2:
        raise MyriadError("diagnostics: ensemble spread needs at least 2 members")
    var = forecast.var(MEMBER, ddof=1)
    return np.sqrt(_time_mean(area_mean(var, region), mean_dims)).rename("ensemble_spread")


def spread_skill_ratio(
    forecast: xr.DataArray, truth: xr.DataArray, region: str = "global", mean_dims: Sequence[str] = ()
) -> xr.DataArray:
    """Spread-skill ratio corrected for finite ensemble size (Fortin et al. 2014).

    ``SSR = sqrt((M + 1) / M) * spread / RMSE``, with ``spread`` from
    :func:`ensemble_spread` (ddof=1), ``RMSE`` the ensemble-mean RMSE of
    :func:`ensemble_mean_rmse` and ``M`` the number of members. For a
    statistically consistent ensemble (truth exchangeable with the members)
    ``E[(mean f - y)^2] = (M + 1)/M * E[var f]``, so SSR -> 1.
    """
    m = _n_members(forecast)
    spread = ensemble_spread(forecast, region, mean_dims)
    rmse = ensemble_mean_rmse(forecast, truth, region, mean_dims)
    return (np.sqrt((m + 1) / m) * spread / rmse.where(rmse > 0)).rename("spread_skill_ratio")  # NaN where RMSE is 0


def _crps_kernel(x: np.ndarray, y: np.ndarray, fair: bool, dtype: np.dtype) -> np.ndarray:
    """Sorted-member CRPS; ``x`` (..., M), ``y`` (...). float64 inside."""
    m = x.shape[-1]
    xs = np.sort(np.asarray(x, dtype=np.float64), axis=-1)
    yy = np.asarray(y, dtype=np.float64)[..., None]
    skill = np.abs(xs - yy).mean(axis=-1)
    coef = 2.0 * np.arange(1, m + 1, dtype=np.float64) - m - 1.0
    pair_sum = 2.0 * (xs @ coef)  # sum_ij |x_i - x_j|
    k = m * (m - 1) if fair else m * m
    return (skill - pair_sum / (2.0 * k)).astype(dtype, copy=False)


def crps(forecast: xr.DataArray, truth: xr.DataArray, fair: bool = False) -> xr.DataArray:
    """Pointwise CRPS of the ensemble (no ``member`` dim in the result).

    With the members sorted, ``x_(1) <= ... <= x_(M)``::

        CRPS = (1/M) sum_i |x_i - y| - S / (2 K)
        S    = sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)

    ``K = M^2`` for the empirical-CDF score (``fair=False``, equal to
    ``properscoring.crps_ensemble``) and ``K = M (M - 1)`` for the fair score
    (``fair=True``, unbiased for the infinite-ensemble CRPS). O(M log M) time
    and O(M) extra memory per point, computed in float64 (result float32 when
    both inputs are float32). A NaN member or truth gives NaN.
    """
    m = _n_members(forecast)
    if fair and m < 2:
        raise MyriadError("diagnostics: the fair CRPS needs at least 2 members")
    dtype = float_dtype(forecast, truth)
    out = xr.apply_ufunc(
        _crps_kernel,
        whole(forecast, MEMBER),
        truth,
        input_core_dims=[[MEMBER], []],
        kwargs={"fair": fair, "dtype": dtype},
        dask="parallelized",
        output_dtypes=[dtype],
    )
    return out.rename("fair_crps" if fair else "crps")


def crps_score(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    fair: bool = False,
    region: str = "global",
    mean_dims: Sequence[str] = (),
) -> xr.DataArray:
    """Area-mean CRPS over the region: ``<crps(forecast, truth, fair)>``."""
    out = _time_mean(area_mean(crps(forecast, truth, fair), region), mean_dims)
    return out.rename("fair_crps" if fair else "crps")


# -- rank histogram -----------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (uint64 in, uint64 out; wrap-around arithmetic)."""
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per global point index, fixed by ``seed``.

    A counter-based generator: the number depends only on (seed, index), so
    the result is the same whatever the chunking and for numpy or Dask input.
    """
    key = _mix64(np.array([seed], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        z = _mix64(np.asarray(index).astype(np.uint64) * _GOLDEN + key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)


def _rank_kernel(x: np.ndarray, y: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
    """Rank of ``y`` among the members ``x`` (0..M), ties at random; -1 where NaN."""
    yy = y[..., None]
    less = (x < yy).sum(axis=-1)
    equal = (x == yy).sum(axis=-1)
    u = _uniform(np.broadcast_to(index, less.shape), seed)
    rank = less + np.minimum(np.floor(u * (equal + 1)).astype(np.int64), equal)
    bad = np.isnan(y) | np.isnan(x).any(axis=-1)
    return np.where(bad, -1, rank).astype(np.int64)


def _point_index(forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
    """Global linear index of every (non-member) point, chunked like the inputs."""
    dims = [d for d in forecast.dims if d != MEMBER] + [d for d in truth.dims if d not in forecast.dims]
    sizes = {**dict(truth.sizes), **{d: n for d, n in forecast.sizes.items() if d != MEMBER}}
    chunks: dict[str, tuple[int, ...]] = {}
    for obj in (truth, forecast):
        if is_lazy(obj):
            chunks.update({d: c for d, c in obj.chunksizes.items() if d != MEMBER})
    index: xr.DataArray | None = None
    stride = 1
    for d in reversed(dims):
        if chunks:
            import dask.array as dsa

            data = dsa.arange(sizes[d], chunks=(chunks.get(d, (sizes[d],)),), dtype=np.int64) * stride
        else:
            data = np.arange(sizes[d], dtype=np.int64) * stride
        part = xr.DataArray(data, dims=d)
        index = part if index is None else index + part
        stride *= sizes[d]
    assert index is not None
    return index.transpose(*dims)


def ranks(forecast: xr.DataArray, truth: xr.DataArray, seed: int = 0) -> xr.DataArray:
    """Pointwise rank of the truth among the members, 0..M (int64, -1 where NaN).

    ``rank = #{x_i < y} + U``, ``U`` uniform on ``0..#{x_i == y}`` (random tie
    breaking). ``U`` comes from a counter-based hash of ``seed`` and the point's
    global position, so it is deterministic for the seed and independent of
    the chunking.
    """
    _n_members(forecast)
    forecast, truth = xr.align(forecast, truth, join="exact")
    index = _point_index(forecast, truth)
    return xr.apply_ufunc(
        _rank_kernel,
        whole(forecast, MEMBER),
        truth,
        index,
        input_core_dims=[[MEMBER], [], []],
        kwargs={"seed": int(seed)},
        dask="parallelized",
        output_dtypes=[np.int64],
    ).rename("rank")


def rank_histogram(
    forecast: xr.DataArray, truth: xr.DataArray, seed: int = 0, region: str | None = None
) -> xr.DataArray:
    """Rank histogram: counts of the truth's rank 0..M over the grid points.

    Ranks as in :func:`ranks` (ties broken at random, deterministic for
    ``seed``). The counts are *unweighted* numbers of grid points in ``region``
    (None: the whole grid), summed over ``latitude`` and ``longitude``; every
    other dim is kept. Points with NaN are not counted. Result dim ``rank``
    (size M + 1), int64.
    """
    m = _n_members(forecast)
    require_dims(forecast, SPATIAL_DIMS, "rank_histogram")
    r = ranks(forecast, truth, seed)
    if region is not None:
        r = r.where(region_mask(r["latitude"], region), -1)
    counts = binned_sum(r, m + 1, "rank", list(SPATIAL_DIMS))
    return counts.assign_coords(rank=np.arange(m + 1)).rename("rank_histogram")


def outlier_fraction(forecast: xr.DataArray, truth: xr.DataArray, region: str = "global") -> xr.DataArray:
    """Area-weighted fraction of points with the truth outside [min_m f, max_m f].

    Ideal value for a consistent ensemble: ``2 / (M + 1)``. Points where the
    truth is NaN are left out.
    """
    _n_members(forecast)
    outside = (truth < forecast.min(MEMBER)) | (truth > forecast.max(MEMBER))
    frac = outside.astype(np.float64).where(truth.notnull())
    return area_mean(frac, region).rename("outlier_fraction")


def best_member_rmse(
    forecast: xr.DataArray, truth: xr.DataArray, region: str = "global", mean_dims: Sequence[str] = ()
) -> xr.DataArray:
    """RMSE of the best member: ``min_m sqrt(<(f_m - y)^2>)``.

    Each member's area-weighted RMSE over the grid (after the mean over
    ``mean_dims``), then the minimum over members; other dims are kept, so the
    best member may differ between init times / lead times unless they are in
    ``mean_dims``.
    """
    _n_members(forecast)
    mse = _time_mean(area_mean((forecast - truth) ** 2, region), mean_dims)
    return np.sqrt(mse).min(MEMBER).rename("best_member_rmse")
