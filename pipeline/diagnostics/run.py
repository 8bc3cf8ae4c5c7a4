"""The diagnostics stage: ``<run_dir>/ensembles/<name>.zarr`` -> ``<run_dir>/diagnostics/<name>.zarr``.

:func:`diagnose` opens the ensemble store and the analysis lazily, builds
every diagnostic as a lazy xarray object with the pure metric functions of
:mod:`pipeline.diagnostics.scores`, :mod:`~pipeline.diagnostics.spectra`
and :mod:`~pipeline.diagnostics.extremes` (:func:`build_diagnostics`), and
writes the whole result with ONE ``to_zarr`` (one Dask compute, on the
configured cluster) into a hidden ``.partial`` directory that is renamed into
place only once complete. Nothing is computed before that write.

Output store (Zarr v3, opens with ``xr.open_zarr``), dims ``channel``,
``region``, ``init_time``, ``lead_time``, ``latitude``, ``longitude``,
``rank``, ``wavenumber``, ``quantile`` (and the reliability bin dim):

============================  =================================================
variable                      dims
============================  =================================================
rmse, spread,                 (channel, region, init_time, lead_time)
spread_skill_ratio, crps,
crps_fair, outlier_fraction,
best_member_rmse
rank_histogram                (channel, region, init_time, lead_time, rank)
ensemble_mean, ensemble_      (channel, init_time, lead_time, latitude, longitude)
spread
spectrum_members,             (channel, init_time, lead_time, wavenumber)
spectrum_ensemble_mean
threshold, exceedance_        (channel, quantile, init_time, lead_time, latitude, longitude)
probability
brier_score                   (channel, region, quantile, init_time, lead_time)
roc_area, edi                 (channel, region, quantile, lead_time): pooled over init times
reliability_*                 (channel, region, quantile, lead_time, bin): pooled over init times
efi, sot                      (channel, init_time, lead_time, latitude, longitude)
============================  =================================================

Per-init scores are stored; :func:`summarise` aggregates them over init
times (RMSE-like scores as the square root of the mean square, the others as
means, SSR from the aggregated spread and RMSE).

Chunking: see :mod:`pipeline.diagnostics.inputs`. Member statistics run on
``(1 init, all members, 1 lead, latitude band, all longitudes)`` chunks,
spectra on the stored ``(1, member_block, 1, full grid)`` chunks.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from pipeline import __version__
from pipeline.config import MyriadConfig
from pipeline.diagnostics.config import DiagnosticsConfig
from pipeline.diagnostics.inputs import (
    channels_of,
    climate_period,
    latitude_band,
    member_chunks,
    open_ensemble,
    select_times,
    truth_at,
    valid_times,
)
from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)

TITLE = "Myriad diagnostics store"
KEY_ATTR = "myriad_key"
"""Global attribute holding the stage's cache key (:func:`pipeline.fingerprints.diagnostics_key`)."""

SCORES = ("rmse", "spread", "spread_skill_ratio", "crps", "crps_fair", "outlier_fraction", "best_member_rmse")
"""Area-mean scores with dims (channel, region, init_time, lead_time)."""

ATTRS: dict[str, dict[str, str]] = {
    "rmse": {"long_name": "RMSE of the ensemble mean", "units": "channel units (see channel_units)",
             "formula": "sqrt(area_mean((mean_m x_m - y)^2)); over init times: sqrt(mean(rmse^2))"},
    "spread": {"long_name": "ensemble spread", "units": "channel units (see channel_units)",
               "formula": "sqrt(area_mean(var_m(x_m, ddof=1)))"},
    "spread_skill_ratio": {"long_name": "spread-skill ratio", "units": "1",
                           "formula": "spread * sqrt((M+1)/M) / rmse (Fortin et al. 2014); ideal 1"},
    "crps": {"long_name": "CRPS (empirical CDF)", "units": "channel units (see channel_units)",
             "formula": "area_mean(mean_i|x_i - y| - S/(2 M^2)), S = 2 sum_i (2i - M - 1) x_(i)"},
    "crps_fair": {"long_name": "fair CRPS", "units": "channel units (see channel_units)",
                  "formula": "area_mean(mean_i|x_i - y| - S/(2 M (M-1)))"},
    "outlier_fraction": {"long_name": "fraction of the area where the truth is outside the ensemble range",
                         "units": "1", "formula": "area_mean(y < min_m x_m or y > max_m x_m); ideal 2/(M+1)"},
    "best_member_rmse": {"long_name": "RMSE of the member closest to the truth",
                         "units": "channel units (see channel_units)", "formula": "min_m sqrt(area_mean((x_m - y)^2))"},
    "rank_histogram": {"long_name": "rank histogram of the truth among the members",
                       "units": "count", "formula": "number of grid points (in the region) where the truth has rank r "
                                                    "in 0..M among the members, ties broken at random"},
    "ensemble_mean": {"long_name": "ensemble mean", "units": "channel units (see channel_units)"},
    "ensemble_spread": {"long_name": "ensemble standard deviation (ddof=1)", "units": "channel units (see channel_units)"},
    "spectrum_members": {"long_name": "angular power spectrum of the members, mean over members",
                         "units": "(channel units)^2", "formula": "E(l) = |a_l0|^2 + 2 sum_{m>=1} |a_lm|^2"},
    "spectrum_ensemble_mean": {"long_name": "angular power spectrum of the ensemble mean", "units": "(channel units)^2"},
    "threshold": {"long_name": "extreme threshold: analysis climate quantile for the valid time's month and hour",
                  "units": "channel units (see channel_units)"},
    "exceedance_probability": {"long_name": "fraction of members above the threshold", "units": "1"},
    "brier_score": {"long_name": "Brier score of the exceedance probability", "units": "1",
                    "formula": "area_mean((p - o)^2), o = 1 where the truth exceeds the threshold"},
    "roc_area": {"long_name": "area under the ROC curve of the exceedance probability", "units": "1"},
    "edi": {"long_name": "extremal dependence index", "units": "1", "formula": "(ln F - ln H) / (ln F + ln H)"},
    "efi": {"long_name": "Extreme Forecast Index against the model climate", "units": "1",
            "formula": "(2/pi) int_0^1 (p - F_f(p)) / sqrt(p (1-p)) dp"},
    "sot": {"long_name": "Shift of Tails (upper, 90)", "units": "1",
            "formula": "(Q_f90 - Q_c99) / (Q_c99 - Q_c90), clipped to [-10, 10]"},
}


# --------------------------------------------------------------------------- building


def _by_region(fn: Callable[..., Any], regions: list[str], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, region=r, **kwargs)`` for each region, concatenated along a new ``region`` dim."""
    parts = [fn(*args, region=r, **kwargs) for r in regions]
    return xr.concat(parts, dim=_text_index(regions, "region"), coords="minimal", compat="override")


def _text_index(values: list[str], name: str) -> pd.Index:
    """A string index stored as object (Zarr v3 variable-length strings, no unstable-dtype warning)."""
    return pd.Index(np.array(list(values), dtype=object), dtype=object, name=name)


def _strip(da: xr.DataArray, keep: tuple[str, ...] = ()) -> xr.DataArray:
    """Drop non-index coordinates (per-member coords, dask-backed valid_time), except ``keep``."""
    return da.drop_vars([c for c in da.coords if c not in da.dims and c not in keep])


def build_diagnostics(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    settings: DiagnosticsConfig,
    *,
    fields: xr.Dataset | None = None,
    climate: xr.Dataset | None = None,
    reforecasts: xr.Dataset | None = None,
    band: int | None = None,
) -> xr.Dataset:
    """Every diagnostic as one lazy Dataset (nothing is computed here).

    Parameters
    ----------
    forecast
        Channels with dims ``(init_time, member, lead_time, latitude, longitude)``;
        any chunks (rechunked here to all members x latitude bands).
    truth
        The same channels at the valid times, dims ``(init_time, lead_time, latitude, longitude)``.
    settings
        The ``diagnostics`` section (regions, quantiles, bins, what to compute).
    fields
        The forecast chunked for spectra (full grids); default ``forecast``
        rechunked to full grids of ``spectra_member_block`` members.
    climate
        Analysis over the climate period, dims ``(time, latitude, longitude)``,
        for the extreme thresholds; None skips the extremes.
    reforecasts
        Forecasts pooled into the model climate, dims like ``forecast`` with the
        same lead times; None skips EFI / SOT.
    band
        Latitude rows per all-member chunk (default from ``settings``).
    """
    from pipeline.diagnostics import extremes, regions, scores, spectra

    channels = list(forecast.data_vars)
    n_members = forecast.sizes["member"]
    nlat, nlon = forecast.sizes["latitude"], forecast.sizes["longitude"]
    if band is None:
        band = settings.latitude_band or latitude_band(n_members, nlat, nlon, settings.target_chunk_mb)
    band = min(band, nlat)
    region_names = list(settings.regions)
    vt = valid_times(forecast)
    per_channel: dict[str, list[xr.DataArray]] = {}

    def put(name: str, value: xr.DataArray, keep: tuple[str, ...] = ()) -> None:
        value = _strip(value, keep)
        front = [d for d in ("region", "quantile", "init_time", "lead_time") if d in value.dims]
        back = [d for d in ("latitude", "longitude") if d in value.dims]
        per_channel.setdefault(name, []).append(value.transpose(*front, ..., *back))

    for name in channels:
        fc = _strip(forecast[name]).chunk(member_chunks(band))
        tr = _strip(truth[name]).chunk({"init_time": 1, "lead_time": 1, "latitude": band, "longitude": -1})

        put("rmse", _by_region(scores.ensemble_mean_rmse, region_names, fc, tr))
        put("spread", _by_region(scores.ensemble_spread, region_names, fc))
        put("spread_skill_ratio", _by_region(scores.spread_skill_ratio, region_names, fc, tr))
        crps_std = scores.crps(fc, tr, fair=False)
        crps_fair = fair_from_standard_crps(crps_std, fc, tr)
        put("crps", _by_region(regions.area_mean, region_names, crps_std))
        put("crps_fair", _by_region(regions.area_mean, region_names, crps_fair))
        put("rank_histogram", _by_region(scores.rank_histogram, region_names, fc, tr,
                                         seed=settings.rank_seed))
        put("outlier_fraction", _by_region(scores.outlier_fraction, region_names, fc, tr))
        put("best_member_rmse", _by_region(scores.best_member_rmse, region_names, fc, tr))

        mean = fc.mean("member")
        put("ensemble_mean", mean)
        put("ensemble_spread", np.sqrt(fc.var("member", ddof=1)))  # the same graph keys as the spread score's variance

        if settings.spectra:
            grid_fc = _strip(fields[name]) if fields is not None else _strip(forecast[name])
            block = settings.spectra_member_block
            grid_fc = grid_fc.chunk({"init_time": 1, "lead_time": 1, "latitude": -1, "longitude": -1,
                                     **({"member": block} if block else {})})
            put("spectrum_members", spectra.power_spectrum(grid_fc).mean("member"))
            put("spectrum_ensemble_mean", spectra.power_spectrum(mean.chunk({"latitude": -1})))

        if climate is not None:
            series = _strip(climate[name])
            band_c = latitude_band(series.sizes["time"], nlat, nlon, settings.target_chunk_mb, itemsize=8)
            thresholds = extremes.climate_thresholds(series, list(settings.quantiles), latitude_chunk=band_c)
            thr = _strip(extremes.thresholds_at(thresholds, vt))
            thr = thr.chunk({"init_time": 1, "lead_time": 1, "quantile": -1, "latitude": band, "longitude": -1})
            prob = extremes.exceedance_probability(fc, thr)
            observed = (tr > thr).astype("float32").where(tr.notnull() & thr.notnull())
            put("threshold", thr)
            put("exceedance_probability", prob)
            put("brier_score", _by_region(extremes.brier_score, region_names, prob, observed))
            # contingency-based scores pool the init times (and the area): one value per lead time
            pool = ("init_time", "latitude", "longitude")
            put("roc_area", _by_region(extremes.roc_area, region_names, prob, observed, n_members=n_members,
                                         reduce_dims=pool))
            put("edi", _by_region(extremes.extremal_dependence_index, region_names, prob, observed,
                                    probability_threshold=settings.edi_probability, reduce_dims=pool))
            rel = _by_region(extremes.reliability, region_names, prob, observed, settings.reliability_bins,
                             reduce_dims=pool)
            for var in rel.data_vars:
                put(f"reliability_{var}", rel[var], keep=("bin_centre", "bin_lower", "bin_upper"))

        if reforecasts is not None:
            pooled = _strip(reforecasts[name])
            n_samples = pooled.sizes["member"] * pooled.sizes["init_time"]
            pooled_band = latitude_band(n_samples, nlat, nlon, settings.target_chunk_mb, itemsize=8)
            climate_q = extremes.model_climate(pooled, model_climate_levels(settings), latitude_chunk=pooled_band)
            climate_q = climate_q.chunk({"quantile": -1, "lead_time": 1, "latitude": band, "longitude": -1})
            put("efi", extremes.efi(fc, climate_q))
            put("sot", extremes.sot(fc, climate_q, side="upper"))

    index = _text_index(channels, "channel")
    data = {var: xr.concat(parts, dim=index, coords="minimal", compat="override") for var, parts in per_channel.items()}
    ds = xr.Dataset(data)
    ds = ds.assign_coords(valid_time=vt, channel_units=("channel", np.array([str(forecast[c].attrs.get("units", "")) for c in channels], dtype=object)))
    for var in ds.data_vars:
        ds[var].attrs.update(ATTRS.get(var, {}))
        ds[var] = _write_chunks(ds[var])
    ds.attrs.update({
        "title": TITLE,
        "Conventions": "CF-1.8",
        "software": f"myriad {__version__}",
        "n_members": int(n_members),
        "channels": channels,
        "regions": region_names,
        "quantiles": [float(q) for q in settings.quantiles],
        "latitude_band": int(band),
        "rank_seed": int(settings.rank_seed),
    })
    return ds


def fair_from_standard_crps(crps: xr.DataArray, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
    """Pointwise fair CRPS from the standard one, without a second sort.

    Both are ``A - S / (2K)`` with ``A = mean_i |x_i - y|`` and the same sorted
    sum ``S`` (K = M^2 standard, M(M-1) fair), so
    ``CRPS_fair = A - (A - CRPS) * M / (M - 1)``: one O(M) pass instead of a
    second O(M log M) sort per point (the sort dominates at thousands of members).
    """
    m = forecast.sizes["member"]
    if m < 2:
        raise MyriadError("diagnostics: the fair CRPS needs at least 2 members")
    skill = abs(forecast.astype("float64") - truth).mean("member")
    return (skill - (skill - crps) * (m / (m - 1))).astype(crps.dtype)


def model_climate_levels(settings: DiagnosticsConfig) -> list[float]:
    """Quantile levels k/(n+1), k = 1..n, of the model climate."""
    n = (settings.model_climate.quantile_levels if settings.model_climate else 99)
    return [k / (n + 1) for k in range(1, n + 1)]


def _write_chunks(da: xr.DataArray) -> xr.DataArray:
    """One write chunk per (channel, init, lead[, quantile]) full grid for maps; one chunk for small arrays."""
    if not hasattr(da.data, "chunks"):
        return da
    if "latitude" in da.dims:
        chunks = {d: (-1 if d in ("latitude", "longitude") else 1) for d in da.dims}
    else:
        chunks = {d: -1 for d in da.dims}
    return da.chunk(chunks)


# --------------------------------------------------------------------------- writing


def write_store(ds: xr.Dataset, path: Path, compression_level: int = 3) -> Path:
    """Write ``ds`` with one ``to_zarr`` (its only compute) into ``.partial``, then rename into place.

    A previous store at ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    partial = path.with_name(f".{path.name}.partial-{token}")
    compressor = BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle")
    encoding = {var: {"compressors": (compressor,)} for var in ds.data_vars}
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            ds.to_zarr(partial, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
            # consolidated metadata: readers (xr.open_zarr, WeatherBench2) open it with one request, no warning
            zarr.consolidate_metadata(str(partial), zarr_format=3)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{token}")
            os.rename(path, old)
        os.rename(partial, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("wrote diagnostics store %s in %.1f s", path, time.perf_counter() - started)
    return path


# --------------------------------------------------------------------------- the stage


def ensemble_name(config: MyriadConfig) -> str:
    """The ensemble store name the diagnostics read (``diagnostics.ensemble`` or ``ensemble.name``)."""
    settings = config.diagnostics or DiagnosticsConfig()
    if settings.ensemble:
        return settings.ensemble
    if config.ensemble is None:
        raise MyriadError("config: diagnostics need an ensemble: set diagnostics.ensemble or an ensemble section")
    return config.ensemble.name


def ensemble_path(config: MyriadConfig, name: str | None = None) -> Path:
    """``<run_dir>/ensembles/<name>.zarr`` of the verified (or named) ensemble."""
    return Path(config.run_dir) / "ensembles" / f"{name or ensemble_name(config)}.zarr"


def open_inputs(config: MyriadConfig) -> dict[str, Any]:
    """Open the stores lazily and check them against the config (metadata reads only).

    Returns the keyword arguments of :func:`build_diagnostics` (``forecast``,
    ``truth``, ``settings``, ``fields``, ``climate``, ``reforecasts``, ``band``).

    Raises
    ------
    MyriadError
        Missing or incomplete stores, a store of window means
        (``ensemble.time_mean_hours``), channels / init / lead times not in the
        ensemble store, valid times outside the analysis, a climate period
        without some valid time's month and hour.
    """
    from pipeline.data.store import open_analysis

    settings = config.diagnostics or DiagnosticsConfig()
    where = "diagnostics"
    path = ensemble_path(config)
    probe = open_ensemble(path)
    window = probe.attrs.get("time_mean_hours")
    if window:
        raise MyriadError(f"diagnostics: {path} holds {window}-hour window means (ensemble.time_mean_hours), which cannot be "
                          "scored against the instantaneous analysis; verify an ensemble made without time_mean_hours")
    available = channels_of(probe)
    channels = list(settings.channels or available)
    absent = [c for c in channels if c not in available]
    if absent:
        raise MyriadError(f"diagnostics.channels: {absent} are not in the ensemble store {path} (it has {available})")
    n_members = probe.sizes["member"]
    nlat, nlon = probe.sizes["latitude"], probe.sizes["longitude"]
    band = settings.latitude_band or latitude_band(n_members, nlat, nlon, settings.target_chunk_mb)
    stored_block = int(probe[channels[0]].encoding.get("chunks", (1, n_members))[1])
    chunks = {"init_time": 1, "member": stored_block, "lead_time": 1, "latitude": band, "longitude": -1}
    members = select_times(open_ensemble(path, chunks=chunks, require_complete=False)[channels],
                           settings.init_times, settings.lead_hours, where)
    fields = select_times(probe[channels], settings.init_times, settings.lead_hours, where)
    logger.info("diagnostics of %s: %d channels x %d init times x %d members x %d leads on %dx%d; "
                "member statistics on chunks of %d latitude rows (%.1f MB), spectra on %d-member full grids",
                path, len(channels), members.sizes["init_time"], n_members, members.sizes["lead_time"], nlat, nlon,
                band, n_members * band * nlon * 4 / 2**20, settings.spectra_member_block or stored_block)

    analysis = open_analysis(config.analysis_path, chunks={})
    vt = valid_times(members)
    truth = truth_at(analysis, channels, vt, where)

    climate = None
    if settings.extremes:
        stats = config.statistics
        climate = climate_period(analysis[channels], stats.start, stats.end, vt, "diagnostics.extremes").analysis

    reforecasts = None
    if settings.efi:
        reforecasts = _reforecasts(config, settings, probe, members, channels)
    return {"forecast": members, "truth": truth, "settings": settings, "fields": fields, "climate": climate,
            "reforecasts": reforecasts, "band": band}


def prepare(config: MyriadConfig) -> xr.Dataset:
    """Open the inputs and build the lazy diagnostics Dataset of ``config`` (nothing is computed)."""
    inputs = open_inputs(config)
    ds = build_diagnostics(**inputs)
    reforecasts = inputs["reforecasts"]
    ds.attrs.update({"ensemble_store": str(ensemble_path(config)), "analysis_store": str(config.analysis_path),
                     "model_climate": "none" if reforecasts is None else
                     f"{reforecasts.attrs.get('source', '')}: {reforecasts.sizes['init_time']} init times x "
                     f"{reforecasts.sizes['member']} members"})
    return ds


def _reforecasts(config: MyriadConfig, settings: DiagnosticsConfig, probe: xr.Dataset, members: xr.Dataset,
                 channels: list[str]) -> xr.Dataset | None:
    """The forecasts pooled into the model climate, opened in latitude bands (like the member statistics)."""
    spec = settings.model_climate
    leads = members["lead_time"].values
    if spec is None:
        if probe.sizes["init_time"] < 2:
            logger.info("diagnostics: no EFI/SOT (no model_climate configured and the ensemble has one init time)")
            return None
        path, init_times = ensemble_path(config), None
    else:
        path = ensemble_path(config, spec.ensemble) if spec.ensemble else ensemble_path(config)
        init_times = spec.init_times
    store = open_ensemble(path)
    absent = [c for c in channels if c not in store.data_vars]
    if absent:
        raise MyriadError(f"diagnostics.model_climate: channels {absent} are not in {path}")
    store = select_times(store, init_times, None, "diagnostics.model_climate")
    missing = np.setdiff1d(leads, store["lead_time"].values)
    if len(missing):
        raise MyriadError(f"diagnostics.model_climate: lead times {[str(m) for m in missing]} are not in {path}")
    n_samples = store.sizes["init_time"] * store.sizes["member"]
    band = latitude_band(n_samples, store.sizes["latitude"], store.sizes["longitude"], settings.target_chunk_mb, itemsize=8)
    block = int(store[channels[0]].encoding.get("chunks", (1, store.sizes["member"]))[1])
    chunks = {"init_time": 1, "member": block, "lead_time": 1, "latitude": band, "longitude": -1}
    pooled = select_times(open_ensemble(path, chunks=chunks, require_complete=False)[channels], init_times, None,
                          "diagnostics.model_climate").sel(lead_time=leads)
    pooled.attrs["source"] = f"ensemble {path}"
    return pooled


def diagnose(config: MyriadConfig, key: str | None = None) -> Path:
    """Compute every configured diagnostic and write ``<run_dir>/diagnostics/<name>.zarr``; returns its path.

    Parameters
    ----------
    config
        The run config (``diagnostics`` section optional: defaults apply).
    key
        Cache key recorded in the store's attributes (default:
        :func:`pipeline.fingerprints.diagnostics_key`).

    Raises
    ------
    MyriadError
        Missing or incomplete ensemble / analysis stores, channels, lead or
        init times not in the stores, valid times outside the analysis.
    """
    from pipeline.dask_cluster import dask_client
    from pipeline.fingerprints import diagnostics_key

    settings = config.diagnostics or DiagnosticsConfig()
    ds = prepare(config)
    ds.attrs[KEY_ATTR] = key or diagnostics_key(config)
    out = settings.store_path(config.run_dir)
    with dask_client(config.dask):
        write_store(ds, out)
    return out


def open_diagnostics(path: str | Path) -> xr.Dataset:
    """Open a diagnostics store lazily."""
    path = Path(path)
    if not path.is_dir():
        raise MyriadError(f"diagnostics store {path}: not found (run `myriad diagnose CONFIG` first)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        return xr.open_zarr(path, zarr_format=3)


def summarise(ds: xr.Dataset) -> xr.Dataset:
    """Scores aggregated over init times (loads the small score arrays).

    RMSE-like scores (rmse, spread, best_member_rmse) are the square root of
    the mean square over init times; SSR is recomputed from those with the
    (M+1)/M correction; CRPS, outlier fraction, rank histogram and Brier score
    are means; rank-histogram counts are summed.
    """
    m = int(ds.attrs["n_members"])
    out: dict[str, xr.DataArray] = {}
    for var in ("rmse", "spread", "best_member_rmse"):
        if var in ds:
            out[var] = np.sqrt((ds[var].load() ** 2).mean("init_time"))
    if "rmse" in out and "spread" in out:
        out["spread_skill_ratio"] = out["spread"] * np.sqrt((m + 1) / m) / out["rmse"].where(out["rmse"] > 0)
    for var in ("crps", "crps_fair", "outlier_fraction", "brier_score", "roc_area", "edi"):
        if var in ds:
            value = ds[var].load()
            out[var] = value.mean("init_time") if "init_time" in value.dims else value
    if "rank_histogram" in ds:
        out["rank_histogram"] = ds["rank_histogram"].load().sum("init_time")
    summary = xr.Dataset(out)
    summary.attrs.update(ds.attrs)
    return summary
