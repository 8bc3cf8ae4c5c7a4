"""deploy/prefect.yaml against a real Prefect server, deployed and run by a real process worker.

Starts ``prefect server start`` on loopback (its own PREFECT_HOME), creates
the process work pool, ``prefect deploy --all`` from the repository, starts
``prefect worker start``, runs the end-to-end deployment on a tiny planet
config and waits for it to complete; then checks the declared schedules.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import xarray as xr
import yaml

from tests.conftest import REPO_ROOT
from tests.test_cli import TINY_PLANET

PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A `prefect server start` on loopback; yields the environment that talks to it."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=api, MYRIAD_HOME=str(REPO_ROOT),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    log = (home / "server.log").open("w")
    process = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (home / "server.log").read_text()
            assert time.monotonic() < deadline, "prefect server did not start in 120 s"
            time.sleep(1)
        yield env
    finally:
        _stop(process)
        log.close()


def _prefect(args: list[str], env: dict[str, str], timeout: int = 300) -> str:
    result = subprocess.run([*PREFECT, "--no-prompt", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_deployments_from_prefect_yaml_run_on_a_process_worker(server: dict[str, str], tmp_path: Path) -> None:
    _prefect(["work-pool", "create", "myriad", "--type", "process"], server)
    _prefect(["deploy", "--all", "--prefect-file", "deploy/prefect.yaml"], server)

    api = server["PREFECT_API_URL"]
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    by_name = {d["name"]: d for d in deployments}
    declared = yaml.safe_load((REPO_ROOT / "deploy" / "prefect.yaml").read_text())["deployments"]
    assert set(by_name) == {d["name"] for d in declared}
    for spec in declared:
        crons = sorted(s["schedule"]["cron"] for s in by_name[spec["name"]].get("schedules", []))
        assert crons == sorted(s["cron"] for s in spec.get("schedules", [])), spec["name"]
        assert by_name[spec["name"]]["work_pool_name"] == "myriad"

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(TINY_PLANET, run_dir=str(tmp_path / "run"))))
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "myriad"], env=server, cwd=tmp_path,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = subprocess.run(
            [*PREFECT, "deployment", "run", "myriad-end-to-end/end-to-end", "--params",
             json.dumps({"config_path": str(config)}), "--watch", "--watch-timeout", "400"],
            env=server, cwd=REPO_ROOT, capture_output=True, text=True, timeout=450,
        )
    finally:
        _stop(worker)
        worker_log.close()
    log = (tmp_path / "worker.log").read_text()
    assert run.returncode == 0, run.stdout + run.stderr + log
    assert "Completed" in run.stdout, run.stdout
    assert xr.open_zarr(tmp_path / "run" / "analysis.zarr").sizes["time"] == 40
    assert (tmp_path / "run" / "stats.nc").is_file()
