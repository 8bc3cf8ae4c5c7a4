"""Extremes: thresholds, reliability/Brier/ROC/EDI, model climate, EFI and SOT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import integrate, stats

from pipeline.diagnostics.extremes import (
    brier_score,
    climate_thresholds,
    edi_from_rates,
    efi,
    exceedance_probability,
    extremal_dependence_index,
    model_climate,
    reliability,
    roc_area,
    roc_curve,
    sot,
    thresholds_at,
)

NLAT, NLON = 5, 8


def _grid(nlon: int = NLON) -> dict:
    return {"latitude": np.linspace(90, -90, NLAT), "longitude": np.arange(nlon) * 360.0 / nlon}


def _field(values: np.ndarray, dims: tuple[str, ...], coords: dict | None = None, nlon: int = NLON) -> xr.DataArray:
    c = {k: v for k, v in _grid(nlon).items() if k in dims}
    c.update(coords or {})
    return xr.DataArray(values, dims=dims, coords=c)


# -- thresholds --------------------------------------------------------------------------------


def test_climate_thresholds_equal_np_quantile_per_month_hour() -> None:
    rng = np.random.default_rng(0)
    times = pd.date_range("2001-01-01", "2002-03-31 18:00", freq="6h")
    times = times[~((times.month == 2) & (times.hour == 18))]  # one (month, hour) group with no data
    data = rng.gamma(2.0, size=(times.size, NLAT, NLON))
    analysis = _field(data, ("time", "latitude", "longitude"), {"time": times}).rename("tp")
    q = (0.5, 0.95, 0.99)
    for obj in (analysis, analysis.chunk({"time": 100})):
        th = climate_thresholds(obj, q, latitude_chunk=2)
        assert th.dims == ("month", "hour", "quantile", "latitude", "longitude")
        assert (th.chunks is not None) == (obj.chunks is not None)
        th = th.compute()
        np.testing.assert_array_equal(th["month"], np.arange(1, 13))
        np.testing.assert_array_equal(th["hour"], [0, 6, 12, 18])
        for mo in (1, 2, 3, 7):
            for hr in (0, 6, 12, 18):
                sel = (times.month == mo) & (times.hour == hr)
                got = th.sel(month=mo, hour=hr).values
                if not sel.any():
                    assert mo == 2 and hr == 18 and np.isnan(got).all()
                    continue
                ref = np.quantile(data[sel], q, axis=0)
                np.testing.assert_allclose(got, ref, rtol=1e-12)
    # pick thresholds for valid times (init_time x lead_time)
    vt = xr.DataArray(
        np.array([["2001-01-01T06", "2001-01-01T12"], ["2001-07-03T00", "2001-07-03T06"]], dtype="datetime64[ns]"),
        dims=("init_time", "lead_time"),
    )
    picked = thresholds_at(th, vt)
    assert picked.dims[:2] == ("init_time", "lead_time")
    np.testing.assert_array_equal(picked.isel(init_time=1, lead_time=0).values, th.sel(month=7, hour=0).values)


def test_exceedance_probability() -> None:
    members = np.arange(10.0)[:, None, None] * np.ones((1, NLAT, NLON))
    f = _field(members, ("member", "latitude", "longitude"))
    p = exceedance_probability(f.chunk({"member": 5}), 6.5)
    assert p.chunks is not None
    np.testing.assert_allclose(p.compute().values, 0.3)
    thr = _field(np.full((2, NLAT, NLON), [[[2.0]], [[8.5]]]), ("quantile", "latitude", "longitude"))
    np.testing.assert_allclose(exceedance_probability(f, thr).transpose("quantile", ...).values[:, 0, 0], [0.7, 0.1])


# -- reliability, Brier, ROC, EDI ---------------------------------------------------------------


def _reliability_case():
    """Each latitude row: 10 bins x 4 points, bin b has p = (b + 0.5)/10 and n_b events."""
    n_events = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    p_row = np.repeat((np.arange(10) + 0.5) / 10, 4)
    o_row = np.concatenate([np.arange(4) < n for n in n_events])
    p = _field(np.tile(p_row, (NLAT, 1)), ("latitude", "longitude"), nlon=40)
    o = _field(np.tile(o_row, (NLAT, 1)), ("latitude", "longitude"), nlon=40)
    return p, o, n_events, p_row, o_row


def test_reliability_and_brier_on_constructed_case() -> None:
    p, o, n_events, p_row, o_row = _reliability_case()
    for pp, oo in ((p, o), (p.chunk({"latitude": 2}), o.chunk({"latitude": 2}))):
        rel = reliability(pp, oo, bins=10)
        assert rel["observed_frequency"].chunks is not None or pp.chunks is None
        rel = rel.compute()
        np.testing.assert_allclose(rel["observed_frequency"].values, n_events / 4, rtol=1e-12)
        np.testing.assert_allclose(rel["forecast_probability"].values, (np.arange(10) + 0.5) / 10, rtol=1e-12)
        np.testing.assert_array_equal(rel["count"].values, np.full(10, 4 * NLAT))
        np.testing.assert_allclose(rel["bin_centre"].values, (np.arange(10) + 0.5) / 10)
        assert float(rel["base_rate"]) == pytest.approx(n_events.sum() / 40)
        bs = brier_score(pp, oo)
        assert float(bs) == pytest.approx(np.mean((p_row - o_row) ** 2), rel=1e-12)
    # region and k/M probabilities on bin edges: p = 3/10 from 10 members falls in bin 3
    members = (np.arange(10) < 3)[:, None, None] * np.ones((1, NLAT, 40))
    prob = exceedance_probability(_field(members, ("member", "latitude", "longitude"), nlon=40), 0.5)
    rel = reliability(prob, o, bins=10, region="tropics")
    assert rel["count"].values.tolist() == [0, 0, 0, 40, 0, 0, 0, 0, 0, 0]  # one row (lat 0) in the tropics
    assert float(rel["observed_frequency"][3]) == pytest.approx(o_row.mean())


def _roc_case():
    o_row = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    p_row = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 0.0])
    p = _field(np.tile(p_row, (NLAT, 1)), ("latitude", "longitude"))
    o = _field(np.tile(o_row, (NLAT, 1)), ("latitude", "longitude"))
    return p, o


def test_roc_curve_and_area_on_constructed_case() -> None:
    p, o = _roc_case()
    curve = roc_curve(p, o, thresholds=[0.5, 1.0])
    np.testing.assert_allclose(curve["hit_rate"].values, [0.75, 0.5])
    np.testing.assert_allclose(curve["false_alarm_rate"].values, [0.5, 0.25])
    # points (1,1) (0.5,0.75) (0.25,0.5) (0,0): trapezoids by hand
    expected = 0.5 * 1.75 / 2 + 0.25 * 1.25 / 2 + 0.25 * 0.5 / 2
    lazy = roc_area(p.chunk({"latitude": 2}), o.chunk({"latitude": 2}), n_members=2)  # thresholds 0.5, 1
    assert lazy.chunks is not None
    assert float(lazy.compute()) == pytest.approx(expected, rel=1e-12)
    perfect = roc_area(o.astype(float), o, n_members=4)
    assert float(perfect) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    noise = _field(rng.integers(0, 11, size=(NLAT, NLON)) / 10.0, ("latitude", "longitude"))
    big_o = _field(rng.random((NLAT, NLON)) < 0.5, ("latitude", "longitude"))
    assert 0.0 <= float(roc_area(noise, big_o)) <= 1.0


def test_edi_known_rates_and_constructed_case() -> None:
    h, f = 0.75, 0.5
    assert edi_from_rates(h, f) == pytest.approx((np.log(f) - np.log(h)) / (np.log(f) + np.log(h)))
    assert edi_from_rates(0.3, 0.3) == pytest.approx(0.0)
    assert edi_from_rates(0.9, 0.01) == pytest.approx((np.log(0.01) - np.log(0.9)) / (np.log(0.01) + np.log(0.9)))
    assert edi_from_rates(0.9, 1e-12) > 0.99  # H -> 1 with F -> 0: EDI -> 1
    p, o = _roc_case()
    edi = extremal_dependence_index(p.chunk({"latitude": 1}), o, probability_threshold=0.5)
    assert edi.chunks is not None
    assert float(edi.compute()) == pytest.approx(edi_from_rates(0.75, 0.5), rel=1e-12)


# -- model climate, EFI, SOT ----------------------------------------------------------------------

LEVELS = np.linspace(0.0, 1.0, 101)


def test_model_climate_equals_pooled_np_quantile() -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(6, 5, 2, NLAT, NLON))  # init_time, member, lead_time, lat, lon
    ref = _field(data, ("init_time", "member", "lead_time", "latitude", "longitude"))
    for obj in (ref, ref.chunk({"init_time": 2, "member": 1, "lead_time": 1})):
        clim = model_climate(obj, [0.1, 0.5, 0.9, 0.99], latitude_chunk=2)
        assert clim.dims == ("quantile", "lead_time", "latitude", "longitude")
        pooled = data.reshape(30, 2, NLAT, NLON)
        np.testing.assert_allclose(clim.values, np.quantile(pooled, [0.1, 0.5, 0.9, 0.99], axis=0), rtol=1e-12)


def _climate(rng: np.random.Generator, n: int = 20000, levels: np.ndarray = LEVELS) -> xr.DataArray:
    sample = rng.normal(size=(n, NLAT, NLON))
    q = np.quantile(sample, levels, axis=0)
    return _field(q, ("quantile", "latitude", "longitude"), {"quantile": levels})


def test_efi_limits_and_zero_for_climate_draws() -> None:
    rng = np.random.default_rng(3)
    clim = _climate(rng)
    dims = ("member", "latitude", "longitude")
    same = _field(rng.normal(size=(2000, NLAT, NLON)), dims)
    e = efi(same.chunk({"member": 500, "latitude": 2}), clim)
    assert e.chunks is not None
    assert np.abs(e.compute().values).max() < 0.05
    hot = _field(clim.values.max() + 1.0 + rng.random((50, NLAT, NLON)), dims)
    cold = _field(clim.values.min() - 1.0 - rng.random((50, NLAT, NLON)), dims)
    np.testing.assert_allclose(efi(hot, clim).values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(efi(cold, clim).values, -1.0, rtol=1e-12)
    inner = clim.sel(quantile=slice(0.01, 0.99))  # no 0/1 levels: still exactly +-1 in the limits
    np.testing.assert_allclose(efi(hot, inner).values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(efi(cold, inner).values, -1.0, rtol=1e-12)


def test_efi_of_a_shifted_forecast_matches_continuous_integral() -> None:
    """Forecast N(0.7, 1) vs climate N(0, 1): F_f(p) = Phi(Phi^-1(p) - 0.7)."""
    rng = np.random.default_rng(4)
    clim = _climate(rng, levels=np.linspace(0.0, 1.0, 201))
    # large ensemble from exact normal quantiles (no sampling noise)
    members = stats.norm.ppf((np.arange(4000) + 0.5) / 4000) + 0.7
    f = _field(members[:, None, None] * np.ones((1, NLAT, NLON)), ("member", "latitude", "longitude"))
    exact_clim = _field(stats.norm.ppf(np.linspace(0.0, 1.0, 201))[:, None, None] * np.ones((1, NLAT, NLON)),
                        ("quantile", "latitude", "longitude"), {"quantile": np.linspace(0.0, 1.0, 201)})
    ref = 2 / np.pi * integrate.quad(lambda p: (p - stats.norm.cdf(stats.norm.ppf(p) - 0.7)) / np.sqrt(p * (1 - p)),
                                     0, 1, limit=200)[0]
    np.testing.assert_allclose(efi(f, exact_clim).values, ref, atol=0.01)
    assert np.abs(efi(f, clim).values - ref).max() < 0.03  # sampled climate


def test_sot_on_constructed_case() -> None:
    levels = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    values = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])
    clim = _field(values[:, None, None] * np.ones((1, NLAT, NLON)), ("quantile", "latitude", "longitude"),
                  {"quantile": levels})
    members = np.arange(11.0) * 3.0  # np.quantile: Q(0.9) = 27, Q(0.1) = 3
    f = _field(members[:, None, None] * np.ones((1, NLAT, NLON)), ("member", "latitude", "longitude"))
    up = sot(f.chunk({"member": 4}), clim)
    assert up.chunks is not None
    np.testing.assert_allclose(up.compute().values, (27 - 20) / (20 - 10))
    np.testing.assert_allclose(sot(f, clim, side="lower").values, (3 - (-20)) / (-20 - (-10)))
    np.testing.assert_allclose(sot(f * 100, clim).values, 10.0)  # clipped
    np.testing.assert_allclose(sot(f - 200, clim, side="lower").values, 10.0)
    # 0.99 missing: linear between 0.9 (10) and 1.0 (30) -> Q_c(0.99) = 28
    clim2 = clim.isel(quantile=slice(0, 4))
    clim2 = xr.concat([clim2, (clim2.isel(quantile=-1) * 0 + 30.0).expand_dims(quantile=[1.0])], "quantile")
    np.testing.assert_allclose(sot(f, clim2).values, (27 - 28) / (28 - 10))


def test_extremes_build_lazily_without_computing() -> None:
    import dask

    def refuse(*args, **kwargs):
        raise AssertionError("an extremes diagnostic computed eagerly")

    rng = np.random.default_rng(5)
    times = pd.date_range("2001-01-01", periods=40, freq="6h")
    analysis = _field(rng.normal(size=(40, NLAT, NLON)), ("time", "latitude", "longitude"), {"time": times})
    f = _field(rng.normal(size=(3, 20, NLAT, NLON)), ("init_time", "member", "latitude", "longitude"))
    o = _field(rng.random((3, NLAT, NLON)) < 0.3, ("init_time", "latitude", "longitude"))
    rf = _field(rng.normal(size=(6, 5, NLAT, NLON)), ("init_time", "member", "latitude", "longitude"))
    fl, ol = f.chunk({"init_time": 1, "member": 10, "latitude": 2}), o.chunk({"init_time": 1})
    with dask.config.set(scheduler=refuse):
        th = climate_thresholds(analysis.chunk({"time": 1}))
        clim = model_climate(rf.chunk({"init_time": 2, "member": 1}), LEVELS)
        prob = exceedance_probability(fl, 0.5)
        outs = {
            "thresholds": th,
            "climate": clim,
            "prob": prob,
            "reliability": reliability(prob, ol, reduce_dims=("init_time", "latitude", "longitude"))["count"],
            "brier": brier_score(prob, ol),
            "roc": roc_area(prob, ol, n_members=20),
            "edi": extremal_dependence_index(prob, ol),
            "efi": efi(fl, clim),
            "sot": sot(fl, clim),
        }
        for name, out in outs.items():
            assert out.chunks is not None, name
    assert int(outs["reliability"].sum()) == 3 * NLAT * NLON
    prob_np = exceedance_probability(f, 0.5)
    np.testing.assert_allclose(outs["roc"].compute().values, roc_area(prob_np, o, n_members=20).values, rtol=1e-12)
    np.testing.assert_allclose(outs["efi"].compute().values, efi(f, model_climate(rf, LEVELS)).values, rtol=1e-12)
    np.testing.assert_allclose(outs["sot"].compute().values, sot(f, model_climate(rf, LEVELS)).values, rtol=1e-12)
