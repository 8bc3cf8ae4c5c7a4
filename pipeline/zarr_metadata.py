"""Consolidated metadata for our finished Zarr 3 stores.

Consolidated metadata is not part of the Zarr 3 spec, but ``xr.open_zarr``
looks for it first (and warns without it) and remote readers open a store
with one request instead of one per array. A store is consolidated only once
its completion record is full; a writer that changes metadata afterwards (the
analysis store's time extension) drops it first, so the consolidated view is
never stale. Chunk writes do not touch metadata.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import zarr


def consolidate(path: str | Path) -> None:
    """Write consolidated metadata into the root ``zarr.json`` of a finished store."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(str(path), zarr_format=3)


def drop_consolidated(path: str | Path) -> None:
    """Remove consolidated metadata from the root ``zarr.json`` (atomically, by rename)."""
    root = Path(path) / "zarr.json"
    metadata = json.loads(root.read_text())
    if metadata.pop("consolidated_metadata", None) is None:
        return
    partial = root.with_name("zarr.json.partial")
    partial.write_text(json.dumps(metadata, indent=2))
    os.replace(partial, root)
