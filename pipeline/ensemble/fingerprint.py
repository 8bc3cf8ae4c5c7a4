"""Cache key of one init time of an ensemble (for the Prefect flow; reads metadata only).

The key is ``None`` unless the ensemble store exists, was made for this
plan, and every work unit of the init time is marked complete; then it is a
hash of the config sections the data depend on (``ensemble`` and the ingest
sections), the checkpoint and calibration files' sizes and modification
times, the store's content key and the init time. A retrained checkpoint or
a changed config gives a new key, so the flow reruns the generator (which
then refuses a store made for other inputs).
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


def ensemble_fingerprint(config: MyriadConfig, init_time: InitTime) -> str | None:
    """Key of a complete init time of the configured ensemble, else None."""
    settings = config.ensemble
    if settings is None:
        return None
    plan = settings.plan()
    t0 = canonical_init_time(init_time)
    path = settings.store_path(config.run_dir)
    if t0 not in plan.init_times or not path.is_dir():
        return None
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        layout = json.loads(group.attrs[LAYOUT_ATTR])
        complete = np.asarray(group[COMPLETE_VAR][plan.init_times.index(t0), :])
        files = [resolve_checkpoint(p) for p in settings.checkpoints]
        stamps = [_file_stamp(f) for f in files] + [_file_stamp(f.parent / CALIBRATION_FILE) for f in files]
    except (OSError, KeyError, ValueError, MyriadError):
        return None
    if layout.get("plan") != plan.describe() or not np.all(complete == 1):
        return None
    text = json.dumps({"config": config.section_hash("ensemble", *INGEST_SECTIONS), "files": stamps,
                       "content": layout.get("content_key"), "store": str(path.resolve())}, sort_keys=True)
    iso = np.datetime_as_string(t0, unit="m")
    return f"ensemble-{hashlib.sha256(text.encode()).hexdigest()[:16]}-{iso}"
