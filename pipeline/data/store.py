"""The analysis store ``<run_dir>/analysis.zarr``: schema, creation, extension, block writes.

Layout (DESIGN.md section 3): Zarr format 3, one float32 variable per channel
with dims ``(time, latitude, longitude)`` and chunks ``(chunk_time, nlat,
nlon)``, Blosc-zstd; static fields as float32 ``(latitude, longitude)``;
coordinates ``time`` (CF ``hours since <start>``), ``latitude`` (descending)
and ``longitude`` with CF attributes.

The whole configured time axis is laid down when the store is created (a
metadata template whose unwritten chunks read as NaN), so time is regular,
sorted and unique by construction. Work is split into *blocks* of
``block_size`` consecutive times (block ``b`` covers time indices
``[b * block_size, min((b + 1) * block_size, n_times))``); ``chunk_time``
divides ``block_size``, so a block owns its chunks and parallel writers never
share one. The data variable ``block_complete`` (dim ``time_block``, int8,
chunk 1) is set to 1 for a block only after all of its data is written: a
killed writer leaves 0 behind, and a rerun rewrites exactly those blocks.

Every later stage opens the store with :func:`open_analysis`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from pipeline import __version__
from pipeline.config import INGEST_SECTIONS, MyriadConfig
from pipeline.data.channels import channel_attrs
from pipeline.data.sources.canonical import time_axis as canonical_time_axis
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from pipeline.zarr_metadata import drop_consolidated

logger = logging.getLogger(__name__)

COMPLETE_VAR = "block_complete"
"""Name of the per-block completion record."""
BLOCK_DIM = "time_block"
TITLE = "Myriad analysis store"
TIME_FORMAT = "%Y-%m-%dT%H:%M"

StoreLike = str | Path | zarr.Group


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class StoreLayout:
    """Shape of an analysis store as derived from a run config.

    Parameters
    ----------
    times
        The full, regular time axis ``start, start + step, ..., end``.
    grid
        Canonical grid.
    channels, static
        Channel and static-field names, in config order.
    block_size, chunk_time, compression_level
        From ``config.ingest``.
    """

    times: pd.DatetimeIndex
    grid: Grid
    channels: tuple[str, ...]
    static: tuple[str, ...]
    block_size: int
    chunk_time: int
    compression_level: int

    @classmethod
    def from_config(cls, config: MyriadConfig) -> "StoreLayout":
        return cls(
            times=time_axis(config),
            grid=config.grid.build(),
            channels=tuple(config.channels),
            static=tuple(config.static),
            block_size=config.ingest.block_size,
            chunk_time=config.ingest.chunk_time,
            compression_level=config.ingest.compression_level,
        )

    @property
    def n_times(self) -> int:
        return len(self.times)

    @property
    def n_blocks(self) -> int:
        """``ceil(n_times / block_size)``."""
        return -(-self.n_times // self.block_size)

    def block_slice(self, block: int) -> slice:
        """Time indices of ``block``."""
        return slice(block * self.block_size, min((block + 1) * self.block_size, self.n_times))

    def block_times(self, block: int) -> pd.DatetimeIndex:
        """Times of ``block``."""
        return self.times[self.block_slice(block)]

    def block_nbytes(self, block: int) -> int:
        """Uncompressed float32 bytes of the channel data of ``block``."""
        n = len(self.block_times(block))
        return n * len(self.channels) * self.grid.nlat * self.grid.nlon * 4


def time_axis(config: MyriadConfig) -> pd.DatetimeIndex:
    """The configured regular time axis (``time.start`` to ``time.end`` inclusive), datetime64[ns]."""
    return canonical_time_axis(config.time.start, config.time.end, config.time.step_hours).rename("time")


def format_time(t: Any) -> str:
    """A timestamp as ``YYYY-MM-DDTHH:MM``."""
    return pd.Timestamp(t).strftime(TIME_FORMAT)


def contiguous_ranges(times: pd.DatetimeIndex, step: pd.Timedelta) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Group sorted ``times`` into runs spaced by ``step``: ``[(first, last), ...]``."""
    if len(times) == 0:
        return []
    breaks = np.flatnonzero(np.diff(times.values) != step.to_timedelta64()) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks - 1, [len(times) - 1]])
    return [(times[s], times[e]) for s, e in zip(starts, ends)]


def format_ranges(ranges: list[tuple[pd.Timestamp, pd.Timestamp]], limit: int = 5) -> str:
    """``"A .. B, C .. D"`` (at most ``limit`` ranges, then a count)."""
    parts = [format_time(a) if a == b else f"{format_time(a)} .. {format_time(b)}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"and {len(ranges) - limit} more")
    return ", ".join(parts)


# --------------------------------------------------------------------------- attributes


def ingest_config_json(config: MyriadConfig) -> dict[str, Any]:
    """The config sections that determine the store's content, as plain JSON."""
    return json.loads(json.dumps(config.model_dump(mode="json", include=set(INGEST_SECTIONS)), default=str))


def _global_attrs(config: MyriadConfig, source_name: str, layout: StoreLayout) -> dict[str, Any]:
    return {
        "title": TITLE,
        "Conventions": "CF-1.8",
        "source": source_name,
        "grid": layout.grid.name,
        "time_step_hours": config.time.step_hours,
        "channels": list(layout.channels),
        "static": list(layout.static),
        "software": f"myriad {__version__}",
        "config_hash": config.section_hash(*INGEST_SECTIONS),
        "ingest_config": json.dumps(ingest_config_json(config), sort_keys=True),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "block_size": layout.block_size,
        "chunk_time": layout.chunk_time,
        "n_blocks": layout.n_blocks,
        "time_coverage_start": format_time(layout.times[0]),
        "time_coverage_end": format_time(layout.times[-1]),
    }


def _time_encoding(start: pd.Timestamp) -> dict[str, Any]:
    return {
        "units": f"hours since {start.strftime('%Y-%m-%d %H:%M:%S')}",
        "calendar": "proleptic_gregorian",
        "dtype": "int64",
        "chunks": None,
    }


# --------------------------------------------------------------------------- creation


def create_store(config: MyriadConfig, source_name: str, static: xr.Dataset) -> Path:
    """Lay down the metadata template of the whole configured store.

    Writes coordinates, static fields, attributes and an all-zero
    ``block_complete``; channel arrays are created but not written (they read
    as NaN). The template is built in a sibling directory and renamed into
    place, so a killed creation never leaves a half-made store behind.

    Parameters
    ----------
    config
        The run config.
    source_name
        Written to the ``source`` attribute.
    static
        Static fields ``(latitude, longitude)`` holding every ``config.static`` name.
    """
    layout = StoreLayout.from_config(config)
    path = config.analysis_path
    grid = layout.grid
    time = xr.DataArray(layout.times.values.astype("datetime64[ns]"), dims="time",
                        attrs={"standard_name": "time", "long_name": "time", "axis": "T"})
    coords = {"time": time, **grid.coords()}
    shape = (layout.n_times, grid.nlat, grid.nlon)
    chunks = (layout.chunk_time, grid.nlat, grid.nlon)
    compressor = BloscCodec(cname="zstd", clevel=layout.compression_level, shuffle="shuffle")
    variables: dict[str, xr.DataArray] = {}
    encoding: dict[str, dict[str, Any]] = {"time": _time_encoding(layout.times[0])}
    for name in layout.channels:
        variables[name] = xr.DataArray(da.zeros(shape, chunks=chunks, dtype="float32"),
                                       dims=("time", "latitude", "longitude"), attrs=channel_attrs(name))
        encoding[name] = {"chunks": chunks, "compressors": (compressor,)}
    for name in layout.static:
        values = static[name].transpose("latitude", "longitude").values.astype("float32")
        variables[name] = xr.DataArray(values, dims=("latitude", "longitude"), attrs=channel_attrs(name))
        encoding[name] = {"chunks": (grid.nlat, grid.nlon), "compressors": (compressor,)}
    variables[COMPLETE_VAR] = xr.DataArray(np.zeros(layout.n_blocks, dtype="int8"), dims=BLOCK_DIM, attrs=_complete_attrs(layout))
    encoding[COMPLETE_VAR] = {"chunks": (1,)}
    template = xr.Dataset(variables, coords=coords, attrs=_global_attrs(config, source_name, layout))

    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    template.to_zarr(partial, mode="w", compute=False, zarr_format=3, consolidated=False, encoding=encoding)
    os.rename(partial, path)
    logger.info("created %s: %d times x %d channels on %s, %d blocks", path, layout.n_times, len(layout.channels), grid.name, layout.n_blocks)
    return path


def _complete_attrs(layout: StoreLayout) -> dict[str, Any]:
    return {
        "long_name": "time block completion flag",
        "flag_values": [0, 1],
        "flag_meanings": "incomplete complete",
        "description": (
            f"1 once every channel of time block b (time indices b*{layout.block_size} to "
            f"(b+1)*{layout.block_size}-1) is written; 0 blocks read as NaN or hold partial data "
            "and are rewritten by the next ingest"
        ),
    }


# --------------------------------------------------------------------------- existing stores


@dataclass(frozen=True)
class StorePlan:
    """What an ingest must do to an existing (or missing) store.

    Attributes
    ----------
    action
        ``create`` (no store yet), ``resume`` (same config) or ``extend``
        (same config except a later ``time.end``).
    pending
        Blocks to (re)write, ascending.
    old_end
        The store's current last time (``extend`` only).
    """

    action: Literal["create", "resume", "extend"]
    pending: tuple[int, ...]
    old_end: pd.Timestamp | None = None


def open_store_group(store: StoreLike, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """The store's Zarr group (no data read); raises unless it is a Myriad analysis store."""
    if isinstance(store, zarr.Group):
        return store
    path = Path(store)
    if not path.exists():
        raise MyriadError(f"analysis store {path}: does not exist (run `myriad ingest CONFIG` first)")
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)
    except Exception as exc:  # zarr raises several types for unreadable stores
        raise MyriadError(f"analysis store {path}: not a readable Zarr v3 store ({exc})") from None
    if group.attrs.get("title") != TITLE or COMPLETE_VAR not in group:
        raise MyriadError(f"analysis store {path}: not a Myriad analysis store (no '{COMPLETE_VAR}' record or title)")
    return group


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def config_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dumps: ``{key: (stored, wanted)}``."""
    a, b = _flatten(stored), _flatten(wanted)
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


def plan_store(config: MyriadConfig) -> StorePlan:
    """Decide how ingest treats ``config.analysis_path`` without modifying it.

    Raises
    ------
    MyriadError
        The store was written from a different config (other than a later
        ``time.end``), or is not a Myriad analysis store.
    """
    path = config.analysis_path
    layout = StoreLayout.from_config(config)
    if not path.exists():
        return StorePlan("create", tuple(range(layout.n_blocks)))
    group = open_store_group(path)
    attrs = group.attrs
    done = np.asarray(group[COMPLETE_VAR][:])
    if attrs.get("config_hash") == config.section_hash(*INGEST_SECTIONS):
        return StorePlan("resume", tuple(int(b) for b in np.flatnonzero(done == 0)))

    stored = json.loads(attrs.get("ingest_config", "{}"))
    diffs = config_differences(stored, ingest_config_json(config))
    old_end = pd.Timestamp(stored.get("time", {}).get("end"))
    if set(diffs) == {"time.end"}:
        new_end = layout.times[-1]
        if new_end < old_end:
            raise MyriadError(
                f"analysis store {path}: ends at {format_time(old_end)} but time.end is {format_time(new_end)}; "
                "a store is never shortened (use another run_dir, or select times when reading)"
            )
        old_n_times = int((old_end - layout.times[0]) / config.time.step) + 1
        old_partial = old_n_times % layout.block_size != 0
        pending = [
            b for b in range(layout.n_blocks)
            if b >= len(done) or done[b] == 0 or (old_partial and b == (old_n_times - 1) // layout.block_size)
        ]
        return StorePlan("extend", tuple(pending), old_end)
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in diffs.items())
    raise MyriadError(
        f"analysis store {path}: was written with a different config ({listed}). Only a later time.end "
        "extends an existing store; use another run_dir or remove the store to rebuild it"
    )


def extend_store(config: MyriadConfig, plan: StorePlan) -> None:
    """Grow the time axis of an existing store to ``config.time.end``.

    Channel arrays and ``block_complete`` are resized (new chunks read as NaN
    and 0), the time coordinate is rewritten, a previously partial last block
    is marked incomplete (it gains times), and the attributes are updated last,
    so an extension killed half-way is simply redone by the next ingest.
    """
    layout = StoreLayout.from_config(config)
    drop_consolidated(config.analysis_path)
    group = open_store_group(config.analysis_path, mode="r+")
    done = np.asarray(group[COMPLETE_VAR][:])
    for block in plan.pending:
        if block < len(done) and done[block]:
            group[COMPLETE_VAR][block] = 0
    group[COMPLETE_VAR].resize((layout.n_blocks,))
    for name in layout.channels:
        group[name].resize((layout.n_times, layout.grid.nlat, layout.grid.nlon))
    time = group["time"]
    start = layout.times[0]
    time.resize((layout.n_times,))
    time[:] = ((layout.times - start) // pd.Timedelta(hours=1)).values.astype("int64")
    group.attrs.update({
        "config_hash": config.section_hash(*INGEST_SECTIONS),
        "ingest_config": json.dumps(ingest_config_json(config), sort_keys=True),
        "n_blocks": layout.n_blocks,
        "time_coverage_end": format_time(layout.times[-1]),
        "extended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    logger.info("extended %s from %s to %s (%d blocks)", config.analysis_path, format_time(plan.old_end), format_time(layout.times[-1]), layout.n_blocks)


# --------------------------------------------------------------------------- block writes


def write_block(path: str | Path, block: int, block_size: int, data: xr.Dataset, channels: tuple[str, ...] | list[str]) -> None:
    """Write one validated block's channels into its own chunks, then mark it complete.

    ``data`` holds the block's times in order, starting at time index
    ``block * block_size``.
    """
    group = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    start = block * block_size
    stop = start + data.sizes["time"]
    for name in channels:
        # validated data hold no NaN, so skip zarr's per-chunk comparison with the fill value
        array = group[name].with_config({"write_empty_chunks": True})
        array[start:stop] = data[name].transpose("time", "latitude", "longitude").values
    group[COMPLETE_VAR][block] = 1


# --------------------------------------------------------------------------- reading


def completed_blocks(store: StoreLike) -> np.ndarray:
    """The completion record: bool array, one entry per time block."""
    return np.asarray(open_store_group(store)[COMPLETE_VAR][:]) == 1


def is_complete(store: StoreLike) -> bool:
    """True when every time block of the store is written."""
    return bool(completed_blocks(store).all())


def missing_time_ranges(store: StoreLike) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Time ranges ``[(first, last), ...]`` of the incomplete blocks."""
    group = open_store_group(store)
    done = np.asarray(group[COMPLETE_VAR][:]) == 1
    if done.all():
        return []
    times = store_times(group)
    block_size = int(group.attrs["block_size"])
    index = np.arange(len(times))
    missing = times[~done[index // block_size]]
    return contiguous_ranges(missing, pd.Timedelta(hours=int(group.attrs["time_step_hours"])))


def store_times(store: StoreLike) -> pd.DatetimeIndex:
    """The store's time axis, decoded from the ``time`` array (reads metadata only)."""
    time = open_store_group(store)["time"]
    units = str(time.attrs["units"])
    origin = pd.Timestamp(units.split("since", 1)[1].strip())
    return pd.DatetimeIndex(origin + pd.to_timedelta(np.asarray(time[:]), unit="h"), name="time").as_unit("ns")


def open_analysis(path: str | Path, require_complete: bool = True, chunks: Any = "auto") -> xr.Dataset:
    """Open the analysis store: THE way every later stage reads it.

    Parameters
    ----------
    path
        ``<run_dir>/analysis.zarr``.
    require_complete
        Raise unless every time block is written.
    chunks
        Passed to :func:`xarray.open_zarr` (``{}``: the store's chunks;
        ``None``: no Dask).

    Returns
    -------
    xarray.Dataset
        Channels, static fields and coordinates, without ``block_complete``.

    Raises
    ------
    MyriadError
        Missing or foreign store, or (with ``require_complete``) incomplete
        blocks, listing the missing time ranges.
    """
    path = Path(path)
    group = open_store_group(path)
    if require_complete:
        missing = missing_time_ranges(group)
        if missing:
            raise MyriadError(
                f"analysis store {path}: incomplete, no data yet for {format_ranges(missing)} "
                "(rerun `myriad ingest CONFIG` to finish it)"
            )
    ds = xr.open_zarr(path, consolidated=False, zarr_format=3, chunks=chunks)
    return ds.drop_vars(COMPLETE_VAR)


def store_matches_config(config: MyriadConfig) -> bool:
    """True when ``config.analysis_path`` is complete and was written from this config."""
    try:
        group = open_store_group(config.analysis_path)
    except MyriadError:
        return False
    return group.attrs.get("config_hash") == config.section_hash(*INGEST_SECTIONS) and is_complete(group)
