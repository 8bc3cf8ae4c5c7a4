"""What an ensemble run reads, and every check on it, before any compute.

An ensemble needs the ``ensemble:`` section of the run config, the
checkpoints it names (each with the ``calibration.json`` that training wrote
beside it: the 48 h RMSE per channel that sets the bred-vector amplitude) and
the analysis store (initial states and breeding analyses).
:func:`prepare_inputs` loads and cross-checks them all and raises one
:class:`MyriadError` naming the problem before anything is computed or
written:

- every checkpoint exists, is calibrated and has the same channels, grid and
  time step as the first one;
- the analysis store holds the model's channels on the model's grid with the
  model's time step;
- output and seed channels are model channels;
- ``samples > 1`` only with checkpoints that have Monte Carlo dropout;
- ``time_mean_hours`` is a multiple of the time step dividing the forecast length;
- ``mass_budget_correction`` only for a planet source and a model with z500 and v500;
- every init time is an analysis time, and so are its ``K`` breeding times
  ``t0 - K dt, ..., t0 - dt`` (:func:`pipeline.ensemble.bred_vectors.breeding_times`).

Models are loaded once per process (:class:`CheckpointCache`) and reused by
the generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from models.dyffusion import DYffusion
from models.sfno import has_dropout
from pipeline.config import MyriadConfig, PlanetSourceConfig
from pipeline.data.store import format_time, open_analysis
from pipeline.ensemble.bred_vectors import (
    bred_vector_target,
    breeding_times,
    non_negative_mask,
)
from pipeline.ensemble.config import EnsembleConfig
from pipeline.ensemble.mass_budget import REQUIRED_CHANNELS, MassBudgetCorrection
from pipeline.ensemble.plan import EnsemblePlan
from pipeline.ensemble.seeds import InitTime, canonical_init_time
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from pipeline.training.calibration import load_calibration
from pipeline.training.checkpoint import CheckpointInfo, select_checkpoint
from pipeline.training.forecast import Forecaster

logger = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the one a seed directory's forecasts use (``best.pt``, else ``last.pt``).

    Raises
    ------
    MyriadError
        Neither a file nor a directory holding a checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        return select_checkpoint(path)
    if not path.is_file():
        raise MyriadError(f"ensemble.checkpoints: {path} does not exist (train it with `myriad train CONFIG`)")
    return path


class CheckpointCache:
    """Models of this process, each loaded once from its file (eval mode, its own normalisation).

    Parameters
    ----------
    device
        Where the models run.
    bf16
        bf16 autocast on CUDA (the SHT stays float32 inside the model); on the CPU only when compiled.
    compile
        Compile each model's SFNO networks on load (:func:`pipeline.training.forecast.compile_networks`).
    dyffusion_sampler
        How DYffusion models sample: ``cold`` or ``jump`` (:class:`models.dyffusion.DYffusion`).
    """

    def __init__(self, device: torch.device | str = "cpu", bf16: bool = True, compile: bool = False,
                 dyffusion_sampler: str = "cold") -> None:
        self.device = torch.device(device)
        self.bf16 = bf16
        self.compile = compile
        self.dyffusion_sampler = dyffusion_sampler
        self._forecasters: dict[Path, Forecaster] = {}

    def get(self, path: str | Path) -> Forecaster:
        """The forecaster of a checkpoint file (loaded on first use)."""
        key = Path(path).resolve()
        if key not in self._forecasters:
            self._forecasters[key] = Forecaster.from_checkpoint(key, self.device, self.bf16, self.compile,
                                                                self.dyffusion_sampler)
            logger.info("loaded checkpoint %s on %s", key, self.device)
        return self._forecasters[key]

    def info(self, path: str | Path) -> CheckpointInfo:
        """The descriptive part of a checkpoint (loads it on first use)."""
        info = self.get(path).info
        assert info is not None  # set by Forecaster.from_checkpoint
        return info


class AnalysisFrames:
    """Initial states and breeding analyses of init times, read once per init time.

    Parameters
    ----------
    analysis
        The analysis store (:func:`pipeline.data.store.open_analysis`).
    channels
        The model's channels, in its order.
    cycles
        Breeding cycles ``K``.
    step
        The model's time step.
    """

    def __init__(self, analysis: xr.Dataset, channels: Sequence[str], cycles: int, step: timedelta) -> None:
        self.analysis = analysis
        self.channels = list(channels)
        self.cycles = cycles
        self.step = step
        self._cache: dict[np.datetime64, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()  # units of one process may run on several threads

    def times_needed(self, init_time: InitTime) -> list[np.datetime64]:
        """The breeding analyses' times, then the init time."""
        t0 = canonical_init_time(init_time)
        return [*breeding_times(t0, self.cycles, self.step), t0]

    def fields(self, init_time: InitTime) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, breeding)``: the analysis at the init time ``(C, H, W)`` and the ``K`` before it ``(K, C, H, W)``, float32."""
        t0 = canonical_init_time(init_time)
        with self._lock:
            if t0 not in self._cache:
                times = np.array(self.times_needed(t0), dtype="datetime64[ns]")
                frames = self.analysis[self.channels].sel(time=times).to_array("channel").transpose("time", "channel", ...)
                values = torch.from_numpy(np.ascontiguousarray(frames.values, dtype=np.float32))
                if len(self._cache) >= 2:  # the init times of the units in flight
                    self._cache.pop(next(iter(self._cache)))
                self._cache[t0] = (values[-1], values[:-1])
            return self._cache[t0]


@dataclass(frozen=True)
class EnsembleInputs:
    """Everything a generator process needs, checked (:func:`prepare_inputs`)."""

    settings: EnsembleConfig
    plan: EnsemblePlan
    store_path: Path
    checkpoint_files: tuple[Path, ...]
    """Resolved checkpoint file of each checkpoint index."""
    channels: tuple[str, ...]
    """The model's channels (state order)."""
    output_channels: tuple[str, ...]
    output_index: tuple[int, ...]
    """Position of each output channel among :attr:`channels`."""
    grid: Grid
    time_step: timedelta
    lead_times: np.ndarray
    """``timedelta64[ns]`` of the stored leads: 0, k dt, 2k dt, ..., n_steps dt (k = :attr:`steps_per_output`)."""
    targets: tuple[torch.Tensor, ...]
    """Per checkpoint: the bred-vector amplitude per channel, ``alpha x RMSE_48h``."""
    seed_mask: torch.Tensor
    non_negative: torch.Tensor
    content_key: str
    """Hash of what else determines the data (checkpoints, calibrations, perturbation settings, analysis)."""
    frames: AnalysisFrames
    """The analysis store's initial states and breeding analyses."""
    constraints: tuple[MassBudgetCorrection | None, ...]
    """Per checkpoint: the correction applied to every emitted step (``ensemble.mass_budget_correction``), or None."""
    store_attrs: dict[str, Any] = field(default_factory=dict)
    steps_per_output: int = 1
    """Model steps averaged into each stored lead after lead 0 (1: every step is stored)."""

    @property
    def n_steps(self) -> int:
        """Model steps per forecast."""
        return (len(self.lead_times) - 1) * self.steps_per_output


def ensemble_section(config: MyriadConfig) -> EnsembleConfig:
    """The ``ensemble:`` section (raises when the config has none)."""
    if config.ensemble is None:
        raise MyriadError("config: an ensemble needs the `ensemble:` section (see configs/quickstart.yaml)")
    return config.ensemble


def select_init_times(plan: EnsemblePlan, init_times: Sequence[InitTime] | None) -> list[np.datetime64]:
    """The plan's init times restricted to ``init_times`` (all when None), in plan order.

    Raises
    ------
    MyriadError
        A requested time is not one of ``ensemble.init_times``.
    """
    if not init_times:
        return list(plan.init_times)
    wanted = {canonical_init_time(t) for t in init_times}
    unknown = sorted(str(t) for t in wanted - set(plan.init_times))
    if unknown:
        listed = ", ".join(format_time(t) for t in plan.init_times)
        raise MyriadError(f"--init {', '.join(unknown)}: not in ensemble.init_times ({listed})")
    return [t for t in plan.init_times if t in wanted]


def _check_checkpoints_agree(infos: Sequence[CheckpointInfo]) -> None:
    first = infos[0]
    for info in infos[1:]:
        for what, mine, theirs in (
            ("channels", list(info.channels), list(first.channels)),
            ("grid", info.grid.name, first.grid.name),
            ("time step (hours)", info.time_step_hours, first.time_step_hours),
        ):
            if mine != theirs:
                raise MyriadError(
                    f"ensemble.checkpoints: {info.path} has {what} {mine} but {first.path} has {theirs}; "
                    "all checkpoints of an ensemble must share channels, grid and time step"
                )


def _check_against_analysis(info: CheckpointInfo, analysis: xr.Dataset, path: Path) -> None:
    missing = [c for c in info.channels if c not in analysis.data_vars]
    if missing:
        raise MyriadError(
            f"ensemble.checkpoints: {info.path} needs channel(s) {missing} that the analysis store {path} lacks "
            f"(it has {sorted(str(v) for v in analysis.data_vars)})"
        )
    grid = Grid.of(analysis, str(path))
    if grid != info.grid:
        raise MyriadError(f"ensemble.checkpoints: {info.path} is for grid {info.grid.name} but the analysis store {path} is on {grid.name}")
    store_step = analysis.attrs.get("time_step_hours")
    if store_step is not None and int(store_step) != info.time_step_hours:
        raise MyriadError(
            f"ensemble.checkpoints: {info.path} steps {info.time_step_hours} h but the analysis store {path} is {store_step}-hourly"
        )


def _check_init_times(plan: EnsemblePlan, frames: AnalysisFrames, path: Path) -> None:
    record = frames.analysis.indexes["time"]
    first, last = format_time(record[0]), format_time(record[-1])
    known = set(record.values.astype("datetime64[s]"))
    for t0 in plan.init_times:
        if t0 not in known:
            raise MyriadError(
                f"ensemble.init_times: {format_time(t0)} is not an analysis time of {path} (record {first} .. {last}, "
                f"every {frames.step.total_seconds() / 3600:g} h)"
            )
        missing = [t for t in frames.times_needed(t0)[:-1] if t not in known]
        if missing:
            raise MyriadError(
                f"ensemble.init_times: {format_time(t0)} needs the {frames.cycles} breeding analyses from "
                f"{format_time(missing[0])} on (ensemble.perturbation.cycles), but the record of {path} starts at {first}"
            )


def _check_channels(settings: EnsembleConfig, channels: tuple[str, ...]) -> tuple[str, ...]:
    outputs = tuple(settings.output_channels or channels)
    for key, names in (("ensemble.output_channels", outputs), ("ensemble.perturbation.seed_channels", settings.perturbation.seed_channels)):
        unknown = [c for c in names if c not in channels]
        if unknown:
            raise MyriadError(f"{key}: {unknown} not among the model's channels {list(channels)}")
    return outputs


def _check_samples(settings: EnsembleConfig, files: Sequence[Path], cache: CheckpointCache) -> None:
    if settings.samples == 1:
        return
    for file in files:
        if settings.dyffusion_sampler == "jump" and isinstance(cache.get(file).model, DYffusion):
            raise MyriadError(
                f"ensemble.samples is {settings.samples} but dyffusion_sampler is jump: {file}'s chain ends are its "
                "forecaster's deterministic jumps, so its samples would coincide every chain; set samples: 1, "
                "or dyffusion_sampler: cold"
            )
        if not has_dropout(cache.get(file).model):
            raise MyriadError(
                f"ensemble.samples is {settings.samples} but {file} has no Monte Carlo dropout, so its samples would be "
                "identical; set samples: 1, or use checkpoints trained with dropout "
                "(model.dyffusion.interpolator_dropout, or model.drop_rate for an SFNO)"
            )


def mass_budget_corrections(config: MyriadConfig, files: Sequence[Path],
                            cache: CheckpointCache) -> tuple[MassBudgetCorrection | None, ...]:
    """Per checkpoint, its :class:`MassBudgetCorrection` when ``ensemble.mass_budget_correction`` is set.

    Raises
    ------
    MyriadError
        The source is not the planet, or the model lacks z500 or v500.
    """
    if not ensemble_section(config).mass_budget_correction:
        return tuple(None for _ in files)
    key = "ensemble.mass_budget_correction"
    if not isinstance(config.source, PlanetSourceConfig):
        raise MyriadError(f"{key}: the mass budget is the embedded planet's (its forcing and relaxation); this run's "
                          f"source is {config.source.kind}: set it to false")
    corrections = []
    for file in files:
        info = cache.info(file)
        missing = [c for c in REQUIRED_CHANNELS if c not in info.channels]
        if missing:
            raise MyriadError(f"{key}: the budget needs the channels {list(REQUIRED_CHANNELS)}; {file} lacks {missing} "
                              f"(its channels: {list(info.channels)})")
        corrections.append(MassBudgetCorrection.for_checkpoint(config.source, info))
    return tuple(corrections)


def steps_per_output(settings: EnsembleConfig, step: timedelta) -> int:
    """Model steps per stored lead: ``time_mean_hours / dt`` (1 without time means).

    Raises
    ------
    MyriadError
        A window that is not a whole number of steps, or that does not divide the forecast.
    """
    if settings.time_mean_hours is None:
        return 1
    step_hours = step.total_seconds() / 3600
    window = settings.time_mean_hours / step_hours
    if window != int(window):
        raise MyriadError(f"ensemble.time_mean_hours: {settings.time_mean_hours} h is not a multiple of the model's "
                          f"{step_hours:g} h time step")
    if settings.n_steps % int(window):
        raise MyriadError(f"ensemble.time_mean_hours: {settings.time_mean_hours} h windows do not divide the forecast "
                          f"of ensemble.n_steps = {settings.n_steps} steps ({settings.n_steps * step_hours:g} h)")
    return int(window)


def checkpoint_identity(info: CheckpointInfo) -> dict[str, Any]:
    """What identifies a trained checkpoint's weights without hashing them (JSON-able)."""
    return {"kind": info.kind, "hparams": info.hparams, "seed": info.seed, "step": info.step,
            "metrics": info.metrics, "config": info.config_json, "software_version": info.software_version}


def prepare_inputs(config: MyriadConfig, cache: CheckpointCache) -> EnsembleInputs:
    """Load and cross-check checkpoints, calibrations and the analysis store (no compute).

    Parameters
    ----------
    config
        Run config with an ``ensemble:`` section.
    cache
        This process's models (filled here: each checkpoint is loaded once).

    Raises
    ------
    MyriadError
        Any check of the module docstring fails.
    """
    settings = ensemble_section(config)
    plan = settings.plan()
    files = tuple(resolve_checkpoint(p) for p in settings.checkpoints)
    infos = [cache.info(f) for f in files]
    _check_checkpoints_agree(infos)
    model = infos[0]
    channels = model.channels
    analysis = open_analysis(config.analysis_path, require_complete=True, chunks=None)
    _check_against_analysis(model, analysis, config.analysis_path)
    outputs = _check_channels(settings, channels)
    step = timedelta(hours=model.time_step_hours)
    frames = AnalysisFrames(analysis, channels, settings.perturbation.cycles, step)
    _check_init_times(plan, frames, config.analysis_path)
    _check_samples(settings, files, cache)
    per_output = steps_per_output(settings, step)
    constraints = mass_budget_corrections(config, files, cache)

    calibrations = [load_calibration(f.parent) for f in files]
    for file, calibration in zip(files, calibrations):
        if calibration.checkpoint != file.name:
            logger.warning("calibration of %s was made for %s; using its RMSE for %s", file.parent, calibration.checkpoint, file.name)
    targets = tuple(
        bred_vector_target(c.rmse, channels, settings.perturbation.alpha, where=f"calibration {f.parent / 'calibration.json'}")
        for f, c in zip(files, calibrations)
    )
    identity = {
        "checkpoints": [checkpoint_identity(i) for i in infos],
        "rmse_48h": [c.rmse for c in calibrations],
        "perturbation": settings.perturbation.model_dump(mode="json"),
        "analysis": analysis.attrs.get("config_hash", ""),
        "model_channels": list(channels),
        # only when set, so the stores of cold-sampled ensembles keep their keys
        **({"dyffusion_sampler": settings.dyffusion_sampler} if settings.dyffusion_sampler != "cold" else {}),
        **({"mass_budget_correction": True} if settings.mass_budget_correction else {}),
    }
    content_key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    lead_times = (np.arange(0, settings.n_steps + 1, per_output)
                  * np.timedelta64(int(step.total_seconds()), "s").astype("timedelta64[ns]"))
    attrs = {
        "analysis_store": str(config.analysis_path),
        "checkpoint_files": [str(f) for f in files],
        "checkpoint_seeds": [i.seed for i in infos],
        "time_step_hours": model.time_step_hours,
        "bred_vector_alpha": settings.perturbation.alpha,
        "perturbation": json.dumps(settings.perturbation.model_dump(mode="json"), sort_keys=True),
        "include_control": int(settings.include_control),
        "samples": settings.samples,
        "mass_budget_correction": int(settings.mass_budget_correction),
    }
    if settings.time_mean_hours is not None:
        attrs["time_mean_hours"] = settings.time_mean_hours
        attrs["cell_methods"] = f"lead_time: mean (windows of {settings.time_mean_hours} h ending at each lead; lead 0 instantaneous)"
    return EnsembleInputs(
        settings=settings,
        plan=plan,
        store_path=settings.store_path(config.run_dir),
        checkpoint_files=files,
        channels=channels,
        output_channels=outputs,
        output_index=tuple(channels.index(c) for c in outputs),
        grid=model.grid,
        time_step=step,
        lead_times=lead_times,
        targets=targets,
        seed_mask=torch.tensor([c in settings.perturbation.seed_channels for c in channels]),
        non_negative=non_negative_mask(channels),
        content_key=content_key,
        frames=frames,
        store_attrs=attrs,
        steps_per_output=per_output,
        constraints=constraints,
    )
