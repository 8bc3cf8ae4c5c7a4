"""The main job, ``myriad run CONFIG``, on a tiny planet run with every stage configured.

One uninterrupted run is the reference. Then: a rerun with nothing changed
skips every stage (Prefect reports the cached stages; no output file is
rewritten); a run killed with SIGKILL part-way (process group, torchrun
children included) and rerun ends with the same outputs as the reference; and
the README's query examples run against the real outputs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from tests.conftest import MYRIAD, REPO_ROOT
from tests.ensemble_fixtures import planet_run

pytestmark = pytest.mark.slow


DIAGNOSTICS = {"regions": ["global", "tropics"], "quantiles": [0.95], "reliability_bins": 5}


def _write_config(root: Path) -> Path:
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({**planet_run(root), "diagnostics": DIAGNOSTICS}, sort_keys=False))
    return path


def _run(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MYRIAD, "run", str(config)], env=env, cwd=config.parent, capture_output=True,
                          text=True, timeout=900)


def _mtimes(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*")
            if p.is_file() and ".planet-state" not in p.parts}


def _processes_using(config: Path) -> list[int]:
    """PIDs whose command line names ``config`` (the CLI, torchrun and its ranks)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(config).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]["state_dict"]


def assert_same_outputs(run_dir: Path, reference_dir: Path) -> None:
    """Analysis, statistics, checkpoint weights and ensemble equal the reference run's."""
    xr.testing.assert_identical(xr.open_zarr(run_dir / "analysis.zarr").load(),
                                xr.open_zarr(reference_dir / "analysis.zarr").load().assign_attrs(
                                    xr.open_zarr(run_dir / "analysis.zarr").attrs))
    with xr.open_dataset(run_dir / "stats.nc") as got, xr.open_dataset(reference_dir / "stats.nc") as want:
        xr.testing.assert_equal(got, want)
    for seed in (0, 1):
        got, want = (_weights(d / "checkpoints" / "tiny" / f"seed-{seed}" / "last.pt") for d in (run_dir, reference_dir))
        assert got.keys() == want.keys()
        for name in got:
            assert torch.equal(got[name], want[name]), name
    ensemble = xr.open_zarr(run_dir / "ensembles" / "base.zarr")
    reference = xr.open_zarr(reference_dir / "ensembles" / "base.zarr")
    for name in ("z500", "u500", "tp6h"):
        np.testing.assert_array_equal(ensemble[name].values, reference[name].values)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("e2e-reference")
    env = dict(os.environ, PREFECT_API_URL=prefect_api_url, PYTHONPATH=str(REPO_ROOT))
    result = _run(_write_config(root), env)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, result


def test_the_main_job_writes_every_stage_and_says_how_to_open_it(reference) -> None:
    root, result = reference
    run_dir = root / "run"
    assert (run_dir / "analysis.zarr").is_dir() and (run_dir / "stats.nc").is_file()
    for seed in (0, 1):
        directory = run_dir / "checkpoints" / "tiny" / f"seed-{seed}"
        assert (directory / "last.pt").is_file() and (directory / "calibration.json").is_file()
    ensemble = xr.open_zarr(run_dir / "ensembles" / "base.zarr")
    assert dict(ensemble.z500.sizes) == {"init_time": 2, "member": 10, "lead_time": 4, "latitude": 17, "longitude": 32}
    diagnostics = xr.open_zarr(run_dir / "diagnostics" / "diagnostics.zarr")
    assert {"rmse", "spread", "crps"} <= set(diagnostics.data_vars)
    assert (run_dir / "report" / "diagnostics" / "index.html").is_file()
    output = result.stdout + result.stderr
    assert 'xr.open_zarr("' in output and "ensemble = xr.open_zarr(" in output


def test_a_rerun_with_nothing_changed_skips_every_stage(reference, cli_env: dict[str, str]) -> None:
    root, _ = reference
    before = _mtimes(root / "run")
    started = time.monotonic()
    result = _run(root / "tiny.yaml", cli_env)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert len(re.findall(r"Finished in state Cached", output)) >= 6, output  # ingest, stats, 2 inits, diagnose, report
    assert output.count("already trained") == 2, output  # both seeds return at once
    assert _mtimes(root / "run") == before
    print(f"rerun with nothing changed: {seconds:.1f} s")


def test_a_change_to_the_diagnostics_section_reruns_only_diagnostics(reference, cli_env: dict[str, str]) -> None:
    root, _ = reference
    before = _mtimes(root / "run")
    result = subprocess.run([*MYRIAD, "run", str(root / "tiny.yaml"), "--set", "diagnostics.reliability_bins=4"],
                            env=cli_env, cwd=root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    after = _mtimes(root / "run")
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed and all(name.startswith(("diagnostics/", "report/")) for name in changed), sorted(changed)[:10]


def test_a_run_killed_part_way_and_rerun_ends_with_the_same_outputs(reference, tmp_path: Path, cli_env: dict[str, str]) -> None:
    reference_root, _ = reference
    config = _write_config(tmp_path)
    process = subprocess.Popen([*MYRIAD, "run", str(config)], env=cli_env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = tmp_path / "run" / "checkpoints" / "tiny"
    deadline = time.monotonic() + 600
    while not checkpoints.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # mid-training, the CLI's group only: no clean-up code runs
    process.wait()
    deadline = time.monotonic() + 60  # the training job (its own process group) gets SIGTERM from the kernel
    while _processes_using(config) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_using(config), "an orphaned job would write behind the rerun"
    assert not (tmp_path / "run" / "ensembles" / "base.zarr").exists()

    result = _run(config, cli_env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_outputs(tmp_path / "run", reference_root / "run")


def test_the_readme_query_examples_run_on_real_outputs(reference, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = reference
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "runs/quickstart" in b]
    assert blocks, "README has no query examples"
    monkeypatch.chdir(root)
    for block in blocks:
        # the tiny run: other paths, model name and dates than the quickstart's
        code = (block.replace("runs/quickstart", "run").replace("checkpoints/sfno", "checkpoints/tiny")
                .replace('"2001-07"', '"2000-01"').replace("ensembles/quickstart.zarr", "ensembles/base.zarr")
                .replace("diagnostics/quickstart.zarr", "diagnostics/diagnostics.zarr"))
        exec(compile(code, "README.md", "exec"), {})
