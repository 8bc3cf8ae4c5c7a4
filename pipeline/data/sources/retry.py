"""Retry a network call with exponential backoff.

Attempt ``n`` (0-based) that fails with a *transient* error is followed by a
wait of ``backoff_seconds * 2**n`` and another attempt, at most ``retries``
times. Errors the user can fix (:class:`MyriadError`, and whatever the
caller's ``is_transient`` rejects) are raised at once; when the retries are
spent the last transient error becomes a :class:`MyriadError`. Messages pass
through ``redact`` before they are logged or raised, so secrets (an API key)
never reach logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    retries: int,
    backoff_seconds: float,
    is_transient: Callable[[BaseException], bool],
    redact: Callable[[str], str] = lambda text: text,
) -> T:
    """Call ``fn()``; retry transient failures with exponential backoff.

    Parameters
    ----------
    fn
        The call, without arguments.
    what
        Short description for logs and errors (``"CDS download X"``).
    retries
        Extra attempts after the first.
    backoff_seconds
        Base wait; attempt ``n`` waits ``backoff_seconds * 2**n`` after failing.
    is_transient
        True for errors worth retrying (network trouble).
    redact
        Applied to every error text before it is logged or raised.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except MyriadError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            detail = redact(f"{type(exc).__name__}: {exc}")
            if attempt >= retries:
                raise MyriadError(f"{what}: failed after {attempt + 1} attempt(s) ({detail})") from None
            delay = backoff_seconds * 2**attempt
            logger.warning(
                "%s: attempt %d of %d failed (%s); retrying in %.3g s", what, attempt + 1, retries + 1, detail, delay
            )
            time.sleep(delay)
            attempt += 1


def is_network_error(exc: BaseException) -> bool:
    """True for connection, timeout and remote-storage errors; False for missing paths and permissions."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ClientError", "HttpError", "TransportError", "RequestException"})
