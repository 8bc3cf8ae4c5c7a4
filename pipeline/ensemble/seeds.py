"""The one place where ensemble seeds are derived.

Every random draw of the ensemble stage takes its seed from
:func:`member_seed`, a pure function of the init time, the checkpoint index,
the bred-pair index, a purpose string and the run's base seed. Because the
seed depends on nothing else (not on the batch, rank, block or process), any
member can be regenerated alone, on any machine.

The seed is the first 8 bytes of a SHA-256 digest (big-endian) of the text
``"myriad-seed-v1|<init ISO>|<checkpoint>|<pair>|<purpose>|<base seed>"``,
with the top bit cleared so that it fits an int64 store coordinate and
:meth:`torch.Generator.manual_seed`. Python's ``hash()`` is not used: it is
salted per process.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import numpy as np

from pipeline.errors import MyriadError

BRED_VECTOR = "bred-vector"
"""Purpose of the seed field that starts a pair's bred vector (shared by its + and - members)."""

SAMPLING = "sampling"
"""Purpose prefix of a member's own stochastic-sampling (Monte Carlo dropout) noise."""

CONTROL_PAIR = -1
"""Pair index of a checkpoint's unperturbed control member."""

_SEED_MASK = (1 << 63) - 1

InitTime = datetime | np.datetime64 | str


def canonical_init_time(init_time: InitTime) -> np.datetime64:
    """An init time as ``numpy.datetime64`` at second precision, UTC.

    Naive datetimes and ISO strings are taken as UTC; aware datetimes are
    converted to UTC.
    """
    if isinstance(init_time, datetime) and init_time.tzinfo is not None:
        init_time = init_time.astimezone(timezone.utc).replace(tzinfo=None)
    try:
        value = np.datetime64(init_time, "s")
    except (ValueError, TypeError):
        raise MyriadError(f"init time {init_time!r}: not a date/time (expected e.g. 2000-01-15T00:00)") from None
    if np.isnat(value):
        raise MyriadError(f"init time {init_time!r}: not a date/time (expected e.g. 2000-01-15T00:00)")
    return value


def member_seed(
    init_time: InitTime,
    checkpoint_index: int,
    pair_index: int,
    purpose: str,
    *,
    base_seed: int = 0,
) -> int:
    """Seed of one random draw of one member, in ``[0, 2**63)``.

    Parameters
    ----------
    init_time
        Forecast initialisation time (datetime, numpy datetime64 or ISO
        string; seconds precision, UTC).
    checkpoint_index
        Index of the checkpoint in the member plan.
    pair_index
        Bred-pair index, or :data:`CONTROL_PAIR` for the control member.
    purpose
        What the seed is for (e.g. :data:`BRED_VECTOR`), so that different
        draws of one member are independent.
    base_seed
        The run's configured seed; changing it draws a new ensemble.

    Returns
    -------
    int
        ``int.from_bytes(sha256(text)[:8], "big") & (2**63 - 1)``, identical
        across processes, platforms and Python versions.
    """
    iso = np.datetime_as_string(canonical_init_time(init_time), unit="s")
    text = f"myriad-seed-v1|{iso}|{int(checkpoint_index)}|{int(pair_index)}|{purpose}|{int(base_seed)}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK
