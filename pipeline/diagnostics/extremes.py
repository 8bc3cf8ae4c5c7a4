"""Extremes: climate thresholds, probabilistic scores, EFI and SOT.

Pure functions on xarray objects that stay lazy under Dask. Quantiles are never
taken with Dask's generic (approximate, slow) quantile path: the samples of a
quantile are made whole in one chunk along their own dims (all times of a
(month, hour) group, or all init times x members) while latitude is split into
bands, and ``np.quantile`` (default "linear" method) runs per chunk through
``xr.apply_ufunc``.

Probabilistic scores (reliability, Brier, ROC, EDI) weight points by the
cell-area latitude weights of :mod:`pipeline.diagnostics.regions` (zero outside
``region``) and reduce over ``reduce_dims`` (default: latitude and longitude;
pass e.g. ``("init_time", "latitude", "longitude")`` to pool cases). Every
other dim is kept. ``observed`` is a boolean (or 0/1 float, NaN = missing)
DataArray aligned with ``probability``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from pipeline.diagnostics._core import MEMBER, binned_sum, float_dtype, is_lazy, require_dims, whole
from pipeline.diagnostics.regions import SPATIAL_DIMS, area_mean, area_weights, region_mask
from pipeline.errors import MyriadError

QUANTILE = "quantile"
_TARGET_CHUNK_BYTES = 128 * 2**20
_EPS = 1e-9


def _band(obj: xr.DataArray, n_samples: int, latitude_chunk: int | None) -> int:
    """Latitude rows per chunk: given, or about 128 MiB of float64 samples."""
    if latitude_chunk is not None:
        return max(1, int(latitude_chunk))
    per_row = max(1, n_samples) * obj.sizes.get("longitude", 1) * 8
    return int(min(obj.sizes.get("latitude", 1), max(1, _TARGET_CHUNK_BYTES // per_row)))


def _sample_chunks(obj: xr.DataArray, sample_dims: Sequence[str], latitude_chunk: int | None) -> xr.DataArray:
    """Lazily rechunk: ``sample_dims`` whole, latitude in bands; numpy passes through."""
    if not is_lazy(obj):
        return obj
    n = int(np.prod([obj.sizes[d] for d in sample_dims]))
    chunks: dict[str, int] = {d: -1 for d in sample_dims}
    if "latitude" in obj.dims:
        chunks["latitude"] = _band(obj, n, latitude_chunk)
    return obj.chunk(chunks)


def _quantile_kernel(x: np.ndarray, levels: np.ndarray, n_core: int, dtype: np.dtype) -> np.ndarray:
    """``np.quantile`` over the last ``n_core`` axes; quantile axis last in the result."""
    flat = np.asarray(x, dtype=np.float64).reshape(x.shape[: x.ndim - n_core] + (-1,))
    q = np.quantile(flat, levels, axis=-1)
    return np.moveaxis(q, 0, -1).astype(dtype, copy=False)


def _quantiles(
    obj: xr.DataArray, levels: Sequence[float], sample_dims: Sequence[str], latitude_chunk: int | None
) -> xr.DataArray:
    levels_arr = np.asarray(levels, dtype=np.float64)
    if levels_arr.ndim != 1 or levels_arr.size == 0 or np.any((levels_arr < 0) | (levels_arr > 1)):
        raise MyriadError(f"diagnostics: quantile levels must be a non-empty list in [0, 1], got {levels}")
    dtype = float_dtype(obj)
    out = xr.apply_ufunc(
        _quantile_kernel,
        _sample_chunks(obj, sample_dims, latitude_chunk),
        input_core_dims=[list(sample_dims)],
        output_core_dims=[[QUANTILE]],
        kwargs={"levels": levels_arr, "n_core": len(sample_dims), "dtype": dtype},
        dask="parallelized",
        output_dtypes=[dtype],
        dask_gufunc_kwargs={"output_sizes": {QUANTILE: levels_arr.size}},
    )
    return out.assign_coords({QUANTILE: levels_arr})


# -- thresholds from the analysis climate ---------------------------------------------------


def climate_thresholds(
    analysis: xr.DataArray,
    quantiles: Sequence[float] = (0.95, 0.99),
    time_dim: str = "time",
    latitude_chunk: int | None = None,
) -> xr.DataArray:
    """Per calendar month and hour of day quantiles of the analysis (HENS thresholds).

    The times are grouped by (month, hour of day) of ``time_dim``; per group
    ``np.quantile`` (linear) over that group's times, one chunk holding all
    times of the group for a band of latitude (``latitude_chunk`` rows, or
    about 128 MiB). Result dims ``("month", "hour", "quantile", latitude,
    longitude, ...)``; months/hours are those present, a (month, hour) pair
    with no data is NaN.
    """
    require_dims(analysis, [time_dim], "climate_thresholds")
    time = analysis[time_dim]
    months = np.asarray(time.dt.month.values, dtype=np.int64)
    hours = np.asarray(time.dt.hour.values, dtype=np.int64)
    month_values = np.unique(months)
    hour_values = np.unique(hours)
    per_month = []
    template: xr.DataArray | None = None
    cells: dict[tuple[int, int], xr.DataArray] = {}
    for mo in month_values:
        for hr in hour_values:
            idx = np.flatnonzero((months == mo) & (hours == hr))
            if idx.size:
                group = analysis.isel({time_dim: idx}).drop_vars(time_dim, errors="ignore")
                cells[(mo, hr)] = _quantiles(group, quantiles, [time_dim], latitude_chunk)
                template = cells[(mo, hr)] if template is None else template
    assert template is not None, "a non-empty time axis has at least one group"
    for mo in month_values:
        row = [cells.get((mo, hr), xr.full_like(template, np.nan)) for hr in hour_values]
        per_month.append(xr.concat(row, dim="hour", coords="minimal", compat="override"))
    out = xr.concat(per_month, dim="month", coords="minimal", compat="override")
    out = out.assign_coords(month=("month", month_values), hour=("hour", hour_values))
    rest = [d for d in out.dims if d not in ("month", "hour", QUANTILE)]
    out = out.transpose("month", "hour", QUANTILE, *rest)
    out.attrs = {**analysis.attrs, "long_name": f"{analysis.name or 'field'} quantiles per month and hour"}
    return out.rename(f"{analysis.name}_thresholds" if analysis.name else "thresholds")


def thresholds_at(thresholds: xr.DataArray, valid_time: xr.DataArray) -> xr.DataArray:
    """Pick each valid time's (month, hour) threshold: dims of ``valid_time`` replace month/hour."""
    return thresholds.sel(month=valid_time.dt.month, hour=valid_time.dt.hour).drop_vars(
        ["month", "hour"], errors="ignore"
    )


def exceedance_probability(forecast: xr.DataArray, threshold: xr.DataArray | float) -> xr.DataArray:
    """Pointwise fraction of members strictly above ``threshold`` (no member dim)."""
    require_dims(forecast, [MEMBER], "exceedance_probability")
    return (forecast > threshold).mean(MEMBER).rename("exceedance_probability")


# -- probabilistic scores ----------------------------------------------------------------------


def _reduce_dims(obj: xr.DataArray, reduce_dims: Sequence[str] | None) -> list[str]:
    dims = list(SPATIAL_DIMS) if reduce_dims is None else [d for d in reduce_dims if d in obj.dims]
    require_dims(obj, SPATIAL_DIMS, "a probabilistic score")
    # longitude last: it is the binning kernel's core dim (whole in every chunk)
    return [d for d in dims if d != "longitude"] + (["longitude"] if "longitude" in dims else [])


def _as_float(observed: xr.DataArray) -> xr.DataArray:
    return observed.astype(np.float64) if observed.dtype == bool else observed


def _valid(probability: xr.DataArray, observed: xr.DataArray, region: str | None) -> xr.DataArray:
    ok = probability.notnull() & observed.notnull()
    if region is not None:
        ok = ok & region_mask(probability["latitude"], region)
    return ok


def _prob_bin_kernel(p: np.ndarray, bins: int) -> np.ndarray:
    b = np.floor(np.asarray(p, dtype=np.float64) * bins + _EPS)
    b = np.clip(b, 0, bins - 1)
    return np.where(np.isnan(p), -1, b).astype(np.int64)


def reliability(
    probability: xr.DataArray,
    observed: xr.DataArray,
    bins: int = 10,
    region: str = "global",
    reduce_dims: Sequence[str] | None = None,
) -> xr.Dataset:
    """Reliability diagram data over dim ``bin`` (equal-width bins on [0, 1]).

    Bin ``b`` holds ``b/bins <= p < (b+1)/bins`` (the last bin includes 1; a
    1e-9 tolerance keeps ``k/M`` probabilities in their bin). Variables:

    - ``forecast_probability``: area-weighted mean probability in the bin,
    - ``observed_frequency``: area-weighted frequency of the event in the bin,
    - ``count``: unweighted number of points in the bin (int64),
    - ``weight``: sum of the area weights in the bin,
    - ``base_rate``: area-weighted event frequency over all points (no bin dim).

    Coords ``bin_centre``, ``bin_lower``, ``bin_upper`` on ``bin``. Empty bins
    give NaN frequencies.
    """
    if bins < 1:
        raise MyriadError(f"diagnostics: reliability needs bins >= 1, got {bins}")
    dims = _reduce_dims(probability, reduce_dims)
    obs = _as_float(observed)
    ok = _valid(probability, obs, region)
    index = xr.apply_ufunc(
        _prob_bin_kernel, probability, kwargs={"bins": bins}, dask="parallelized", output_dtypes=[np.int64]
    ).where(ok, -1)
    w = area_weights(probability["latitude"], region)
    count = binned_sum(index, bins, "bin", dims)
    weight = binned_sum(index, bins, "bin", dims, weights=w * xr.ones_like(probability, dtype=np.float64))
    wobs = binned_sum(index, bins, "bin", dims, weights=(w * obs).fillna(0.0))
    wprob = binned_sum(index, bins, "bin", dims, weights=(w * probability).fillna(0.0))
    wsum = weight.where(weight > 0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    okf = ok.astype(np.float64)
    valid_weight = (w * okf).sum(dims)
    base = (w * obs.fillna(0.0) * okf).sum(dims) / valid_weight.where(valid_weight > 0)
    ds = xr.Dataset(
        {
            "forecast_probability": wprob / wsum,
            "observed_frequency": wobs / wsum,
            "count": count,
            "weight": weight,
            "base_rate": base,
        }
    )
    return ds.assign_coords(
        bin=np.arange(bins),
        bin_centre=("bin", 0.5 * (edges[1:] + edges[:-1])),
        bin_lower=("bin", edges[:-1]),
        bin_upper=("bin", edges[1:]),
    )


def brier_score(
    probability: xr.DataArray, observed: xr.DataArray, region: str = "global", mean_dims: Sequence[str] = ()
) -> xr.DataArray:
    """Area-mean Brier score ``<(p - o)^2>`` (o in {0, 1}); then the mean over ``mean_dims``."""
    out = area_mean((probability - _as_float(observed)) ** 2, region)
    dims = [d for d in mean_dims if d in out.dims]
    return (out.mean(dims) if dims else out).rename("brier_score")


def _level_kernel(p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of thresholds ``t_k`` with ``p >= t_k`` (with a 1e-9 tolerance); -1 for NaN."""
    j = np.searchsorted(thresholds - _EPS, np.asarray(p, dtype=np.float64), side="right")
    return np.where(np.isnan(p), -1, j).astype(np.int64)


def _roc_thresholds(thresholds: Sequence[float] | None, n_members: int | None) -> np.ndarray:
    if thresholds is not None:
        t = np.sort(np.asarray(thresholds, dtype=np.float64))
    elif n_members is not None:
        t = np.arange(1, int(n_members) + 1, dtype=np.float64) / int(n_members)
    else:
        t = np.arange(1, 11, dtype=np.float64) / 10.0
    if t.ndim != 1 or t.size == 0:
        raise MyriadError("diagnostics: ROC needs at least one probability threshold")
    return t


def roc_curve(
    probability: xr.DataArray,
    observed: xr.DataArray,
    region: str = "global",
    thresholds: Sequence[float] | None = None,
    n_members: int | None = None,
    reduce_dims: Sequence[str] | None = None,
) -> xr.Dataset:
    """Hit rate and false alarm rate per probability threshold (dim ``threshold``).

    The event is forecast at threshold ``t`` where ``p >= t``. Thresholds:
    ``thresholds`` if given, else the member fractions ``k/M`` (k = 1..M) for
    ``n_members = M``, else 0.1, 0.2, ..., 1.0. ``H(t) = sum w [p>=t] o /
    sum w o``, ``F(t) = sum w [p>=t] (1-o) / sum w (1-o)``, area-weighted.
    Points are binned by how many thresholds they reach, so the cost does not
    grow with the number of thresholds beyond ``rows x thresholds`` counts.
    """
    t = _roc_thresholds(thresholds, n_members)
    dims = _reduce_dims(probability, reduce_dims)
    obs = _as_float(observed)
    ok = _valid(probability, obs, region)
    level = xr.apply_ufunc(
        _level_kernel, probability, kwargs={"thresholds": t}, dask="parallelized", output_dtypes=[np.int64]
    ).where(ok, -1)
    w = area_weights(probability["latitude"], region)
    hits = binned_sum(level, t.size + 1, "level", dims, weights=(w * obs).fillna(0.0))
    non_events = binned_sum(level, t.size + 1, "level", dims, weights=(w * (1.0 - obs)).fillna(0.0))
    # counts of points reaching at least threshold k = sum over levels j >= k
    hits_ge = hits.isel(level=slice(None, None, -1)).cumsum("level").isel(level=slice(None, None, -1))
    fa_ge = non_events.isel(level=slice(None, None, -1)).cumsum("level").isel(level=slice(None, None, -1))
    events, non_event_total = hits_ge.isel(level=0), fa_ge.isel(level=0)  # NaN rates where there is no (non-)event
    hit_rate = (hits_ge.isel(level=slice(1, None)) / events.where(events > 0)).rename(level="threshold")
    far = (fa_ge.isel(level=slice(1, None)) / non_event_total.where(non_event_total > 0)).rename(level="threshold")
    ds = xr.Dataset({"hit_rate": hit_rate, "false_alarm_rate": far})
    return ds.assign_coords(threshold=t)


def roc_area(
    probability: xr.DataArray,
    observed: xr.DataArray,
    region: str = "global",
    thresholds: Sequence[float] | None = None,
    n_members: int | None = None,
    reduce_dims: Sequence[str] | None = None,
) -> xr.DataArray:
    """Area under the ROC curve by the trapezoid rule.

    Points ``(F, H)``: (1, 1) for "always yes", then :func:`roc_curve` at the
    increasing thresholds, then (0, 0); ``AUC = sum (F_a - F_b)(H_a + H_b)/2``
    over consecutive points. 0.5 = no skill, 1 = perfect.
    """
    curve = roc_curve(probability, observed, region, thresholds, n_members, reduce_dims)
    h, f = curve["hit_rate"], curve["false_alarm_rate"]
    one = xr.ones_like(h.isel(threshold=0, drop=True)).expand_dims(threshold=1)
    zero = xr.zeros_like(one)
    hh = xr.concat([one, h.drop_vars("threshold"), zero], dim="threshold")
    ff = xr.concat([one, f.drop_vars("threshold"), zero], dim="threshold")
    n = hh.sizes["threshold"]  # no index on "threshold" here: arithmetic pairs by position
    fa, fb = ff.isel(threshold=slice(0, n - 1)), ff.isel(threshold=slice(1, n))
    ha, hb = hh.isel(threshold=slice(0, n - 1)), hh.isel(threshold=slice(1, n))
    return (((fa - fb) * (ha + hb)) / 2.0).sum("threshold").rename("roc_area")


def hit_false_alarm_rates(
    forecast_event: xr.DataArray,
    observed: xr.DataArray,
    region: str = "global",
    reduce_dims: Sequence[str] | None = None,
) -> xr.Dataset:
    """Area-weighted hit rate ``H = sum w f o / sum w o`` and false alarm rate ``F = sum w f (1-o) / sum w (1-o)``."""
    dims = _reduce_dims(forecast_event, reduce_dims)
    obs = _as_float(observed)
    fc = _as_float(forecast_event)
    ok = (fc.notnull() & obs.notnull()).astype(np.float64)
    w = area_weights(forecast_event["latitude"], region) * ok
    o, f = obs.fillna(0.0), fc.fillna(0.0)
    hit_rate = (w * f * o).sum(dims) / (w * o).sum(dims)
    far = (w * f * (1.0 - o)).sum(dims) / (w * (1.0 - o)).sum(dims)
    return xr.Dataset({"hit_rate": hit_rate, "false_alarm_rate": far})


def edi_from_rates(hit_rate, false_alarm_rate):
    """Extremal dependence index (Ferro & Stephenson 2011) from H and F.

    ``EDI = (ln F - ln H) / (ln F + ln H)``; in [-1, 1], 1 = perfect
    (H -> 1 with F -> 0), 0 = random (H = F). Works on floats, numpy arrays
    and DataArrays (lazily); H or F of 0 or 1 give the limits or NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        lf, lh = np.log(false_alarm_rate), np.log(hit_rate)
        return (lf - lh) / (lf + lh)


def extremal_dependence_index(
    probability: xr.DataArray,
    observed: xr.DataArray,
    probability_threshold: float = 0.5,
    region: str = "global",
    reduce_dims: Sequence[str] | None = None,
) -> xr.DataArray:
    """EDI of the binary forecast ``probability >= probability_threshold`` (area-weighted H, F)."""
    event = (probability >= probability_threshold - _EPS).where(probability.notnull())
    rates = hit_false_alarm_rates(event, observed, region, reduce_dims)
    return edi_from_rates(rates["hit_rate"], rates["false_alarm_rate"]).rename("edi")


# -- model climate, EFI, SOT ---------------------------------------------------------------------


def model_climate(
    reforecasts: xr.DataArray,
    quantile_levels: Sequence[float],
    sample_dims: Sequence[str] = ("init_time", MEMBER),
    latitude_chunk: int | None = None,
) -> xr.DataArray:
    """Model-climate quantiles over ``sample_dims`` (re-forecast dates x members).

    ``np.quantile`` (linear) of the pooled samples per lead time and grid point;
    one chunk holds all samples of a latitude band. Result has dim ``quantile``
    (first) with the levels as coordinate; ``sample_dims`` are gone.
    """
    require_dims(reforecasts, sample_dims, "model_climate")
    out = _quantiles(reforecasts, quantile_levels, list(sample_dims), latitude_chunk)
    return out.transpose(QUANTILE, ...).rename(f"{reforecasts.name}_climate" if reforecasts.name else "model_climate")


def _fraction_below(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``#(x_i < q_j) / M`` for sorted ``q`` (..., K) and members ``x`` (..., M) in O((M+K) log(M+K)).

    The quantiles go first into one array and a stable sort keeps each ``q_j``
    ahead of members equal to it, so its sorted position is ``j + #(x < q_j)``.
    """
    k, m = q.shape[-1], x.shape[-1]
    q = np.maximum.accumulate(q, axis=-1)
    comb = np.concatenate([np.broadcast_to(q, x.shape[:-1] + (k,)), x], axis=-1)
    order = np.argsort(comb, axis=-1, kind="stable")
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(k + m), order.shape), axis=-1)
    return (pos[..., :k] - np.arange(k)) / m


def _efi_kernel(x: np.ndarray, q: np.ndarray, levels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    f = _fraction_below(x, q)
    p = levels
    if p[0] > 0.0:  # constant extension below the lowest level
        p = np.concatenate([[0.0], p])
        f = np.concatenate([f[..., :1], f], axis=-1)
    if p[-1] < 1.0:  # and above the highest
        p = np.concatenate([p, [1.0]])
        f = np.concatenate([f, f[..., -1:]], axis=-1)
    a, b = p[:-1], p[1:]
    fa, fb = f[..., :-1], f[..., 1:]
    width = b - a
    beta = np.where(width > 0, (fb - fa) / np.where(width > 0, width, 1.0), 0.0)
    alpha = fa - beta * a

    def g1(t):  # antiderivative of t / sqrt(t (1 - t))
        return np.arcsin(np.sqrt(t)) - np.sqrt(t * (1.0 - t))

    i1 = g1(b) - g1(a)
    i0 = 2.0 * (np.arcsin(np.sqrt(b)) - np.arcsin(np.sqrt(a)))
    integral = ((1.0 - beta) * i1 - alpha * i0).sum(axis=-1)
    bad = np.isnan(x).any(axis=-1) | np.isnan(q).any(axis=-1)
    return np.where(bad, np.nan, (2.0 / math.pi) * integral).astype(dtype, copy=False)


def _climate_levels(climate_quantiles: xr.DataArray) -> np.ndarray:
    require_dims(climate_quantiles, [QUANTILE], "the model climate")
    levels = np.asarray(climate_quantiles[QUANTILE].values, dtype=np.float64)
    if np.any(np.diff(levels) <= 0) or levels[0] < 0 or levels[-1] > 1:
        raise MyriadError(f"diagnostics: climate quantile levels must increase within [0, 1], got {levels}")
    return levels


def efi(forecast: xr.DataArray, climate_quantiles: xr.DataArray) -> xr.DataArray:
    """Extreme Forecast Index against a model climate (Lalaurette 2003, ECMWF).

    ``EFI = (2/pi) int_0^1 (p - F_f(p)) / sqrt(p (1 - p)) dp`` with ``F_f(p)``
    the fraction of members below the climate's ``p``-quantile. Discretised on
    the climate's levels ``p_j``: ``F_f(p_j)`` is counted exactly (members
    strictly below ``Q_c(p_j)``), linearly interpolated between levels and held
    constant beyond the outermost levels; the integral of each linear piece
    against the kernel is taken analytically (antiderivatives
    ``arcsin(sqrt p) - sqrt(p(1-p))`` and ``2 arcsin(sqrt p)``). Hence EFI is
    exactly +1 when every member exceeds the highest climate quantile, exactly
    -1 when every member is below the lowest, and ~0 for a forecast drawn from
    the climate. ``member`` and ``quantile`` are core dims (whole per chunk).
    """
    require_dims(forecast, [MEMBER], "efi")
    levels = _climate_levels(climate_quantiles)
    dtype = float_dtype(forecast, climate_quantiles)
    return xr.apply_ufunc(
        _efi_kernel,
        whole(forecast, MEMBER),
        whole(climate_quantiles, QUANTILE),
        input_core_dims=[[MEMBER], [QUANTILE]],
        kwargs={"levels": levels, "dtype": dtype},
        dask="parallelized",
        output_dtypes=[dtype],
    ).rename("efi")


def _climate_at(climate_quantiles: xr.DataArray, level: float) -> xr.DataArray:
    levels = _climate_levels(climate_quantiles)
    hit = np.flatnonzero(np.isclose(levels, level, rtol=0.0, atol=1e-9))
    if hit.size:
        return climate_quantiles.isel({QUANTILE: int(hit[0])}, drop=True)
    if not levels[0] <= level <= levels[-1]:
        raise MyriadError(f"diagnostics: the model climate has no quantile {level} (levels {levels[0]}..{levels[-1]})")
    j = int(np.searchsorted(levels, level))  # levels[j-1] < level < levels[j]
    t = (level - levels[j - 1]) / (levels[j] - levels[j - 1])
    lo = climate_quantiles.isel({QUANTILE: j - 1}, drop=True)
    hi = climate_quantiles.isel({QUANTILE: j}, drop=True)
    return lo + t * (hi - lo)


def _member_quantile_kernel(x: np.ndarray, level: float, dtype: np.dtype) -> np.ndarray:
    return np.quantile(np.asarray(x, dtype=np.float64), level, axis=-1).astype(dtype, copy=False)


def sot(
    forecast: xr.DataArray,
    climate_quantiles: xr.DataArray,
    side: str = "upper",
    clip: float = 10.0,
) -> xr.DataArray:
    """Shift of Tails (ECMWF; REFERENCE.md).

    Upper tail: ``SOT = (Q_f(0.90) - Q_c(0.99)) / (Q_c(0.99) - Q_c(0.90))``;
    lower tail: ``SOT = (Q_f(0.10) - Q_c(0.01)) / (Q_c(0.01) - Q_c(0.10))``,
    so that in both tails SOT > 0 means at least 10 % of the members lie beyond
    the climate's 99th (1st) percentile. ``Q_f`` is ``np.quantile`` (linear)
    over members; ``Q_c`` is taken from ``climate_quantiles`` at that level
    (linearly interpolated between levels if absent). Clipped to
    ``[-clip, clip]``; NaN where ``Q_c(0.99) == Q_c(0.90)``.
    """
    require_dims(forecast, [MEMBER], "sot")
    if side == "upper":
        f_level, tail_level = 0.90, 0.99
    elif side == "lower":
        f_level, tail_level = 0.10, 0.01
    else:
        raise MyriadError(f"diagnostics: sot side must be 'upper' or 'lower', got {side!r}")
    dtype = float_dtype(forecast, climate_quantiles)
    qf = xr.apply_ufunc(
        _member_quantile_kernel,
        whole(forecast, MEMBER),
        input_core_dims=[[MEMBER]],
        kwargs={"level": f_level, "dtype": dtype},
        dask="parallelized",
        output_dtypes=[dtype],
    )
    q_tail = _climate_at(climate_quantiles, tail_level)
    q_body = _climate_at(climate_quantiles, f_level)
    denom = q_tail - q_body
    out = ((qf - q_tail) / denom.where(denom != 0)).clip(-clip, clip)
    return out.rename(f"sot_{side}")
