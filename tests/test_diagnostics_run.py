"""The diagnostics stage as users run it: real stores, a real Dask LocalCluster, the CLI.

A small synthetic run is written with the real store code (analysis store by
``create_store`` + ``write_block``, ensemble store by ``EnsembleStore``):
17 x 32 grid, channels z500 and t850, 6-hourly January analyses, two init
times, 14 members (2 checkpoints x 3 pairs + controls, blocks of 4), leads
0..24 h. Members are exchangeable with the truth (truth and members drawn
around a common centre), so the ensemble is statistically consistent.

The bounded-memory test builds a lazy 1,024-member ensemble larger than the
two workers' memory together and runs the real chunking and write on it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, get_args

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from dask.callbacks import Callback

from pipeline.config import MyriadConfig, load_config
from pipeline.data.store import create_store, write_block
from pipeline.diagnostics.config import ALL_REGIONS, DiagnosticsConfig, RegionName
from pipeline.ensemble.store import EnsembleStore
from pipeline.grid import Grid
from tests.conftest import assert_one_line_error, run_myriad

NLAT, NLON = 17, 32
CHANNELS = ["z500", "t850"]
INIT_TIMES = ["2000-01-03T00:00", "2000-01-04T12:00"]
N_LEADS = 5  # 0..24 h
SCALE = {"z500": 300.0, "t850": 2.0}
BASE = {"z500": 54000.0, "t850": 270.0}


def _run_dict(root: Path, **diagnostics: Any) -> dict[str, Any]:
    return {
        "run_dir": str(root / "run"),
        "grid": {"nlat": NLAT, "nlon": NLON},
        "channels": list(CHANNELS),
        "time": {"start": "2000-01-01T00:00", "end": "2000-01-10T18:00", "step_hours": 6},
        "ingest": {"block_size": 8, "chunk_time": 4},
        # spectra import torch + torch-harmonics in each worker: about 0.9 GiB of RSS on its own
        "dask": {"cluster": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB"},
        "ensemble": {
            "name": "syn",
            "checkpoints": [str(root / "ck0"), str(root / "ck1")],
            "init_times": list(INIT_TIMES),
            "n_steps": N_LEADS - 1,
            "n_pairs": 3,
            "include_control": True,
            "member_block": 4,
        },
        "diagnostics": {"name": "syn", "regions": ["global", "tropics"], "quantiles": [0.9], "reliability_bins": 5,
                        **diagnostics},
    }


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _analysis_fields(times: pd.DatetimeIndex, grid: Grid, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lat = np.deg2rad(grid.latitudes)[:, None]
    lon = np.deg2rad(grid.longitudes)[None, :]
    out = {}
    for c in CHANNELS:
        fields = []
        for k, _ in enumerate(times):
            wave = np.cos(lat) * np.sin(3 * lon + 0.3 * k) + 0.5 * np.cos(2 * lat) * np.cos(lon - 0.2 * k)
            fields.append(BASE[c] + SCALE[c] * (wave + 0.3 * rng.standard_normal((grid.nlat, grid.nlon))))
        out[c] = np.stack(fields).astype(np.float32)
    return out


def build_synthetic_run(root: Path) -> MyriadConfig:
    """Analysis + ensemble stores for the tests; returns the config (written to root/run.yaml)."""
    root.mkdir(parents=True, exist_ok=True)
    config = load_config(_write_yaml(root / "run.yaml", _run_dict(root)))
    grid = config.grid.build()
    rng = np.random.default_rng(7)
    create_store(config, "synthetic", xr.Dataset())
    times = pd.date_range(config.time.start, config.time.end, freq="6h")
    fields = _analysis_fields(times, grid, rng)
    block = config.ingest.block_size
    for b in range(len(times) // block):
        sl = slice(b * block, (b + 1) * block)
        data = xr.Dataset({c: (("time", "latitude", "longitude"), fields[c][sl]) for c in CHANNELS})
        write_block(config.analysis_path, b, block, data, CHANNELS)

    plan = config.ensemble.plan()
    leads = [pd.Timedelta(hours=6 * k).to_pytimedelta() for k in range(N_LEADS)]
    store = EnsembleStore.create(config.ensemble.store_path(config.run_dir), plan, CHANNELS, grid, leads)
    for unit in plan.units:
        t0 = pd.Timestamp(plan.init_times[unit.init_index])
        for li in range(N_LEADS):
            ti = times.get_loc(t0 + pd.Timedelta(hours=6 * li))
            data = np.empty((unit.n_members, len(CHANNELS), grid.nlat, grid.nlon), np.float32)
            for ci, c in enumerate(CHANNELS):
                sigma = SCALE[c] * 0.1 * (1 + li)
                # centre = truth + e; members = centre + eps: truth and members exchangeable
                centre_rng = np.random.default_rng([unit.init_index, li, ci])
                centre = fields[c][ti] + sigma * centre_rng.standard_normal((grid.nlat, grid.nlon))
                member_rng = np.random.default_rng([unit.init_index, li, ci, unit.block_index])
                data[:, ci] = centre + sigma * member_rng.standard_normal((unit.n_members, grid.nlat, grid.nlon))
            store.write_lead(unit, li, data)
        store.mark_complete(unit)
    return config


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> MyriadConfig:
    return build_synthetic_run(tmp_path_factory.mktemp("diag"))


@pytest.fixture(scope="module")
def diagnosed(synthetic_run: MyriadConfig) -> dict[str, Any]:
    """diagnose() + report() on the synthetic run with a 2-worker LocalCluster (timed)."""
    from pipeline.diagnostics.report import report
    from pipeline.diagnostics.run import diagnose

    started = time.perf_counter()
    store = diagnose(synthetic_run)
    seconds = time.perf_counter() - started
    index = report(synthetic_run)
    return {"store": store, "index": index, "seconds": seconds}


def _with(config: MyriadConfig, **sections: dict[str, Any]) -> MyriadConfig:
    data = config.model_dump(mode="json")
    for key, value in sections.items():
        data[key] = {**(data.get(key) or {}), **value}
    return MyriadConfig.model_validate(data)


# --------------------------------------------------------------------------- the store


def test_region_names_match_the_metric_module() -> None:
    from pipeline.diagnostics.regions import REGIONS

    assert set(get_args(RegionName)) == set(REGIONS) == set(ALL_REGIONS)


def test_stage_writes_a_store_with_the_documented_dims(synthetic_run: MyriadConfig, diagnosed: dict[str, Any]) -> None:
    store = diagnosed["store"]
    assert store == synthetic_run.run_dir / "diagnostics" / "syn.zarr"
    assert not list(store.parent.glob(".*partial*")), "a .partial directory was left behind"
    ds = xr.open_zarr(store)
    m = 14
    assert ds.attrs["n_members"] == m
    assert list(ds["channel"].values) == CHANNELS
    assert list(ds["region"].values) == ["global", "tropics"]
    assert ds.sizes["init_time"] == 2 and ds.sizes["lead_time"] == N_LEADS
    for var in ("rmse", "spread", "spread_skill_ratio", "crps", "crps_fair", "outlier_fraction", "best_member_rmse"):
        assert ds[var].dims == ("channel", "region", "init_time", "lead_time"), var
        assert np.isfinite(ds[var].values).all(), var
    assert ds["rank_histogram"].dims == ("channel", "region", "init_time", "lead_time", "rank")
    assert ds.sizes["rank"] == m + 1
    for var in ("ensemble_mean", "ensemble_spread", "efi", "sot"):
        assert ds[var].dims == ("channel", "init_time", "lead_time", "latitude", "longitude"), var
    for var in ("spectrum_members", "spectrum_ensemble_mean"):
        assert ds[var].dims == ("channel", "init_time", "lead_time", "wavenumber"), var
    assert set(ds["exceedance_probability"].dims) == {"channel", "quantile", "init_time", "lead_time", "latitude", "longitude"}
    assert ds["brier_score"].dims == ("channel", "region", "quantile", "init_time", "lead_time")
    for var in ("roc_area", "edi"):  # pooled over init times
        assert ds[var].dims == ("channel", "region", "quantile", "lead_time"), var
    assert ds["reliability_observed_frequency"].dims == ("channel", "region", "quantile", "lead_time", "bin")
    assert any(v.startswith("reliability_") for v in ds.data_vars)
    assert ds["valid_time"].dims == ("init_time", "lead_time")

    # consistent synthetic ensemble: numbers in the expected ranges
    g = ds.sel(region="global")
    global_points = NLAT * NLON
    assert (g["rank_histogram"].sum("rank") == global_points).all()
    ssr = g["spread_skill_ratio"].values
    assert np.all((ssr > 0.7) & (ssr < 1.4)), ssr
    assert (g["crps_fair"] <= g["crps"] + 1e-6).all()
    assert (g["best_member_rmse"] <= g["rmse"] * 1.5).all()
    efi = ds["efi"].values
    assert np.nanmin(efi) >= -1 - 1e-6 and np.nanmax(efi) <= 1 + 1e-6


def test_report_has_pngs_and_an_offline_index(synthetic_run: MyriadConfig, diagnosed: dict[str, Any]) -> None:
    index = diagnosed["index"]
    report_dir = synthetic_run.run_dir / "report" / synthetic_run.diagnostics.name
    assert index == report_dir / "index.html"
    text = index.read_text()
    links = re.findall(r"<img src='([^']+)'", text)
    kinds = {"maps", "scores", "spectra", "rank", "reliability"}
    assert {link.split("_")[0] for link in links} == kinds
    for link in links:
        assert "/" not in link and (report_dir / link).is_file(), link
        assert (report_dir / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "<style>" in text and "SSR" in text and "z500" in text


def test_same_numbers_with_one_and_two_workers(synthetic_run: MyriadConfig, diagnosed: dict[str, Any]) -> None:
    from pipeline.diagnostics.run import diagnose

    one = _with(synthetic_run, dask={"n_workers": 1}, diagnostics={"name": "one-worker"})
    store = diagnose(one)
    a, b = xr.open_zarr(diagnosed["store"]), xr.open_zarr(store)
    assert set(a.data_vars) == set(b.data_vars)
    for var in a.data_vars:
        np.testing.assert_allclose(a[var].values, b[var].values, rtol=1e-6, atol=0, equal_nan=True, err_msg=var)


class _CountComputes(Callback):
    def __init__(self, partial_dir: Path) -> None:
        super().__init__()
        self.partial_dir = partial_dir
        self.computes: list[bool] = []

    def _start(self, dsk: Any) -> None:
        self.computes.append(any(self.partial_dir.glob(".*.partial-*")))


def test_nothing_is_computed_before_the_write(synthetic_run: MyriadConfig) -> None:
    from pipeline.diagnostics.run import diagnose

    config = _with(synthetic_run, dask={"cluster": "threads", "n_workers": 2}, diagnostics={"name": "counted"})
    counter = _CountComputes(config.run_dir / "diagnostics")
    with counter:
        store = diagnose(config)
    assert counter.computes == [True], f"expected one compute, during the write: {counter.computes}"
    assert store.is_dir()


# --------------------------------------------------------------------------- bounded memory


def _lazy_ensemble(n_init: int, n_members: int, n_leads: int, nlat: int, nlon: int, block: int) -> xr.Dataset:
    """A lazy uniform-random ensemble chunked like the store: (1, block, 1, full grid)."""
    grid = Grid(nlat, nlon)
    init = pd.date_range("2000-01-03", periods=n_init, freq="36h").values
    leads = (np.arange(n_leads) * np.timedelta64(6, "h")).astype("timedelta64[ns]")
    field = da.random.default_rng(0).random((n_init, n_members, n_leads, nlat, nlon), dtype=np.float32,
                                            chunks=(1, block, 1, nlat, nlon))
    coords = {"init_time": init, "member": np.arange(n_members), "lead_time": leads, **grid.coords()}
    return xr.Dataset({"z500": (("init_time", "member", "lead_time", "latitude", "longitude"), field)}, coords=coords,
                      attrs={"channels": ["z500"]})


def _peak_rss_mib() -> float:
    """Peak resident memory of this process image (VmHWM). Not ru_maxrss: Linux carries the
    parent's peak across fork + exec, so a worker spawned by a large pytest process reports it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


BIG = {"n_init": 2, "n_members": 1024, "n_leads": 18, "nlat": 65, "nlon": 128, "block": 32}
"""2 x 1024 x 18 x 65 x 128 float32 = 1.14 GiB, more than the 2 x 512 MiB of the workers together."""
BIG_WORKER_MEMORY = "512MiB"
BIG_BAND = 22
"""Latitude rows per all-member chunk: 1024 x 22 x 128 x 4 B = 11 MiB (3 bands)."""


@pytest.mark.slow
def test_a_thousand_members_larger_than_worker_memory_complete(tmp_path: Path) -> None:
    """Member statistics and maps of 1,024 members on workers that cannot hold the ensemble.

    Spectra are off: they import torch + torch-harmonics (about 0.9 GiB of RSS
    per worker on their own). Extremes and EFI are off to fit the time budget
    on 2 shared cores: they add tasks (and EFI's quantiles CPU) on the same
    all-member latitude-band chunks, so the memory pattern is the one tested.
    """
    from distributed import Client, LocalCluster

    from pipeline.diagnostics.run import build_diagnostics, write_store

    forecast = _lazy_ensemble(**BIG)
    n_init, m, n_leads, nlat, nlon = (BIG[k] for k in ("n_init", "n_members", "n_leads", "nlat", "nlon"))
    nbytes = forecast["z500"].nbytes
    limit = 512 * 2**20
    assert nbytes > 2 * limit * 1.1, nbytes
    truth = xr.Dataset({"z500": xr.DataArray(
        da.random.default_rng(1).random((n_init, n_leads, nlat, nlon), dtype=np.float32, chunks=(1, 1, nlat, nlon)),
        dims=("init_time", "lead_time", "latitude", "longitude"),
        coords={"init_time": forecast["init_time"], "lead_time": forecast["lead_time"]})})
    settings = DiagnosticsConfig(regions=["global"], latitude_band=BIG_BAND, spectra=False, extremes=False, efi=False)
    ds = build_diagnostics(forecast, truth, settings)

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=BIG_WORKER_MEMORY, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        workers_before = set(client.scheduler_info()["workers"])
        started = time.perf_counter()
        write_store(ds, tmp_path / "big.zarr")
        seconds = time.perf_counter() - started
        peak_mib = client.run(_peak_rss_mib)
        workers_after = set(client.scheduler_info()["workers"])
    assert workers_before == workers_after, "a worker was restarted (memory limit?)"
    out = xr.open_zarr(tmp_path / "big.zarr")
    assert out.sizes["rank"] == m + 1
    assert int(out["rank_histogram"].sel(region="global").sum()) == n_init * n_leads * nlat * nlon
    # i.i.d. uniform members and truth: a consistent ensemble, SSR ~ 1
    ssr = out["spread_skill_ratio"].sel(region="global").values
    assert np.all(np.abs(ssr - 1) < 0.05), ssr
    record = {"members": m, "array_gib": round(nbytes / 2**30, 2), "workers": 2, "memory_limit": BIG_WORKER_MEMORY,
              "latitude_band": BIG_BAND, "wall_s": round(seconds, 1),
              "peak_worker_rss_mib": sorted(round(v) for v in peak_mib.values())}
    print("\nBOUNDED-MEMORY", json.dumps(record))
    assert max(peak_mib.values()) < 512


def test_fair_crps_from_the_standard_one_matches_the_sorted_formula() -> None:
    from pipeline.diagnostics import scores
    from pipeline.diagnostics.run import fair_from_standard_crps

    rng = np.random.default_rng(3)
    fc = xr.DataArray(rng.standard_normal((3, 40, 5, 6)), dims=("lead_time", "member", "latitude", "longitude"))
    tr = xr.DataArray(rng.standard_normal((3, 5, 6)), dims=("lead_time", "latitude", "longitude"))
    standard = scores.crps(fc, tr, fair=False)
    np.testing.assert_allclose(fair_from_standard_crps(standard, fc, tr), scores.crps(fc, tr, fair=True), rtol=1e-10)


# --------------------------------------------------------------------------- CLI




def test_export_writes_the_weatherbench2_layout(synthetic_run: MyriadConfig, tmp_path: Path,
                                                cli_env: dict[str, str]) -> None:
    config_path = synthetic_run.run_dir.parent / "run.yaml"
    out = tmp_path / "wb2.zarr"
    result = run_myriad(["export", str(config_path), "--format", "weatherbench2", "--output", str(out),
                      "--set", "dask.cluster=threads"], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    wb2 = xr.open_zarr(out)
    ens = xr.open_zarr(synthetic_run.ensemble.store_path(synthetic_run.run_dir), consolidated=False)
    for c in CHANNELS:
        assert wb2[c].dims == ("time", "prediction_timedelta", "number", "latitude", "longitude")
    lat = wb2["latitude"].values
    assert lat[0] == -90 and lat[-1] == 90 and np.all(np.diff(lat) > 0)
    np.testing.assert_array_equal(wb2["time"].values, ens["init_time"].values)
    np.testing.assert_array_equal(wb2["prediction_timedelta"].values, ens["lead_time"].values)
    np.testing.assert_array_equal(
        wb2["z500"].isel(time=1, prediction_timedelta=2, number=5).values,
        ens["z500"].isel(init_time=1, lead_time=2, member=5).values[::-1])
    assert "perturbation" in wb2.coords and wb2["perturbation"].dims == ("number",)


def test_bad_configs_give_one_line_errors(synthetic_run: MyriadConfig, tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = _run_dict(synthetic_run.run_dir.parent)
    data["diagnostics"]["bogus_key"] = 1
    bad = _write_yaml(tmp_path / "bad.yaml", data)
    assert_one_line_error(run_myriad(["diagnose", str(bad)], cli_env, tmp_path), "diagnostics.bogus_key", "unknown key")

    data = _run_dict(synthetic_run.run_dir.parent, ensemble="no-such-ensemble")
    missing = _write_yaml(tmp_path / "missing.yaml", data)
    assert_one_line_error(run_myriad(["diagnose", str(missing)], cli_env, tmp_path), "no-such-ensemble.zarr", "not found")
    assert_one_line_error(run_myriad(["export", str(missing)], cli_env, tmp_path), "no-such-ensemble.zarr", "not found")

    data = _run_dict(synthetic_run.run_dir.parent, lead_hours=[6, 999])
    leads = _write_yaml(tmp_path / "leads.yaml", data)
    assert_one_line_error(run_myriad(["diagnose", str(leads), "--set", "dask.cluster=threads"], cli_env, tmp_path),
                           "lead hours [999]")


def test_cli_diagnose_writes_outputs_and_an_unchanged_rerun_is_cached(synthetic_run: MyriadConfig, tmp_path: Path,
                                                                       cli_env: dict[str, str]) -> None:
    config_path = synthetic_run.run_dir.parent / "run.yaml"
    args = ["diagnose", str(config_path), "--set", "dask.cluster=threads", "--set", "diagnostics.name=cli"]
    first = run_myriad(args, cli_env, tmp_path)
    assert first.returncode == 0, first.stderr
    store = synthetic_run.run_dir / "diagnostics" / "cli.zarr"
    assert f"diagnostics store: {store}" in first.stderr.replace("\n", "")
    assert (synthetic_run.run_dir / "report" / "cli" / "index.html").is_file()
    inode = store.stat().st_ino
    second = run_myriad(args, cli_env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert store.stat().st_ino == inode, "an unchanged rerun rewrote the store"
    assert "Cached" in second.stderr + second.stdout


def test_the_flow_runs_the_stage_on_the_dask_task_runners_local_cluster(synthetic_run: MyriadConfig, tmp_path: Path,
                                                                         cli_env: dict[str, str]) -> None:
    """`myriad diagnose` with `dask.cluster: local`: the diagnose task is submitted to prefect-dask's
    DaskTaskRunner (a LocalCluster of `dask.n_workers`) and computes on that cluster."""
    from prefect_dask import DaskTaskRunner

    from flows.diagnose import diagnostics_task_runner

    runner = diagnostics_task_runner(synthetic_run)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == synthetic_run.dask.n_workers
    config_path = synthetic_run.run_dir.parent / "run.yaml"
    result = run_myriad(["diagnose", str(config_path), "--set", "diagnostics.name=on-dask-runner",
                      "--set", "diagnostics.figures=false"], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in output, output[-3000:]
    assert "dask: the task runner's cluster" in output, output[-3000:]  # logged by the task on a worker
    assert (synthetic_run.run_dir / "diagnostics" / "on-dask-runner.zarr" / "zarr.json").is_file()
