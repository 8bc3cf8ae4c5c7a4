"""The ``myriad`` CLI as a user runs it: real subprocesses against the session's Prefect server.

Covers ``ingest`` -> ``inspect`` on a small planet run, the Prefect cache
skipping an unchanged rerun, and user errors (bad key, bad override, bad path)
printed as one line with exit status 1 and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr
import yaml

from tests.conftest import REPO_ROOT, assert_one_line_error, run_myriad

TINY_PLANET = {
    "run_dir": "run",
    "source": {"kind": "planet", "dt_seconds": 1800, "spinup_days": 2, "stirring_lmin": 3, "stirring_lmax": 7},
    "grid": {"nlat": 17, "nlon": 32},
    "channels": ["z500", "u500", "v500", "tp6h"],
    "time": {"start": "2000-01-01T00:00", "end": "2000-01-10T18:00", "step_hours": 6},
    "ingest": {"block_size": 8, "chunk_time": 4},
    "dask": {"cluster": "threads", "n_workers": 2},
}




@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli")
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PLANET))
    return path


@pytest.mark.slow
def test_ingest_then_inspect_then_an_unchanged_rerun_is_cached(tiny_config: Path, cli_env: dict[str, str]) -> None:
    workdir = tiny_config.parent
    first = run_myriad(["ingest", str(tiny_config)], cli_env, workdir)
    assert first.returncode == 0, first.stderr
    store = workdir / "run" / "analysis.zarr"
    assert f"analysis store: {Path('run') / 'analysis.zarr'}" in first.stderr or str(store) in first.stderr

    ds = xr.open_zarr(store)
    assert set(TINY_PLANET["channels"]) <= set(ds.data_vars)
    assert ds.sizes["time"] == 40 and ds.sizes["latitude"] == 17 and ds.sizes["longitude"] == 32
    assert float(ds.latitude[0]) == 90.0 and float(ds.latitude[-1]) == -90.0
    assert ds["z500"].attrs["units"] == "m2 s-2"

    shown = run_myriad(["inspect", str(store)], cli_env, workdir)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout + shown.stderr
    for fragment in ("z500", "tp6h", "17", "32", "2000-01-01", "2000-01-10", "6h", "complete"):
        assert fragment in text, text

    stats = run_myriad(["inspect", str(workdir / "run" / "stats.nc")], cli_env, workdir)
    assert stats.returncode == 0, stats.stderr
    assert "z500" in stats.stdout + stats.stderr

    modified = {entry.name: entry.stat().st_mtime_ns for entry in (store / "z500" / "c").rglob("*") if entry.is_file()}
    rerun = run_myriad(["ingest", str(tiny_config)], cli_env, workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert "Cached" in rerun.stdout + rerun.stderr
    assert {entry.name: entry.stat().st_mtime_ns for entry in (store / "z500" / "c").rglob("*") if entry.is_file()} == modified


def test_a_bad_key_fails_before_any_work_with_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    config = dict(TINY_PLANET, ingest={"block_size": 8, "chunk_tim": 4})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_myriad(["ingest", str(path)], cli_env, tmp_path)
    assert_one_line_error(result, "ingest.chunk_tim", "unknown key")
    assert not (tmp_path / "run").exists()


def test_a_bad_override_names_the_key(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PLANET))
    result = run_myriad(["ingest", str(path), "--set", "grid.nlat=-3"], cli_env, tmp_path)
    assert_one_line_error(result, "grid.nlat")
    assert not (tmp_path / "run").exists()


def test_inspect_of_something_that_is_not_a_store_is_one_clear_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "notes.txt").write_text("not a store")
    assert_one_line_error(run_myriad(["inspect", str(tmp_path / "notes.txt")], cli_env, tmp_path), "notes.txt")
    assert_one_line_error(run_myriad(["inspect", str(tmp_path / "missing.zarr")], cli_env, tmp_path), "missing.zarr")


def test_a_missing_config_file_is_named(tmp_path: Path, cli_env: dict[str, str]) -> None:
    assert_one_line_error(run_myriad(["ingest", str(tmp_path / "nope.yaml")], cli_env, REPO_ROOT), "nope.yaml")
