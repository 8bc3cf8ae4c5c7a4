"""Shared test setup: an isolated PREFECT_HOME and one Prefect server per session.

Prefect's temporary server takes about 15 s to start here, so every test that
needs Prefect shares the session-scoped :func:`prefect_api_url` harness;
subprocesses (the CLI) reach the same server through ``PREFECT_API_URL``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="myriad-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("PREFECT_API_URL", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
MYRIAD = [sys.executable, "-m", "pipeline.cli"]
"""The CLI as a subprocess command (same interpreter as the tests)."""


def run_myriad(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``myriad ARGS`` as a user would (subprocess, captured output, 10 min limit)."""
    return subprocess.run([*MYRIAD, *args], check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 1, no traceback, exactly one ``error:`` line containing every fragment."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr.replace("\n", " "), result.stderr


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A real Prefect server for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def cli_env(prefect_api_url: str) -> dict[str, str]:
    """Environment for CLI subprocesses: the session's Prefect server, one thread."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = prefect_api_url
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env
