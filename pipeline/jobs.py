"""Run a stage's job (torchrun or a plain entry point) as a watched subprocess.

The job's merged stdout/stderr is passed line by line to a callback (the
Prefect logger, or the console) without the job's own timestamp, which the
callback adds again. The job runs in its own process group, so a failure or
interruption of the watcher terminates the job and every rank it started;
on Linux the job also receives SIGTERM when the watcher dies without
cleaning up (SIGKILL), via ``PR_SET_PDEATHSIG``, so a killed ``myriad run``
leaves no orphaned training or ensemble job writing behind a rerun
(torchrun forwards the SIGTERM to its ranks).
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

from pipeline.errors import MyriadError

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+\s+")
_PR_SET_PDEATHSIG = 1


def shell_line(command: Sequence[str], env: dict[str, str]) -> str:
    """``command`` with its extra environment, as one copy-pasteable shell line."""
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return (assignments + " " if assignments else "") + shlex.join(command)


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_job(command: Sequence[str], env: dict[str, str], on_line: Callable[[str], None], error_prefix: str,
            failure: str) -> None:
    """Run ``command`` to completion, streaming its output to ``on_line``.

    Raises
    ------
    MyriadError
        The job exited non-zero: the text after ``error_prefix`` of the first
        line that carries it (the job's own one-line error), else ``failure``
        with the exit status.
    """
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, **env}, start_new_session=True, preexec_fn=_die_with_parent,
    )
    error_line: str | None = None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            on_line(_TIMESTAMP.sub("", line))
            if error_line is None and error_prefix in line:
                error_line = line.split(error_prefix, 1)[1]
        code = process.wait()
    except BaseException:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    if code != 0:
        raise MyriadError(error_line or f"{failure} (exit status {code}); see the log above")
