"""Fault: an ingest killed with SIGKILL mid-way, then rerun, equals an uninterrupted ingest.

The killed run is a real subprocess (``python -m pipeline.data.ingest``)
ingesting the shallow-water planet in many small blocks; the test polls the
store's completion record and kills the process once some, but not all,
blocks are complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline.config import load_config
from pipeline.data.ingest import ingest
from pipeline.data.store import COMPLETE_VAR, completed_blocks, open_analysis
from pipeline.errors import MyriadError

N_BLOCKS = 40
CONFIG = """\
run_dir: {run_dir}
source: {{kind: planet, seed: 7, spinup_days: 1}}
grid: {{nlat: 25, nlon: 48}}
channels: [z500, u500, v500, tp6h]
time: {{start: 2000-01-01T00:00, end: 2000-01-20T18:00, step_hours: 6}}
ingest: {{block_size: 2, chunk_time: 1}}
dask: {{cluster: threads, n_workers: 2}}
"""


def _write_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(run_dir=tmp_path / name))
    return path


def _done(store: Path) -> int:
    try:
        return int(completed_blocks(store).sum())
    except MyriadError:  # not created yet
        return 0


def _kill_midway(config_path: Path, store: Path, log: Path) -> int:
    """Start the ingest, SIGKILL it once 3..N-3 blocks are complete; returns blocks done then."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipeline.data.ingest", str(config_path), "--no-progress"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        try:
            while process.poll() is None and time.monotonic() < deadline:
                done = _done(store)
                if 3 <= done <= N_BLOCKS - 3:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return done
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    pytest.fail(f"ingest ended (rc={process.returncode}) before it could be killed mid-way:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_killed_ingest_resumes_to_the_uninterrupted_store(tmp_path: Path) -> None:
    killed_config = _write_config(tmp_path, "killed")
    store = tmp_path / "killed" / "analysis.zarr"
    done_at_kill = _kill_midway(killed_config, store, tmp_path / "killed.log")

    flags = completed_blocks(store)
    assert not flags.all() and flags.sum() >= done_at_kill
    with pytest.raises(MyriadError, match="incomplete"):
        open_analysis(store)

    resumed = ingest(load_config(killed_config), progress=False)
    assert resumed.blocks_skipped == flags.sum() and resumed.blocks_written == N_BLOCKS - flags.sum()
    reference = ingest(load_config(_write_config(tmp_path, "reference")), progress=False)
    assert reference.blocks_written == N_BLOCKS

    a = xr.open_zarr(store, consolidated=False)
    b = xr.open_zarr(reference.path, consolidated=False)
    assert (a[COMPLETE_VAR].values == 1).all()
    for name in ("z500", "u500", "v500", "tp6h"):
        left, right = a[name].values, b[name].values
        assert np.isfinite(left).all()
        assert np.array_equal(left.view(np.uint32), right.view(np.uint32)), f"{name} differs from the uninterrupted run"
    for coord in ("time", "latitude", "longitude"):
        xr.testing.assert_identical(a[coord], b[coord])
    times = a.time.values
    assert len(np.unique(times)) == len(times) == N_BLOCKS * 2
    assert (np.diff(times) == np.timedelta64(6, "h")).all()
