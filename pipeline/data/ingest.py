"""Drive a :class:`~pipeline.data.sources.base.Source` into the analysis store.

Steps of :func:`ingest`:

1. plan (:func:`~pipeline.data.store.plan_store`): create, resume or extend
   the store; the pending blocks are those whose ``block_complete`` is 0.
   A store written from a different config is refused before anything else;
   a complete store with the same config is left untouched (nothing is read);
2. preflight, before the store is touched: every pending time must be among
   the source's ``available_times`` (a gap is named), and the first pending
   block is read and validated, so that systematic problems (wrong grid,
   missing channel, bad units) leave an existing store exactly as it was;
3. create or extend the store, then write the first block (in a background
   thread) while the remaining blocks are read, validated and written: in parallel with Dask for random-access sources (one task per
   block on the configured cluster), or, for sequential sources (the planet),
   read in time order in this thread while a small pool of writer threads
   writes the previous blocks. A block is marked complete only after its
   data is written.

Run as ``python -m pipeline.data.ingest CONFIG [--set key=value ...]`` for
the library entry point without Prefect.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import dask
import pandas as pd
import xarray as xr
from dask.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.config import MyriadConfig, load_config
from pipeline.dask_cluster import dask_client
from pipeline.data.sources import Source, build_source
from pipeline.data.sources.canonical import validate_block, validate_static
from pipeline.data.store import (
    StoreLayout,
    contiguous_ranges,
    create_store,
    extend_store,
    format_ranges,
    format_time,
    is_complete,
    plan_store,
    write_block,
)
from pipeline.errors import MyriadError
from pipeline.logs import configure_logging
from pipeline.zarr_metadata import consolidate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Outcome of one :func:`ingest` call.

    Attributes
    ----------
    path
        The analysis store.
    n_blocks
        Time blocks in the store.
    blocks_written, blocks_skipped
        Blocks written by this call, and blocks already complete before it.
    seconds
        Wall time of the call.
    bytes_written
        Uncompressed float32 bytes of channel data written by this call.
    """

    path: Path
    n_blocks: int
    blocks_written: int
    blocks_skipped: int
    seconds: float
    bytes_written: int

    @property
    def throughput_mb_s(self) -> float:
        """``bytes_written / seconds`` in MB/s (1 MB = 1e6 bytes)."""
        return self.bytes_written / 1e6 / self.seconds if self.seconds > 0 else 0.0


def ingest(config: MyriadConfig, progress: bool = True) -> IngestResult:
    """Write (or finish, or extend) ``<run_dir>/analysis.zarr`` from the configured source.

    Idempotent: a rerun with the same config writes only incomplete blocks,
    and nothing at all for a complete store.

    Parameters
    ----------
    config
        The run config.
    progress
        Show a rich progress bar (otherwise one log line per block).

    Raises
    ------
    MyriadError
        Config mismatch with an existing store, a gap in the source, or a block
        that fails validation (grid, channels, float32, NaN/inf, times).
    """
    started = time.perf_counter()
    layout = StoreLayout.from_config(config)
    path = config.analysis_path
    plan = plan_store(config)
    skipped = layout.n_blocks - len(plan.pending)
    if not plan.pending:
        logger.info("%s: all %d blocks complete, nothing to write", path, layout.n_blocks)
        return IngestResult(path, layout.n_blocks, 0, skipped, time.perf_counter() - started, 0)

    source = build_source(config)
    check_source_times(source, layout, plan.pending)
    first, rest = plan.pending[0], plan.pending[1:]
    first_data = read_block(source, layout, first)
    if plan.action == "create":
        create_store(config, source.name, read_static(source, layout))
    elif plan.action == "extend":
        extend_store(config, plan)
    logger.info("%s: %s, %d of %d blocks to write (%d complete)", path, plan.action, len(plan.pending), layout.n_blocks, skipped)

    with BlockProgress(len(plan.pending), layout, enabled=progress) as report:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-first") as first_writer:
            # the preflight block is written while the others are read; the pool's exit waits for it
            first_write = first_writer.submit(write_block, path, first, layout.block_size, first_data, layout.channels)
            del first_data
            if source.sequential:
                write_sequential(source, layout, path, rest, report, writers=config.dask.n_workers)
            else:
                with dask_client(config.dask) as client:
                    if client is None:
                        write_parallel_threads(source, layout, path, rest, report, workers=config.dask.n_workers)
                    else:
                        write_parallel_distributed(client, source, layout, path, rest, report)
        first_write.result()
        report(first)
    if is_complete(path):
        consolidate(path)

    seconds = time.perf_counter() - started
    result = IngestResult(path, layout.n_blocks, len(plan.pending), skipped, seconds,
                          sum(layout.block_nbytes(b) for b in plan.pending))
    logger.info("%s: wrote %d blocks (%.1f MB) in %.1f s (%.1f MB/s)", path, result.blocks_written,
                result.bytes_written / 1e6, seconds, result.throughput_mb_s)
    return result


def ensure_analysis(config: MyriadConfig) -> None:
    """Ingest the store and compute stats.nc unless both are up to date (for scripts and benchmarks)."""
    from pipeline.data.statistics import compute_statistics
    from pipeline.fingerprints import statistics_ready

    if not statistics_ready(config):
        logger.info("ingesting %s first", config.analysis_path)
        ingest(config, progress=False)
        compute_statistics(config)


# --------------------------------------------------------------------------- reading and validation


def check_source_times(source: Source, layout: StoreLayout, blocks: Sequence[int]) -> None:
    """Raise unless the source lists every time of ``blocks`` (once each)."""
    available = pd.DatetimeIndex(source.available_times())
    where = f"source {source.name}"
    if not available.is_unique:
        raise MyriadError(f"{where}: time {format_time(available[available.duplicated()][0])} is listed more than once")
    needed = layout.times[[i for b in blocks for i in range(*layout.block_slice(b).indices(layout.n_times))]]
    missing = needed.difference(available)
    if len(missing):
        step = layout.times[1] - layout.times[0] if layout.n_times > 1 else pd.Timedelta(hours=1)
        raise MyriadError(
            f"{where}: no data for {format_ranges(contiguous_ranges(missing, step))} "
            f"({len(missing)} of the {len(needed)} times to ingest); the store holds a regular time axis "
            "without gaps: supply the missing data or change time.start/time.end"
        )


def read_block(source: Source, layout: StoreLayout, block: int) -> xr.Dataset:
    """Read ``block`` from the source and validate it (grid, channels, float32, finite, times)."""
    times = layout.block_times(block)
    data = source.read_block(times)
    where = f"source {source.name}, block {block} ({format_time(times[0])} .. {format_time(times[-1])})"
    validate_block(data, layout.grid, layout.channels, where, times)
    return data


def read_static(source: Source, layout: StoreLayout) -> xr.Dataset:
    """The configured static fields from the source, validated (empty if none configured)."""
    if not layout.static:
        return xr.Dataset()
    fields = source.static_fields()
    validate_static(fields, layout.grid, layout.static, f"source {source.name}, static fields")
    return fields


def ingest_block(block: int, source: Source, layout: StoreLayout, path: str) -> int:
    """Read, validate and write one block, then mark it complete; returns ``block``."""
    write_block(path, block, layout.block_size, read_block(source, layout, block), layout.channels)
    return block


# --------------------------------------------------------------------------- writers


def write_sequential(source: Source, layout: StoreLayout, path: Path, blocks: Sequence[int],
                     report: Callable[[int], None], writers: int = 2) -> None:
    """Read ``blocks`` in order here; ``writers`` threads write them (at most ``writers`` queued).

    A read error waits for the writes already handed over (they complete and
    are marked) before it propagates.
    """
    queued: deque[tuple[int, Future[None]]] = deque()

    def settle(limit: int) -> None:
        while len(queued) > limit:
            block, future = queued.popleft()
            future.result()
            report(block)

    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="ingest-writer") as pool:
        try:
            for block in blocks:
                data = read_block(source, layout, block)
                settle(writers - 1)
                queued.append((block, pool.submit(write_block, path, block, layout.block_size, data, layout.channels)))
            settle(0)
        finally:
            wait([future for _, future in queued])


def write_parallel_threads(source: Source, layout: StoreLayout, path: Path, blocks: Sequence[int],
                           report: Callable[[int], None], workers: int = 2) -> None:
    """One dask.delayed task per block on Dask's threaded scheduler with ``workers`` threads.

    The thread pool is our own, so a failing block returns only after the
    blocks already running have finished (and are marked complete).
    """
    source_task = dask.delayed(source, traverse=False)
    layout_task = dask.delayed(layout, traverse=False)
    tasks = [
        dask.delayed(ingest_block, pure=False)(block, source_task, layout_task, str(path), dask_key_name=f"ingest-block-{block}")
        for block in blocks
    ]

    def finished(key: object, result: object, dsk: object, state: object, worker: object) -> None:
        if isinstance(key, str) and key.startswith("ingest-block-"):
            report(result)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool, Callback(posttask=finished):
        dask.compute(*tasks, scheduler="threads", pool=pool)


def write_parallel_distributed(client: object, source: Source, layout: StoreLayout, path: Path,
                               blocks: Sequence[int], report: Callable[[int], None]) -> None:
    """One task per block on a ``distributed`` client; the source is sent to each worker once."""
    from distributed import as_completed

    if not blocks:
        return
    source_on_workers = client.scatter(source, broadcast=True, hash=False)
    futures = client.map(ingest_block, list(blocks), source=source_on_workers, layout=layout, path=str(path), pure=False)
    try:
        for future in as_completed(futures):
            report(future.result())
    except BaseException:
        client.cancel(futures)
        raise


# --------------------------------------------------------------------------- progress


class BlockProgress:
    """Per-block progress: a rich bar, or one log line per block when disabled.

    Use as a context manager; call the object with a finished block's index.
    """

    def __init__(self, total: int, layout: StoreLayout, enabled: bool = True) -> None:
        self.total = total
        self.layout = layout
        self.done = 0
        self.bar: Progress | None = None
        if enabled:
            self.bar = Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks"),
                                TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("ingest", total=total)

    def __enter__(self) -> "BlockProgress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, block: int) -> None:
        self.done += 1
        times = self.layout.block_times(block)
        logger.log(logging.DEBUG if self.bar else logging.INFO, "block %d (%s .. %s) written [%d/%d]",
                   block, format_time(times[0]), format_time(times[-1]), self.done, self.total)
        if self.bar is not None:
            self.bar.advance(self.task)


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.data.ingest CONFIG [--set key=value ...] [--no-progress]``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.ingest", description="Ingest CONFIG's source into the analysis store.")
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        result = ingest(load_config(args.config, args.overrides), progress=not args.no_progress)
    except MyriadError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("done: %s", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
