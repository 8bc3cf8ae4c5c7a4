"""The ensemble store ``<run_dir>/ensembles/<name>.zarr`` and its background writer.

Layout (DESIGN.md section 3): Zarr format 3 (read with ``xr.open_zarr``),
Blosc-zstd, one float32 variable per output channel with dims
``(init_time, member, lead_time, latitude, longitude)`` and chunks
``(1, member_block, 1, nlat, nlon)``: one chunk per work unit, lead time and
channel, so a reader of one lead reads only that lead. With
``leads_per_shard = L > 1`` the chunks are grouped into shards
``(1, member_block, L, nlat, nlon)`` of ``L`` consecutive leads: a shard is
one file and the smallest write, so writers of different units never share
a shard, and a unit of ``n`` leads makes ``ceil(n / L)`` files per channel
instead of ``n``. The background writer then gathers ``L`` leads and writes
the shard whole (no read). Measured at the quickstart size (67 kB chunks,
41 leads): writing cost 0.5 instead of 1.3-1.7 ms per lead and channel, but
the diagnostics stage's partial reads took 2x longer (80 s instead of 40 s of
compute), so shards are off by default. Coordinates:

- ``init_time`` (datetime64), ``member`` (int), ``lead_time`` (timedelta64,
  0 = the initial state; with ``ensemble.time_mean_hours`` each later lead
  holds the mean over the window ending there, attribute
  ``time_mean_hours``), ``latitude`` / ``longitude`` (:meth:`Grid.coords`);
- ``valid_time(init_time, lead_time)`` = init_time + lead_time;
- per member: ``checkpoint`` (index; attr ``paths`` lists the checkpoint
  files), ``perturbation`` (+1, -1, 0 = control), ``pair`` (-1 = control),
  ``sample`` (stochastic sample of a bred member: its own dropout noise);
- ``seed(init_time, member)`` (int64): the member's bred-pair seed, which
  depends on the init time (:mod:`pipeline.ensemble.seeds`).

The completion record is the data variable ``unit_complete(init_time,
member_block)`` (int8, chunk 1x1, uncompressed so that setting it is a
one-byte write): 1 once every lead time of every channel of the unit is
written. Unwritten data reads as NaN. A rerun skips complete units and
rewrites partial ones from lead 0.

The whole template (coordinates, attributes, empty arrays, zeroed record) is
written up front into a hidden sibling directory and renamed into place, so
a killed creation leaves nothing that looks like a store, and concurrent
creators (ranks) race safely: the loser validates the winner's store.
Reopening a store whose plan, channels, grid, lead times or content key
differ raises :class:`MyriadError` naming the differences.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from pipeline import __version__
from pipeline.data.channels import channel_attrs
from pipeline.data.store import config_differences
from pipeline.ensemble.plan import EnsemblePlan, WorkUnit
from pipeline.errors import MyriadError
from pipeline.grid import Grid

logger = logging.getLogger(__name__)

TITLE = "Myriad ensemble store"
COMPLETE_VAR = "unit_complete"
BLOCK_DIM = "member_block"
DIMS = ("init_time", "member", "lead_time", "latitude", "longitude")
LAYOUT_ATTR = "myriad_layout"
"""Global attribute (JSON) holding the store's identity, compared on reuse."""


def _lead_times_ns(lead_times: Sequence[timedelta] | np.ndarray) -> np.ndarray:
    values = np.asarray(lead_times)
    if values.dtype.kind != "m":
        values = np.array([np.timedelta64(t) for t in lead_times])
    values = values.astype("timedelta64[ns]")
    if len(values) == 0 or values[0] != np.timedelta64(0) or np.any(np.diff(values) <= np.timedelta64(0)):
        raise MyriadError(f"ensemble store: lead times must start at 0 and increase, got {list(values)}")
    return values


class EnsembleStore:
    """An ensemble store on disk, bound to its member plan.

    Use :meth:`create` (creates, or reopens an identical store). Writes go
    straight to the Zarr arrays (region writes within one unit's shards), so
    any number of processes can write different units at once.
    """

    def __init__(self, path: Path, plan: EnsemblePlan, channels: tuple[str, ...], grid: Grid, n_leads: int) -> None:
        self.path = path
        self.plan = plan
        self.channels = channels
        self.grid = grid
        self.n_leads = n_leads
        self._group = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
        self._arrays = [self._group[name] for name in channels]
        self._complete = self._group[COMPLETE_VAR]
        shards = self._arrays[0].shards
        self.leads_per_shard = shards[2] if shards is not None else 1
        """Lead times per shard: the leads a whole-shard write covers."""

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        path: str | Path,
        plan: EnsemblePlan,
        channels: Sequence[str],
        grid: Grid,
        lead_times: Sequence[timedelta] | np.ndarray,
        content_key: str = "",
        compression_level: int = 3,
        attrs: Mapping[str, Any] | None = None,
        shard_leads: int = 1,
    ) -> "EnsembleStore":
        """Create the store's template, or reopen it if it has the same identity.

        Parameters
        ----------
        path
            ``<run_dir>/ensembles/<name>.zarr`` (:meth:`EnsembleConfig.store_path`).
        plan
            Members, blocks and init times.
        channels
            Output channels, in the order of ``write_lead``'s channel axis.
        grid
            The model grid.
        lead_times
            Lead times, starting at 0 (the initial state).
        content_key
            Hash of whatever else determines the data (model checkpoints'
            identity, perturbation settings...); part of the identity.
        compression_level
            Blosc-zstd level of the channel arrays.
        attrs
            Extra global attributes (not part of the identity).
        shard_leads
            Lead times per shard (capped at the lead count); 1: no shards.
            Part of the identity when > 1.

        Raises
        ------
        MyriadError
            The path holds something else, or a store with another identity.
        """
        path = Path(path)
        channels = tuple(channels)
        leads = _lead_times_ns(lead_times)
        shard = min(shard_leads, len(leads))
        identity = {
            "format": 1,
            "plan": plan.describe(),
            "channels": list(channels),
            "grid": {"nlat": grid.nlat, "nlon": grid.nlon},
            "lead_times_s": [int(t // np.timedelta64(1, "s")) for t in leads],
            "content_key": content_key,
            **({"leads_per_shard": shard} if shard > 1 else {}),  # stores without shards keep the identity they had
        }
        if not path.exists():
            template = _template(plan, channels, grid, leads, identity, compression_level, attrs or {})
            partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                template.to_zarr(partial, mode="w-", compute=False, zarr_format=3, consolidated=False,
                                 encoding=_encoding(plan, channels, grid, compression_level, shard))
                os.rename(partial, path)
                logger.info("created ensemble store %s: %d init times x %d members x %d leads x %d channels",
                            path, len(plan.init_times), plan.n_members, len(leads), len(channels))
            except OSError:
                if not path.exists():
                    raise
                logger.info("ensemble store %s was created concurrently; reusing it", path)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        _check_identity(path, identity)
        return cls(path, plan, channels, grid, len(leads))

    # ------------------------------------------------------------------ writes

    def write_lead(self, unit: WorkUnit, lead_index: int, data: np.ndarray) -> None:
        """Write one lead time of a unit: ``data`` is ``(unit.n_members, C, nlat, nlon)`` float32 (see :meth:`write_leads`)."""
        self.write_leads(unit, lead_index, data[:, None])

    def write_leads(self, unit: WorkUnit, first_lead: int, data: np.ndarray) -> None:
        """Write consecutive lead times of a unit: ``data`` is ``(unit.n_members, L, C, nlat, nlon)`` float32.

        Leads ``first_lead .. first_lead + L - 1``. A region that covers whole
        shards (:attr:`leads_per_shard` leads from a multiple of it, or up to
        the last lead) is written without reading; any other region makes
        Zarr read, merge and rewrite the shards it touches.

        Raises
        ------
        MyriadError
            ``data`` holds NaN or infinity (a blown-up member must not be stored).
        """
        self.check_leads(unit, first_lead, data)
        self._write_checked(unit, first_lead, data)

    def _write_checked(self, unit: WorkUnit, first_lead: int, data: np.ndarray) -> None:
        """:meth:`write_leads` for ``data`` that passed :meth:`check_leads`."""
        region = (unit.init_index, slice(unit.member_start, unit.member_stop), slice(first_lead, first_lead + data.shape[1]))
        for c, array in enumerate(self._arrays):
            array[region] = data[:, :, c]

    def check_leads(self, unit: WorkUnit, first_lead: int, data: np.ndarray) -> None:
        """Refuse what :meth:`write_leads` must not write: a wrong shape, dtype or lead range (ValueError), non-finite values (MyriadError)."""
        expected = (unit.n_members, len(self.channels), self.grid.nlat, self.grid.nlon)
        if data.ndim != 5 or (data.shape[0], *data.shape[2:]) != expected or data.dtype != np.float32:
            raise ValueError(f"{unit}: expected float32 leads of shape {expected}, got {data.dtype} {data.shape}")
        stop = first_lead + data.shape[1]
        if not 0 <= first_lead < stop <= self.n_leads:
            raise ValueError(f"{unit}: lead indices {first_lead}..{stop - 1} outside 0..{self.n_leads - 1}")
        finite = np.isfinite(data)
        if not finite.all():
            leads = [first_lead + int(k) for k in np.flatnonzero(~finite.all(axis=(0, 2, 3, 4)))]
            channels = [self.channels[c] for c in np.flatnonzero(~finite.all(axis=(0, 1, 3, 4)))]
            where = f"lead index {leads[0]}" if len(leads) == 1 else f"lead indices {leads}"
            raise MyriadError(f"ensemble store {self.path}: non-finite values in {unit}, {where}, channels {channels}")

    def mark_complete(self, unit: WorkUnit) -> None:
        """Record that every lead of the unit is written (call only after the last write)."""
        self._complete[unit.key] = 1
        logger.debug("ensemble store %s: %s complete", self.path, unit)

    # ------------------------------------------------------------------ completion

    def completed_units(self) -> set[tuple[int, int]]:
        """``(init_index, block_index)`` of the complete units."""
        flags = self._complete[...]
        return {(int(i), int(b)) for i, b in zip(*np.nonzero(flags == 1))}

    def pending_units(self, units: Iterable[WorkUnit] | None = None) -> list[WorkUnit]:
        """The units (default: all of the plan) that are not complete, in order."""
        done = self.completed_units()
        return [u for u in (self.plan.units if units is None else units) if u.key not in done]


# ---------------------------------------------------------------------- template


def _template(
    plan: EnsemblePlan,
    channels: tuple[str, ...],
    grid: Grid,
    leads: np.ndarray,
    identity: dict[str, Any],
    compression_level: int,
    attrs: Mapping[str, Any],
) -> xr.Dataset:
    init_times = np.array(plan.init_times, dtype="datetime64[ns]")
    members = plan.members
    coords: dict[str, Any] = {
        "init_time": ("init_time", init_times, {"standard_name": "forecast_reference_time", "long_name": "initialisation time"}),
        "member": ("member", np.arange(plan.n_members, dtype=np.int64), {"long_name": "ensemble member"}),
        "lead_time": ("lead_time", leads, {"standard_name": "forecast_period", "long_name": "lead time"}),
        **grid.coords(),
        "valid_time": (("init_time", "lead_time"), init_times[:, None] + leads[None, :],
                       {"standard_name": "time", "long_name": "valid time"}),
        "checkpoint": ("member", np.array([m.checkpoint_index for m in members], dtype=np.int64),
                       {"long_name": "checkpoint index", "paths": list(plan.checkpoints)}),
        "perturbation": ("member", np.array([m.sign for m in members], dtype=np.int8),
                         {"long_name": "sign of the bred-vector perturbation", "flag_values": [-1, 0, 1],
                          "flag_meanings": "minus control plus"}),
        "pair": ("member", np.array([m.pair_index for m in members], dtype=np.int64),
                 {"long_name": "bred pair index (-1: control)"}),
        "sample": ("member", np.array([m.sample for m in members], dtype=np.int64),
                   {"long_name": "stochastic sample index"}),
        "seed": (("init_time", "member"), plan.seed_table(),
                 {"long_name": "seed of the member's bred pair",
                  "comment": "pipeline.ensemble.seeds.member_seed(init_time, checkpoint, pair, 'bred-vector', base_seed)"}),
    }
    shape = (len(init_times), plan.n_members, len(leads), grid.nlat, grid.nlon)
    variables = {
        name: xr.DataArray(da.zeros(shape, chunks=-1, dtype=np.float32), dims=DIMS, attrs=channel_attrs(name))
        for name in channels
    }
    variables[COMPLETE_VAR] = xr.DataArray(
        da.zeros((len(init_times), plan.n_blocks), chunks=-1, dtype=np.int8),
        dims=("init_time", BLOCK_DIM),
        coords={BLOCK_DIM: np.arange(plan.n_blocks, dtype=np.int64)},
        attrs={
            "long_name": "work unit completion flag",
            "flag_values": [0, 1],
            "flag_meanings": "incomplete complete",
            "description": (
                f"1 once every lead time of every channel of members b*{plan.member_block} to "
                f"(b+1)*{plan.member_block}-1 at this init time is written; 0 units are rewritten by a rerun"
            ),
        },
    )
    global_attrs = {
        "title": TITLE,
        "Conventions": "CF-1.8",
        "software": f"myriad {__version__}",
        "grid": grid.name,
        "channels": list(channels),
        "member_block": plan.member_block,
        "members_per_checkpoint": plan.members_per_checkpoint,
        LAYOUT_ATTR: json.dumps(identity, sort_keys=True),
        **attrs,
    }
    return xr.Dataset(variables, coords=coords, attrs=global_attrs)


def _encoding(plan: EnsemblePlan, channels: tuple[str, ...], grid: Grid, compression_level: int,
              shard_leads: int) -> dict[str, dict[str, Any]]:
    compressor = BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle")
    chunks = (1, plan.member_block, 1, grid.nlat, grid.nlon)
    layout: dict[str, Any] = {"chunks": chunks, "compressors": (compressor,)}
    if shard_leads > 1:
        layout["shards"] = (1, plan.member_block, shard_leads, grid.nlat, grid.nlon)
    encoding: dict[str, dict[str, Any]] = {name: dict(layout) for name in channels}
    encoding[COMPLETE_VAR] = {"chunks": (1, 1), "compressors": None}
    return encoding


def _check_identity(path: Path, identity: dict[str, Any]) -> None:
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        stored_text = group.attrs.get(LAYOUT_ATTR)
    except Exception as exc:  # zarr raises several types for unreadable stores
        raise MyriadError(f"ensemble store {path}: exists but is not a readable Zarr v3 store ({exc})") from None
    if group.attrs.get("title") != TITLE or not isinstance(stored_text, str) or COMPLETE_VAR not in group:
        raise MyriadError(
            f"ensemble store {path}: exists but is not a Myriad ensemble store; move it away or pick another ensemble name"
        )
    differences = config_differences(json.loads(stored_text), json.loads(json.dumps(identity)))
    if differences:
        listed = "; ".join(f"{key}: store has {old!r}, wanted {new!r}" for key, old, new in
                           ((k, *v) for k, v in list(differences.items())[:5]))
        raise MyriadError(
            f"ensemble store {path}: was made for a different plan/config ({listed}); "
            "use another ensemble name or delete the store"
        )


# ---------------------------------------------------------------------- background writer


class AsyncLeadWriter:
    """Writes lead times on a background thread while the caller computes the next.

    A bounded FIFO queue feeds one thread; :meth:`submit` blocks while
    ``max_pending`` writes are queued (back-pressure bounds memory). The
    thread gathers each unit's leads, which must come in order from lead 0,
    until they fill a shard (:attr:`EnsembleStore.leads_per_shard` leads, or
    up to the last lead; one lead without shards) and writes the shard whole
    (as :meth:`EnsembleStore.write_leads`, each lead checked on arrival); so at most one shard of leads per
    unit in flight waits in memory. :meth:`complete` queues ``mark_complete``
    behind the unit's writes, so a unit is marked only after its data is on
    disk. The first exception of the thread stops all further writing and
    marking (nothing later is recorded as complete) and is raised to the
    caller by the next :meth:`submit`, :meth:`complete`, :meth:`flush` or
    :meth:`close`.

    The caller must not modify an array after submitting it.

    Parameters
    ----------
    store
        The target store.
    max_pending
        Queue capacity in writes.
    """

    def __init__(self, store: EnsembleStore, max_pending: int = 2) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[str, WorkUnit, int, np.ndarray | None] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ensemble-lead-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        gathered: dict[tuple[int, int], list[np.ndarray]] = {}  # per unit: the leads of its open shard, from the last write on
        submitted: dict[tuple[int, int], int] = {}  # per unit: leads submitted so far
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    kind, unit, lead_index, data = item
                    if kind == "write":
                        self._gather(gathered, submitted, unit, lead_index, data)  # type: ignore[arg-type]
                    elif submitted.pop(unit.key, 0) != self.store.n_leads:
                        raise RuntimeError(f"{unit} marked complete before all {self.store.n_leads} leads were submitted")
                    else:
                        self.store.mark_complete(unit)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _gather(self, gathered: dict[tuple[int, int], list[np.ndarray]], submitted: dict[tuple[int, int], int], unit: WorkUnit,
                lead_index: int, data: np.ndarray) -> None:
        """Add one lead to the unit's open shard; write the shard once it is full or holds the last lead."""
        if lead_index != submitted.get(unit.key, 0):
            raise RuntimeError(f"{unit}: lead {lead_index} submitted out of order (the writer takes leads 0, 1, 2, ...)")
        self.store.check_leads(unit, lead_index, data[:, None])  # a bad lead fails now, not when its shard is full
        submitted[unit.key] = lead_index + 1
        leads = gathered.setdefault(unit.key, [])
        leads.append(data)
        if len(leads) == self.store.leads_per_shard or lead_index == self.store.n_leads - 1:
            del gathered[unit.key]
            self.store._write_checked(unit, lead_index + 1 - len(leads), np.stack(leads, axis=1))  # each lead checked above

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _put(self, item: tuple[str, WorkUnit, int, np.ndarray | None]) -> None:
        if self._closed:
            raise RuntimeError("AsyncLeadWriter is closed")
        self._raise_if_failed()
        self._queue.put(item)

    def submit(self, unit: WorkUnit, lead_index: int, data: np.ndarray) -> None:
        """Queue lead ``lead_index`` of ``unit`` for writing (raises an earlier write's exception); leads come in order."""
        self._put(("write", unit, lead_index, data))

    def complete(self, unit: WorkUnit) -> None:
        """Queue :meth:`EnsembleStore.mark_complete` after the unit's queued writes."""
        self._put(("complete", unit, 0, None))

    def flush(self) -> None:
        """Wait until everything queued is written; raise the thread's exception, if any."""
        self._queue.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Flush, stop the thread, raise the thread's exception, if any."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> "AsyncLeadWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except BaseException:  # the caller's exception is the one to propagate
            logger.exception("ensemble writer failed while the caller was already failing")
