"""Verification scores: CRPS, RMSE/spread/SSR, rank histogram, outliers, regions.

References are computed inside the tests by independent, simple means
(pairwise loops, properscoring, numpy on flattened arrays); inputs are real
numpy and Dask-backed DataArrays.
"""

from __future__ import annotations

from contextlib import contextmanager

import dask
import numpy as np
import properscoring
import pytest
import xarray as xr
from scipy import stats

from pipeline.diagnostics.regions import REGIONS, area_mean, area_weights
from pipeline.diagnostics.scores import (
    best_member_rmse,
    crps,
    crps_score,
    ensemble_mean_rmse,
    ensemble_spread,
    outlier_fraction,
    rank_histogram,
    ranks,
    spread_skill_ratio,
)

NLAT, NLON = 13, 24


def _coords(n_init: int = 2) -> dict:
    return {
        "init_time": np.datetime64("2020-01-01T00", "ns") + np.arange(n_init) * np.timedelta64(1, "D"),
        "latitude": np.linspace(90, -90, NLAT),
        "longitude": np.arange(NLON) * 360.0 / NLON,
    }


def _ensemble(rng: np.random.Generator, m: int, n_init: int = 2, spread: float = 1.0, truth_scale: float = 1.0):
    """Members ~ N(mu, spread^2) and truth ~ N(mu, truth_scale^2) per point."""
    shape = (n_init, NLAT, NLON)
    mu = rng.normal(size=shape) * 3.0
    members = mu[:, None] + spread * rng.normal(size=(n_init, m, NLAT, NLON))
    truth = mu + truth_scale * rng.normal(size=shape)
    c = _coords(n_init)
    f = xr.DataArray(members, dims=("init_time", "member", "latitude", "longitude"), coords=c, name="z500")
    y = xr.DataArray(truth, dims=("init_time", "latitude", "longitude"), coords=c, name="z500")
    return f, y


def _pairwise_crps(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """Brute force: mean|x_i - y| - sum_ij |x_i - x_j| / (2K), members on axis 0."""
    m = x.shape[0]
    skill = np.abs(x - y[None]).mean(axis=0)
    pair = np.abs(x[:, None] - x[None, :]).sum(axis=(0, 1))
    return skill - pair / (2.0 * (m * (m - 1) if fair else m * m))


# -- regions ------------------------------------------------------------------------------


def test_area_weights_and_mean_regions() -> None:
    lat = xr.DataArray(np.linspace(90, -90, NLAT), dims="latitude")
    lat = lat.assign_coords(latitude=lat)
    w = area_weights(lat)
    assert w.mean() == pytest.approx(1.0)
    interior = w.values[1:-1] / np.cos(np.deg2rad(lat.values[1:-1]))
    np.testing.assert_allclose(interior, interior[0], rtol=1e-12)  # proportional to cos(lat)
    for name, (lo, hi) in REGIONS.items():
        wr = area_weights(lat, name).values
        inside = (lat.values >= lo) & (lat.values <= hi)
        assert np.all(wr[~inside] == 0) and np.all(wr[inside] > 0), name

    rng = np.random.default_rng(0)
    field = xr.DataArray(rng.normal(size=(3, NLAT, NLON)), dims=("t", "latitude", "longitude"),
                         coords={"latitude": lat.values})
    for name in REGIONS:
        wr = area_weights(lat, name).values
        ref = (field.values * wr[None, :, None]).sum(axis=(1, 2)) / (wr.sum() * NLON)
        np.testing.assert_allclose(area_mean(field, name).values, ref, rtol=1e-12)
        lazy = area_mean(field.chunk({"t": 1}), name)
        assert lazy.chunks is not None
        np.testing.assert_allclose(lazy.compute().values, ref, rtol=1e-12)


# -- CRPS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 7, 40])
def test_crps_matches_pairwise_and_properscoring(m: int) -> None:
    rng = np.random.default_rng(m)
    f, y = _ensemble(rng, m)
    x = np.moveaxis(f.values, 1, 0)
    got = crps(f, y).values
    np.testing.assert_allclose(got, _pairwise_crps(x, y.values, fair=False), rtol=1e-10, atol=1e-12)
    ref_ps = properscoring.crps_ensemble(y.values, np.moveaxis(f.values, 1, -1))
    np.testing.assert_allclose(got, ref_ps, rtol=1e-10, atol=1e-12)
    if m >= 2:
        np.testing.assert_allclose(crps(f, y, fair=True).values, _pairwise_crps(x, y.values, fair=True),
                                   rtol=1e-10, atol=1e-12)
    assert "member" not in crps(f, y).dims


def test_crps_is_lazy_and_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    f, y = _ensemble(rng, 10, n_init=3)
    # member split in two blocks, latitude bands: the function must rechunk members itself
    fl = f.chunk({"init_time": 1, "member": 5, "latitude": 5})
    yl = y.chunk({"init_time": 1, "latitude": 5})
    for fair in (False, True):
        lazy = crps(fl, yl, fair=fair)
        assert lazy.chunks is not None
        np.testing.assert_allclose(lazy.compute().values, crps(f, y, fair=fair).values, rtol=1e-12)
        score = crps_score(fl, yl, fair=fair, region="nh_extratropics")
        assert score.chunks is not None and score.dims == ("init_time",)
        np.testing.assert_allclose(score.compute().values,
                                   area_mean(crps(f, y, fair=fair), "nh_extratropics").values, rtol=1e-12)
    # float32 in -> float32 out
    assert crps(f.astype("float32"), y.astype("float32")).dtype == np.float32


def test_fair_crps_is_unbiased_where_standard_is_not() -> None:
    """For truth and members from the same law, E[fair CRPS] is independent of M."""
    rng = np.random.default_rng(2)
    means = []
    for m in (2, 4, 32):
        f, y = _ensemble(rng, m, n_init=3, spread=1.0, truth_scale=1.0)
        means.append((float(crps(f, y, fair=True).mean()), float(crps(f, y).mean())))
    fair, std = np.array(means).T
    # infinite-ensemble CRPS of N(0,1) vs its own draw: 1/sqrt(pi) ~ 0.564
    np.testing.assert_allclose(fair, 1 / np.sqrt(np.pi), rtol=0.08)
    assert std[0] > std[-1] * 1.15  # the standard score penalises small ensembles


# -- RMSE / spread / SSR ---------------------------------------------------------------------------


def test_rmse_spread_against_numpy() -> None:
    rng = np.random.default_rng(3)
    f, y = _ensemble(rng, 6)
    w = area_weights(f["latitude"]).values[None, :, None]
    err2 = (f.values.mean(axis=1) - y.values) ** 2
    rmse_ref = np.sqrt((err2 * w).sum(axis=(1, 2)) / (w.sum() * NLON))
    np.testing.assert_allclose(ensemble_mean_rmse(f, y).values, rmse_ref, rtol=1e-12)
    var = f.values.var(axis=1, ddof=1)
    spread_ref = np.sqrt((var * w).sum(axis=(1, 2)) / (w.sum() * NLON))
    np.testing.assert_allclose(ensemble_spread(f).values, spread_ref, rtol=1e-12)
    np.testing.assert_allclose(spread_skill_ratio(f, y).values, np.sqrt(7 / 6) * spread_ref / rmse_ref, rtol=1e-12)
    # time mean before the root
    np.testing.assert_allclose(ensemble_mean_rmse(f, y, mean_dims=("init_time",)).values,
                               np.sqrt((rmse_ref**2).mean()), rtol=1e-12)
    # best member: per-member RMSE, min over members
    per = np.sqrt(((f.values - y.values[:, None]) ** 2 * w[:, None]).sum(axis=(2, 3)) / (w.sum() * NLON))
    np.testing.assert_allclose(best_member_rmse(f, y).values, per.min(axis=1), rtol=1e-12)


def test_spread_skill_ratio_calibrated_and_underdispersed() -> None:
    rng = np.random.default_rng(4)
    m = 5
    f, y = _ensemble(rng, m, n_init=10, spread=1.0, truth_scale=1.0)  # 3,120 points: SSR to ~2 %
    fl, yl = f.chunk({"init_time": 5}), y.chunk({"init_time": 5})
    ssr = spread_skill_ratio(fl, yl, mean_dims=("init_time",))
    assert ssr.chunks is not None  # a 0-d Dask array until computed
    assert float(ssr.compute()) == pytest.approx(1.0, abs=0.06)
    f_under, y_under = _ensemble(rng, m, n_init=3, spread=0.4, truth_scale=1.0)
    assert float(spread_skill_ratio(f_under, y_under, mean_dims=("init_time",))) < 0.6


# -- rank histogram / outliers --------------------------------------------------------------------


def test_rank_histogram_flat_for_calibrated_and_u_for_underdispersed() -> None:
    rng = np.random.default_rng(5)
    m = 7
    f, y = _ensemble(rng, m, n_init=3)
    hist = rank_histogram(f.chunk({"init_time": 1, "latitude": 7}), y.chunk({"init_time": 1, "latitude": 7}))
    assert hist.chunks is not None and hist.dims == ("init_time", "rank")
    counts = hist.sum("init_time").compute().values
    assert counts.sum() == 3 * NLAT * NLON and counts.size == m + 1
    assert stats.chisquare(counts).pvalue > 0.01
    # independent rank reference (no ties with continuous data)
    ref = (f.values < y.values[:, None]).sum(axis=1)
    np.testing.assert_array_equal(counts, np.bincount(ref.ravel(), minlength=m + 1))

    fu, yu = _ensemble(rng, m, n_init=3, spread=0.3)
    cu = rank_histogram(fu, yu).sum("init_time").values
    middle = cu[1:-1].mean()
    assert cu[0] > 3 * middle and cu[-1] > 3 * middle
    assert stats.chisquare(cu).pvalue < 1e-6
    # outliers: ideal 2/(M+1) for the calibrated case, much more when under-dispersed
    assert float(outlier_fraction(f, y).mean()) == pytest.approx(2 / (m + 1), abs=0.05)
    assert float(outlier_fraction(fu, yu).mean()) > 0.6


def test_rank_histogram_region_and_outlier_reference() -> None:
    rng = np.random.default_rng(6)
    f, y = _ensemble(rng, 4, n_init=2)
    hist = rank_histogram(f, y, region="tropics")
    lat = f["latitude"].values
    inside = (lat >= -20) & (lat <= 20)
    assert int(hist.sum()) == 2 * inside.sum() * NLON
    ref = (f.values < y.values[:, None]).sum(axis=1)[:, inside]
    np.testing.assert_array_equal(hist.sum("init_time").values, np.bincount(ref.ravel(), minlength=5))
    out = (y.values < f.values.min(axis=1)) | (y.values > f.values.max(axis=1))
    w = area_weights(f["latitude"], "tropics").values[None, :, None]
    np.testing.assert_allclose(outlier_fraction(f, y, "tropics").values,
                               (out * w).sum(axis=(1, 2)) / (w.sum() * NLON), rtol=1e-12)


def test_rank_ties_broken_at_random_deterministically() -> None:
    m = 9
    c = _coords(3)
    zeros_f = xr.DataArray(np.zeros((3, m, NLAT, NLON)), dims=("init_time", "member", "latitude", "longitude"),
                           coords=c)
    zeros_y = xr.DataArray(np.zeros((3, NLAT, NLON)), dims=("init_time", "latitude", "longitude"), coords=c)
    counts = rank_histogram(zeros_f, zeros_y, seed=3).sum("init_time").values
    assert counts.sum() == 3 * NLAT * NLON
    assert stats.chisquare(counts).pvalue > 0.01  # all-equal members: ~uniform ranks
    # deterministic for the seed, different for another seed, independent of chunking
    r0 = ranks(zeros_f, zeros_y, seed=3).values
    r_lazy = ranks(zeros_f.chunk({"init_time": 1, "member": 4, "latitude": 5}),
                   zeros_y.chunk({"init_time": 2, "latitude": 3}), seed=3).compute().values
    np.testing.assert_array_equal(r0, r_lazy)
    assert not np.array_equal(r0, ranks(zeros_f, zeros_y, seed=4).values)
    # partial ties: 4 members below, 2 equal to the truth, 3 above -> rank in {4, 5, 6}
    f = zeros_f.copy()
    f[:, :4] = -1.0  # 4 below
    f[:, 4:6] = 0.0  # 2 tied with the truth
    f[:, 6:] = 1.0  # 3 above
    r = ranks(f, zeros_y, seed=0).values
    assert set(np.unique(r)) == {4, 5, 6}


@contextmanager
def forbid_compute():
    """Any Dask computation inside the block fails the test (graph building only)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a diagnostic computed eagerly")

    with dask.config.set(scheduler=refuse):
        yield


def test_scores_stay_lazy() -> None:
    rng = np.random.default_rng(7)
    f, y = _ensemble(rng, 4)
    fl, yl = f.chunk({"init_time": 1, "latitude": 4}), y.chunk({"init_time": 1, "latitude": 6})
    with forbid_compute():
        outs = [ensemble_mean_rmse(fl, yl), ensemble_spread(fl), spread_skill_ratio(fl, yl),
                outlier_fraction(fl, yl), best_member_rmse(fl, yl), crps_score(fl, yl, fair=True),
                rank_histogram(fl, yl, region="tropics"), crps(fl, yl)]
        for out in outs:
            assert out.chunks is not None, out.name
    eager = [ensemble_mean_rmse(f, y), ensemble_spread(f), spread_skill_ratio(f, y), outlier_fraction(f, y),
             best_member_rmse(f, y), crps_score(f, y, fair=True), rank_histogram(f, y, region="tropics"), crps(f, y)]
    for out, ref in zip(outs, eager, strict=True):
        np.testing.assert_allclose(out.compute().values, ref.values, rtol=1e-12, err_msg=str(out.name))
