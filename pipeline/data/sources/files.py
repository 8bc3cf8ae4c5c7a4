"""Local NetCDF and GRIB files (and ZIPs of them) as a reanalysis source.

The format of each file is told by its first bytes (``GRIB``; ``\\x89HDF``
for NetCDF4/HDF5; ``CDF`` for NetCDF3; ``PK`` for a ZIP, unpacked once into a
cache directory and its members read like files), unless
``source.engine`` forces one. GRIB files open through cfgrib with one
dataset per hypercube (``cfgrib.open_datasets``: pressure levels, surface,
height above ground... each its own part), without cfgrib index files (none
are written next to the data; the file is rescanned on each open). Classic
NetCDF files are checked against the sizes their header declares, since the
netCDF library would read a truncated one as fill values.

Building a :class:`FileCollection` reads coordinates only: for every part
(file, or GRIB hypercube) the channels it provides and its times. A
(channel, time) found in two files is a duplicate and raises naming both.
Reading a block opens only the parts that hold the requested times and maps
each through :mod:`pipeline.data.sources.canonical`. A file that cannot be
decoded raises ``file X: cannot be read as NetCDF/GRIB (...)``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import shutil
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.config import FilesSourceConfig, MyriadConfig
from pipeline.data.channels import channel_attrs
from pipeline.data.sources.canonical import (
    available_channels,
    conform_to_grid,
    dataset_times,
    extract,
    standardise,
    time_axis,
    validate_block,
    validate_static,
)
from pipeline.data.sources.netcdf3 import check_complete
from pipeline.errors import MyriadError
from pipeline.grid import Grid

logger = logging.getLogger(__name__)

FileKind = Literal["netcdf", "grib", "zip"]
T = TypeVar("T")

_MAGIC: tuple[tuple[bytes, FileKind], ...] = (
    (b"GRIB", "grib"),
    (b"\x89HDF", "netcdf"),
    (b"CDF", "netcdf"),
    (b"PK", "zip"),
)
_KIND_LABEL = {"netcdf": "NetCDF", "grib": "GRIB", "zip": "ZIP"}
_ENGINE_KIND: dict[str, FileKind] = {"netcdf4": "netcdf", "cfgrib": "grib"}

_FILE_LOCK = threading.RLock()
"""Serialises every open, read and close of a file in this process: the netCDF-C
and eccodes libraries are not thread-safe, and ingest reads blocks from a thread
pool. Reads are I/O-light next to the Zarr encode, which stays parallel."""


def detect_format(path: Path) -> FileKind:
    """The format of ``path`` from its first bytes; unknown content raises."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise MyriadError(f"file {path}: cannot be opened ({exc.strerror})") from None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    raise MyriadError(f"file {path}: is neither NetCDF, GRIB nor ZIP (starts with {head[:4]!r})")


def extract_zip(path: Path, dest: Path) -> list[Path]:
    """Unpack the files of ZIP ``path`` flat into directory ``dest``; return them sorted."""
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = Path(info.filename).name
                if info.is_dir() or not name or name.startswith("."):
                    continue
                target = dest / name
                if target in written:
                    raise MyriadError(f"file {path}: ZIP holds two members named '{name}'")
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                written.append(target)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise MyriadError(f"file {path}: cannot be read as ZIP ({exc})") from None
    if not written:
        raise MyriadError(f"file {path}: ZIP holds no files")
    return sorted(written)


def _unzip_cached(path: Path, cache_dir: Path) -> list[Path]:
    """Members of ZIP ``path``, unpacked once under ``cache_dir`` (temp dir + rename)."""
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = cache_dir / "unzipped" / f"{path.stem}-{key}"
    if not dest.is_dir():
        partial = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex}")
        try:
            extract_zip(path, partial)
            with contextlib.suppress(OSError):  # another process finished first
                os.replace(partial, dest)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        logger.info("unpacked %s into %s", path, dest)
    return sorted(p for p in dest.iterdir() if p.is_file())


@contextlib.contextmanager
def _reading(label: str, kind: FileKind) -> Iterator[None]:
    """Turn decoder errors into ``file X: cannot be read as NetCDF/GRIB (...)``."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, RuntimeError, KeyError, IndexError)
    if kind == "grib":
        from gribapi.errors import GribInternalError

        errors = (*errors, GribInternalError)
    try:
        yield
    except MyriadError:
        raise
    except errors as exc:
        detail = f"{type(exc).__name__}: {exc}"
        raise MyriadError(f"file {label}: cannot be read as {_KIND_LABEL[kind]} ({detail})") from None


def _open_datasets(path: Path, kind: FileKind) -> list[xr.Dataset]:
    """All datasets of a file: one for NetCDF, one per hypercube for GRIB (lazy)."""
    if kind == "netcdf":
        with open(path, "rb") as handle:
            if handle.read(3) == b"CDF":
                check_complete(path)  # the netCDF library reads a cut classic file as fill values
        return [xr.open_dataset(path, engine="netcdf4", chunks=None, cache=False)]
    import cfgrib

    # indexpath "" keeps cfgrib from writing .idx files (it rescans the file on each open instead)
    return cfgrib.open_datasets(str(path), backend_kwargs={"indexpath": "", "errors": "raise"}, cache=False)


@dataclass(frozen=True)
class _Part:
    """One readable unit: a NetCDF file or one GRIB hypercube, with what it holds."""

    path: Path
    label: str
    kind: FileKind
    group: int
    times: pd.DatetimeIndex
    channels: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"file {self.label}"


class FileCollection:
    """A time index over NetCDF/GRIB/ZIP files, read into canonical blocks.

    Parameters
    ----------
    paths
        Files to read (already expanded, in priority order for static fields).
    grid
        The configured canonical grid.
    channels
        Channels every block must hold.
    static
        Static fields (``orog``, ``lsm``) to find in the files.
    member
        Ensemble member to read from files with a ``number`` dimension.
    engine
        ``auto`` (by magic bytes), ``netcdf4`` or ``cfgrib``.
    cache_dir
        Where ZIPs are unpacked.

    Raises
    ------
    MyriadError
        Unreadable file, a channel found in no file, a (channel, time) in two files.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        grid: Grid,
        channels: Sequence[str],
        static: Sequence[str] = (),
        member: int = 0,
        engine: str = "auto",
        *,
        cache_dir: Path,
    ) -> None:
        if not paths:
            raise MyriadError("no input files given")
        self.grid = grid
        self.channels = tuple(channels)
        self.static = tuple(static)
        self.member = member
        self.engine = engine
        self.cache_dir = Path(cache_dir)
        wanted = set(self.channels) | set(self.static)
        self.parts: list[_Part] = []
        for path in paths:
            self.parts.extend(p for p in self._index_file(Path(path)) if set(p.channels) & wanted)
        self._by_channel = {name: [i for i, p in enumerate(self.parts) if name in p.channels] for name in wanted}
        self._check_coverage(paths)
        self._check_duplicates()

    # ---------------------------------------------------------------- index

    def _kind(self, path: Path) -> FileKind:
        kind = detect_format(path)
        if kind != "zip" and self.engine != "auto":
            return _ENGINE_KIND[self.engine]
        return kind

    def _index_file(self, path: Path, label: str | None = None) -> list[_Part]:
        kind = self._kind(path)
        label = label or str(path)
        if kind == "zip":
            members = _unzip_cached(path, self.cache_dir)
            return [part for m in members for part in self._index_file(m, f"{path} (member {m.name})")]
        parts = []
        with _FILE_LOCK, _reading(label, kind):
            datasets = _open_datasets(path, kind)
            try:
                for group, ds in enumerate(datasets):
                    where = f"file {label}"
                    std = standardise(ds, where, self.member)
                    channels = tuple(available_channels(std, where))
                    parts.append(_Part(path, label, kind, group, dataset_times(std, where), channels))
            finally:
                for ds in datasets:
                    ds.close()
        logger.debug("indexed %s: %s", label, [(len(p.times), p.channels) for p in parts])
        return parts

    def _check_coverage(self, paths: Sequence[Path]) -> None:
        missing = [name for name, parts in self._by_channel.items() if not parts]
        if missing:
            shown = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            raise MyriadError(f"channel(s) {', '.join(sorted(missing))} not found in file(s) {shown}")
        for name in self.channels:
            timeless = [self.parts[i].label for i in self._by_channel[name] if len(self.parts[i].times) == 0]
            if timeless:
                raise MyriadError(f"file {timeless[0]}: channel '{name}' has no time coordinate")

    def _check_duplicates(self) -> None:
        for name in self.channels:
            owners = self._by_channel[name]
            stacked = pd.DatetimeIndex(np.concatenate([self.parts[i].times.values for i in owners]))
            if stacked.is_unique:
                continue
            duplicate = stacked[stacked.duplicated()][0]
            files = [self.parts[i].label for i in owners if duplicate in self.parts[i].times]
            raise MyriadError(f"time {duplicate} of channel '{name}' is in two files: {files[0]} and {files[1]}")

    # ---------------------------------------------------------------- queries

    def times(self) -> pd.DatetimeIndex:
        """Times at which every channel is available in some file, sorted."""
        unions = [
            pd.DatetimeIndex(np.concatenate([self.parts[i].times.values for i in self._by_channel[name]]))
            for name in self.channels
        ]
        return reduce(pd.DatetimeIndex.intersection, unions).sort_values().as_unit("ns")

    def read(self, times: pd.DatetimeIndex) -> xr.Dataset:
        """The canonical block of ``times`` (validated, float32, on the grid)."""
        times = pd.DatetimeIndex(times).as_unit("ns")
        if len(times) == 0:
            raise MyriadError("read_block: no times requested")
        plan: dict[int, list[str]] = {}
        for name in self.channels:
            covered = np.zeros(len(times), dtype=bool)
            for i in self._by_channel[name]:
                hit = times.isin(self.parts[i].times)
                if hit.any():
                    plan.setdefault(i, []).append(name)
                covered |= hit
            if not covered.all():
                raise MyriadError(
                    f"channel '{name}': no file holds time {times[~covered][0]} "
                    f"({int((~covered).sum())} of {len(times)} requested times missing)"
                )
        pieces: dict[str, list[xr.DataArray]] = {name: [] for name in self.channels}
        for i, names in plan.items():
            part = self.parts[i]
            piece_times = times[times.isin(part.times)]
            piece = self._read_part(part, names, piece_times)
            for name in names:
                pieces[name].append(piece[name])
        arrays = {}
        for name in self.channels:
            da = xr.concat(pieces[name], dim="time") if len(pieces[name]) > 1 else pieces[name][0]
            arrays[name] = da.isel(time=da.indexes["time"].get_indexer(times)).assign_attrs(channel_attrs(name))
        return xr.Dataset(arrays)

    def _with_part(self, part: _Part, use: Callable[[xr.Dataset], T]) -> T:
        """Open ``part``, standardise it, apply ``use``; decoder errors name the file."""
        with _FILE_LOCK, _reading(part.label, part.kind):
            datasets = _open_datasets(part.path, part.kind)
            try:
                return use(standardise(datasets[part.group], part.where, self.member))
            finally:
                for ds in datasets:
                    ds.close()

    def _read_part(self, part: _Part, names: list[str], times: pd.DatetimeIndex) -> xr.Dataset:
        block = self._with_part(
            part, lambda std: conform_to_grid(extract(std, names, part.where, times), self.grid, part.where)
        )
        validate_block(block, self.grid, names, part.where, times)
        return block

    def read_static(self) -> xr.Dataset:
        """The configured static fields from the first file that holds each."""
        fields = []
        for name in self.static:
            part = self.parts[self._by_channel[name][0]]
            field = self._with_part(
                part, lambda std: conform_to_grid(extract(std, [name], part.where, static=True), self.grid, part.where)
            )
            validate_static(field, self.grid, [name], part.where)
            fields.append(field)
        return xr.merge(fields) if fields else xr.Dataset(coords=self.grid.coords())


def resolve_paths(patterns: Sequence[str]) -> list[Path]:
    """Expand files and glob patterns (``~`` allowed) into a sorted list of unique files."""
    found: set[Path] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [Path(p) for p in glob.glob(expanded) if Path(p).is_file()]
            if not matches:
                raise MyriadError(f"source.paths: '{pattern}' matches no file")
            found.update(matches)
        elif Path(expanded).is_file():
            found.add(Path(expanded))
        else:
            raise MyriadError(f"source.paths: file '{pattern}' does not exist")
    return sorted(found)


class FilesSource:
    """Reanalysis from local NetCDF/GRIB/ZIP files (``source.kind: files``).

    Parameters
    ----------
    config
        The run config; ``config.source`` must be a :class:`FilesSourceConfig`.
    cache_dir
        Where ZIPs are unpacked (default ``<run_dir>/cache/files``).

    Available times are those at which every configured channel is in some
    file, restricted to the configured time axis.
    """

    name = "files"
    sequential = False
    network = False

    def __init__(self, config: MyriadConfig, cache_dir: Path | None = None) -> None:
        source = config.source
        if not isinstance(source, FilesSourceConfig):
            raise MyriadError(f"source.kind is '{source.kind}', not 'files'")
        self.grid = config.grid.build()
        self.channels = tuple(config.channels)
        self._axis = time_axis(config.time.start, config.time.end, config.time.step_hours)
        self._files = FileCollection(
            resolve_paths(source.paths),
            self.grid,
            self.channels,
            config.static,
            member=source.member,
            engine=source.engine,
            cache_dir=cache_dir if cache_dir is not None else config.run_dir / "cache" / "files",
        )

    def available_times(self) -> pd.DatetimeIndex:
        return self._files.times().intersection(self._axis).sort_values()

    def read_block(self, times: pd.DatetimeIndex) -> xr.Dataset:
        return self._files.read(times)

    def static_fields(self) -> xr.Dataset:
        return self._files.read_static()
