"""Cache key and readiness of one init time of an ensemble (for the Prefect flow; metadata only).

The key is a hash of the config sections the data depend on (``ensemble``
and the ingest sections), the checkpoint and calibration files' sizes and
modification times, the store path and the init time: known before the
generator runs and the same after. A retrained checkpoint or a changed
config gives a new key. The flow refreshes the cache unless
:func:`ensemble_ready` finds the store made for this plan with every work
unit of the init time marked complete (see :mod:`pipeline.fingerprints`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import zarr

from pipeline.config import INGEST_SECTIONS, MyriadConfig
from pipeline.ensemble.inputs import resolve_checkpoint
from pipeline.ensemble.seeds import InitTime, canonical_init_time
from pipeline.ensemble.store import COMPLETE_VAR, LAYOUT_ATTR
from pipeline.errors import MyriadError
from pipeline.training.calibration import CALIBRATION_FILE


def _file_stamp(path: Path) -> list[str | int]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def ensemble_key(config: MyriadConfig, init_time: InitTime) -> str | None:
    """Cache key of one init time; None (no caching) without an ensemble section or checkpoints."""
    settings = config.ensemble
    if settings is None:
        return None
    try:
        files = [resolve_checkpoint(p) for p in settings.checkpoints]
        stamps = [_file_stamp(f) for f in files] + [_file_stamp(f.parent / CALIBRATION_FILE) for f in files]
    except (OSError, MyriadError):
        return None  # the generator reports the missing file itself
    path = settings.store_path(config.run_dir)
    text = json.dumps({"config": config.section_hash("ensemble", *INGEST_SECTIONS), "files": stamps,
                       "store": str(path.resolve())}, sort_keys=True)
    iso = np.datetime_as_string(canonical_init_time(init_time), unit="m")
    return f"ensemble-{hashlib.sha256(text.encode()).hexdigest()[:16]}-{iso}"


def ensemble_ready(config: MyriadConfig, init_time: InitTime) -> bool:
    """True when the store was made for this plan and every unit of ``init_time`` is complete."""
    settings = config.ensemble
    if settings is None:
        return False
    plan = settings.plan()
    t0 = canonical_init_time(init_time)
    path = settings.store_path(config.run_dir)
    if t0 not in plan.init_times or not path.is_dir():
        return False
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        layout = json.loads(group.attrs[LAYOUT_ATTR])
        complete = np.asarray(group[COMPLETE_VAR][plan.init_times.index(t0), :])
    except (OSError, KeyError, ValueError):
        return False
    return layout.get("plan") == plan.describe() and bool(np.all(complete == 1))
