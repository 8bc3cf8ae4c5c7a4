"""Training data: the analysis store opened, checked and normalised, cut into windows.

Every channel is normalised with the per-channel statistics of ``stats.nc``:
``z_c = (x_c - mean_c) / std_c``. A *window* starting at time index ``s``
holds ``(z_s, z_{s+1}, ..., z_{s+n})``: the initial state and ``n`` targets
for an ``n``-step autoregressive loss (``n = 1`` is one-step training).
Static fields are standardised over the sphere (area-weighted mean and
std; a constant field becomes zeros) and become model inputs.

Frames are read from the store on demand (:class:`StoreFrames`) or loaded
into memory once (:class:`MemoryFrames`, the default when they fit); both
give the same float32 values.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset, DistributedSampler, Sampler

from models.forcings import posix_seconds
from pipeline.config import MyriadConfig
from pipeline.data.statistics import load_statistics
from pipeline.data.store import open_analysis
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from pipeline.training.config import PeriodConfig, TrainingConfig
from pipeline.training.normalisation import Normalisation, normalisation_from_statistics, tendency_ratio

logger = logging.getLogger(__name__)


@dataclass
class AnalysisData:
    """The analysis store checked against the run config, with its normalisation."""

    path: Path
    dataset: xr.Dataset
    times: pd.DatetimeIndex
    grid: Grid
    channels: list[str]
    static_names: list[str]
    normalisation: Normalisation
    tendency_ratio: np.ndarray
    """One-step tendency std over std per channel (the typical normalised increment)."""
    step_hours: int

    def static_fields(self) -> np.ndarray:
        """Standardised static fields, shape (n_static, nlat, nlon), float32.

        ``(s - <s>) / sigma_s`` with area-weighted ``<.>`` over the sphere;
        ``sigma_s = 0`` (a constant field) leaves zeros.
        """
        q = self.grid.quadrature_weights()
        fields = []
        for name in self.static_names:
            values = np.asarray(self.dataset[name].values, dtype=np.float64)
            mean = float((q * values).sum())
            std = float(np.sqrt((q * (values - mean) ** 2).sum()))
            fields.append((values - mean) / std if std > 0 else np.zeros_like(values))
        return np.stack(fields).astype(np.float32) if fields else np.zeros((0, self.grid.nlat, self.grid.nlon), np.float32)

    def period_indices(self, period: PeriodConfig, key: str) -> np.ndarray:
        """Time indices of ``[period.start, period.end]``; outside the store raises naming ``key``."""
        start, end = pd.Timestamp(period.start), pd.Timestamp(period.end)
        first, last = self.times[0], self.times[-1]
        if start < first or end > last:
            raise MyriadError(
                f"{key}: {start:%Y-%m-%dT%H:%M} .. {end:%Y-%m-%dT%H:%M} is not inside the analysis store "
                f"{self.path} ({first:%Y-%m-%dT%H:%M} .. {last:%Y-%m-%dT%H:%M})"
            )
        return np.flatnonzero((self.times >= start) & (self.times <= end))


def open_training_data(config: MyriadConfig) -> AnalysisData:
    """Open ``<run_dir>/analysis.zarr`` and ``stats.nc`` and check them against ``config``.

    Raises
    ------
    MyriadError
        Missing or incomplete store, a grid other than ``grid:``, a channel or
        static field missing from the store, an unreadable stats file or one
        without these channels.
    """
    path = config.analysis_path
    ds = open_analysis(path, require_complete=True, chunks=None)
    config.grid.build().require(ds, where=f"analysis store {path}")
    missing = [c for c in config.channels if c not in ds.data_vars]
    if missing:
        have = [str(v) for v in ds.data_vars if "time" in ds[v].dims]
        raise MyriadError(f"analysis store {path}: channel(s) {missing} are missing (the store has {have}); ingest them or change `channels:`")
    missing_static = [s for s in config.static if s not in ds.data_vars]
    if missing_static:
        raise MyriadError(f"analysis store {path}: static field(s) {missing_static} are missing; ingest them or change `static:`")
    stats = load_statistics(config.stats_path)
    normalisation = normalisation_from_statistics(stats, list(config.channels), str(config.stats_path))
    ratio = tendency_ratio(stats, list(config.channels), str(config.stats_path))
    times = pd.DatetimeIndex(ds["time"].values)
    step_hours = int(ds.attrs.get("time_step_hours", config.time.step_hours))
    static_names = list(config.static) if config.model is None or config.model.static_inputs else []
    return AnalysisData(path, ds, times, config.grid.build(), list(config.channels), static_names, normalisation, ratio, step_hours)


def resolve_periods(data: AnalysisData, training: TrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Time indices of the training and validation periods.

    Defaults: validation is the last ``val_fraction`` of the store's times,
    training everything before it.
    """
    if training.val_period is not None:
        val = data.period_indices(training.val_period, "training.val_period")
    else:
        n_val = max(2, int(round(len(data.times) * training.val_fraction)))
        val = np.arange(len(data.times) - n_val, len(data.times))
    if training.train_period is not None:
        train = data.period_indices(training.train_period, "training.train_period")
    else:
        train = np.arange(0, int(val[0]))
    if len(train) < 2 or len(val) < 2:
        raise MyriadError(f"training: the training ({len(train)} times) and validation ({len(val)} times) periods need at least 2 times each")
    if np.intersect1d(train, val).size:
        logger.warning("training.train_period and training.val_period overlap: validation scores are optimistic")
    return train, val


class Frames(ABC):
    """Normalised float32 frames of one period, indexed 0..len-1 along time, with their valid times."""

    def __init__(self, data: AnalysisData, time_indices: np.ndarray) -> None:
        self._seconds = posix_seconds(data.times[np.asarray(time_indices)].values)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: np.ndarray) -> torch.Tensor:
        """Frames at ``index`` (any shape), result shape ``index.shape + (C, nlat, nlon)``."""

    def seconds(self, index: np.ndarray) -> torch.Tensor:
        """Valid times of the frames at ``index`` in POSIX seconds (float64, shape ``index.shape``)."""
        return self._seconds[torch.as_tensor(np.asarray(index), dtype=torch.long)]


class StoreFrames(Frames):
    """Frames read from the Zarr store on each call (for periods that do not fit in memory)."""

    def __init__(self, data: AnalysisData, time_indices: np.ndarray) -> None:
        super().__init__(data, time_indices)
        self._dataset = data.dataset
        self._channels = data.channels
        self._time = np.asarray(time_indices)
        self._normalisation = data.normalisation

    def __len__(self) -> int:
        return len(self._time)

    def read(self, index: np.ndarray) -> torch.Tensor:
        index = np.asarray(index)
        flat = self._time[index.reshape(-1)]
        order = np.argsort(flat, kind="stable")
        unique, inverse = np.unique(flat[order], return_inverse=True)
        stacked = np.stack([self._dataset[c].isel(time=unique).values for c in self._channels], axis=1)
        values = np.empty((len(flat),) + stacked.shape[1:], dtype=np.float32)
        values[order] = stacked[inverse]
        z = self._normalisation.normalise(torch.from_numpy(values))
        return z.reshape(index.shape + z.shape[1:])


class MemoryFrames(Frames):
    """All frames of a period normalised into one in-memory tensor."""

    def __init__(self, data: AnalysisData, time_indices: np.ndarray) -> None:
        super().__init__(data, time_indices)
        source = StoreFrames(data, time_indices)
        self._values = source.read(np.arange(len(source))).contiguous()

    def __len__(self) -> int:
        return self._values.shape[0]

    def read(self, index: np.ndarray) -> torch.Tensor:
        return self._values[torch.as_tensor(np.asarray(index), dtype=torch.long)]


def load_frames(data: AnalysisData, time_indices: np.ndarray, training: TrainingConfig, what: str) -> Frames:
    """Frames of a period, in memory when ``cache_in_memory`` says so (``auto``: below ``memory_limit_gb``)."""
    nbytes = len(time_indices) * len(data.channels) * data.grid.nlat * data.grid.nlon * 4
    in_memory = training.cache_in_memory == "always" or (training.cache_in_memory == "auto" and nbytes <= training.memory_limit_gb * 2**30)
    logger.info("%s data: %d times, %.1f MB, %s", what, len(time_indices), nbytes / 2**20, "in memory" if in_memory else "read from the store")
    return MemoryFrames(data, time_indices) if in_memory else StoreFrames(data, time_indices)


class WindowDataset(Dataset):
    """Windows ``(z_s, ..., z_{s+n})`` over a period; item = (list of starts, n) -> (batch, start times).

    Every start ``s`` with ``s + max_targets < len(frames)`` is a sample, so
    the sample set does not change when the number of targets ``n <=
    max_targets`` changes during training. An item is a whole batch,
    shape ``(B, n + 1, C, nlat, nlon)``, and the valid times of its first
    states in POSIX seconds, shape ``(B,)`` (for models with forcings).
    """

    def __init__(self, frames: Frames, max_targets: int) -> None:
        if len(frames) <= max_targets:
            raise MyriadError(f"training: a period of {len(frames)} times is too short for windows of {max_targets + 1} times")
        self.frames = frames
        self.max_targets = max_targets

    def __len__(self) -> int:
        return len(self.frames) - self.max_targets

    def __getitem__(self, key: tuple[list[int], int]) -> tuple[torch.Tensor, torch.Tensor]:
        starts, n_targets = key
        index = np.asarray(starts)[:, None] + np.arange(n_targets + 1)[None, :]
        return self.frames.read(index), self.frames.seconds(np.asarray(starts))


class WindowBatchSampler(Sampler[tuple[list[int], int]]):
    """Per-rank batches of window starts from a :class:`DistributedSampler`, resumable mid-epoch.

    The sampler's order depends only on ``(seed, epoch)``; rank ``r`` of
    ``W`` takes positions ``r, r + W, ...`` (``drop_last``), so the union of
    the ranks' ``b``-th batches is the ``b``-th global batch of a
    one-process run with ``W`` times the per-rank batch. ``start_at(b)``
    skips the first ``b`` batches of the epoch (exact resume). Each batch
    carries the number of targets for its global step.
    """

    def __init__(
        self,
        n_samples: int,
        batch_per_rank: int,
        rank: int,
        world_size: int,
        seed: int,
        targets_at: Callable[[int], int],
    ) -> None:
        self._sampler = DistributedSampler(range(n_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_per_rank = batch_per_rank
        self.steps_per_epoch = len(self._sampler) // batch_per_rank
        if self.steps_per_epoch < 1:
            raise MyriadError(
                f"training: {n_samples} training windows are fewer than the global batch "
                f"({batch_per_rank * world_size}); lengthen training.train_period or lower training.batch_size"
            )
        self._targets_at = targets_at
        self._epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._sampler.set_epoch(epoch)

    def start_at(self, batch: int) -> None:
        self._start = batch

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self._start)

    def __iter__(self) -> Iterator[tuple[list[int], int]]:
        order = list(self._sampler)
        for b in range(self._start, self.steps_per_epoch):
            starts = order[b * self.batch_per_rank : (b + 1) * self.batch_per_rank]
            yield starts, self._targets_at(self._epoch * self.steps_per_epoch + b)
