"""The training loop of one seed: data, model, DDP, checkpoints, validation, calibration.

One :class:`Trainer` runs on every rank of a torchrun job (or alone). Each
optimiser step consumes one global batch of ``training.batch_size`` windows,
split evenly over the ranks; DDP averages the gradients, so ``W`` ranks with
per-rank batch ``B / W`` take the same steps as one process with batch ``B``
(the sampler hands the ranks interleaved slices of the same order).

Exact resume: ``last.pt`` holds weights, optimiser state, the weight
average (``training.ema_decay``), every rank's generator states and the
position in the epoch; a resumed run
rebuilds the epoch's sample order from ``(seed, epoch)``, skips the batches
already done and continues bitwise identically on CPU (with
``training.deterministic`` on GPU as far as the kernels allow).

A non-finite loss or gradient on any rank stops every rank with a
:class:`MyriadError`; no checkpoint is written after it, so ``last.pt`` stays
the last good state.

Spherical DYffusion (``model.kind: dyffusion``) trains in the same loop, one
*stage* per run (:mod:`pipeline.training.dyffusion`): windows of ``h + 1``
states, the stage's loss module in place of the SFNO's rollout, the
interpolator validated against linear interpolation in time, the forecaster
validated (and calibrated) through the cold sampler with its frozen
interpolator, which its checkpoints carry.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from models.dyffusion import DYffusion
from models.registry import build_model
from models.seasonal import fit_seasonal_cycle
from models.sfno import SFNO
from pipeline.config import MyriadConfig
from pipeline.data.channels import wind_pairs
from pipeline.data.store import format_time
from pipeline.errors import MyriadError
from pipeline.training.averaging import WeightAverage
from pipeline.training.calibration import (
    CALIBRATION_FILE,
    Calibration,
    load_calibration,
    write_calibration,
)
from pipeline.training.checkpoint import (
    BEST,
    LAST,
    capture_rng_state,
    load_checkpoint,
    read_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
    seed_directory,
    select_checkpoint,
)
from pipeline.training.config import training_objective
from pipeline.training.dataset import (
    WindowBatchSampler,
    WindowDataset,
    load_frames,
    open_training_data,
    resolve_periods,
)
from pipeline.training.distributed import DistributedContext
from pipeline.training.dyffusion import (
    StageLoss,
    check_stage,
    checked_stage,
    evaluate_interpolator,
    load_frozen_interpolator,
)
from pipeline.training.forecast import Forecaster, autocast_context
from pipeline.training.losses import SphericalAMSE, SphericalL1, SphericalMSE, channel_weight_vector
from pipeline.training.optim import (
    build_optimizer,
    cosine_with_warmup,
    set_learning_rate,
)
from pipeline.training.polar_loss import PolarEmphasis, polar_term
from pipeline.training.validation import Skill, climatology, evaluate, evenly_spaced
from pipeline.training.warm_start import init_checkpoint_path, warm_start
from pipeline.training.wind_loss import PARTS, HelmholtzWindLoss, WindPotentials, helmholtz_channel_weights, wind_part_scales

logger = logging.getLogger(__name__)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s generators (dropout) for run seed ``seed``."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class RolloutLoss(nn.Module):
    r"""The SFNO's objective: ``n`` autoregressive steps in one forward (one DDP forward per optimiser step).

    For a window :math:`(z_0, \ldots, z_n)`: :math:`L = \frac1n \sum_{k=1}^n
    \ell(M^k(z_0), z_k)` with :math:`\ell` the area-weighted MSE. Step
    :math:`k` gets the valid time of its input, ``seconds + (k - 1) * step_seconds``
    (used by a model with forcings).
    """

    def __init__(self, model: nn.Module, loss: nn.Module, step_seconds: float) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.step_seconds = step_seconds

    def forward(self, window: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
        n_steps = window.shape[1] - 1
        z = window[:, 0]
        total = 0.0
        for k in range(1, n_steps + 1):
            z = self.model(z, time=seconds + (k - 1) * self.step_seconds)
            total = total + self.loss(z, window[:, k])
        return total / n_steps


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_seconds: float = 0.0
    best_score: float = math.inf
    last_validated_step: int = -1
    complete: bool = False


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left behind."""

    directory: Path
    steps: int
    skill: Skill | None
    stopped_by: str
    """``"steps"``, ``"time budget"`` or ``"already complete"``."""


class Trainer:
    """Train one seed of the configured model (call on every rank).

    Parameters
    ----------
    config
        Run config with ``model`` and ``training`` sections.
    seed
        Seed of this checkpoint (init, data order, dropout).
    ctx
        This process's place in the process group.
    stage
        DYffusion stage (``"interpolator"`` or ``"forecaster"``); None for ``kind: sfno``.

    Raises
    ------
    MyriadError
        Missing sections, bad data or statistics, inconsistent settings, or
        a ``last.pt`` made with other settings.
    """

    def __init__(self, config: MyriadConfig, seed: int, ctx: DistributedContext, stage: str | None = None) -> None:
        if config.model is None or config.training is None:
            raise MyriadError("config: training needs the `model:` and `training:` sections (see configs/quickstart.yaml)")
        self.stage = checked_stage(config, stage)
        interpolator = check_stage(config, self.stage, seed) if self.stage is not None else None
        self.config = config
        self.seed = seed
        self.ctx = ctx
        self.training = training = config.training
        if training.batch_size % ctx.world_size:
            raise MyriadError(f"training.batch_size ({training.batch_size}) must be divisible by the number of ranks ({ctx.world_size})")
        if training.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)

        self.data = open_training_data(config)
        self.step_hours = self.data.step_hours
        self.val_leads = [self._lead_steps(h, "training.val_lead_hours") for h in training.val_lead_hours]
        self.calibration_lead = self._lead_steps(training.calibration_lead_hours, "training.calibration_lead_hours")
        train_index, val_index = resolve_periods(self.data, training)
        self.val_period = (format_time(self.data.times[val_index[0]]), format_time(self.data.times[val_index[-1]]))
        self.train_frames = load_frames(self.data, train_index, training, "training")
        self.val_frames = load_frames(self.data, val_index, training, "validation")
        longest = max(max(self.val_leads), self.calibration_lead)
        if len(self.val_frames) <= longest:
            raise MyriadError(
                f"training.val_period: {len(self.val_frames)} times are too few for a {longest * self.step_hours} h lead; "
                "lengthen it or shorten training.val_lead_hours / calibration_lead_hours"
            )
        window_steps = None  # DYffusion: h, or (K + 1) h for a forecaster with K pushforward chains
        pushforward = config.model.dyffusion.pushforward_chains if self.stage == "forecaster" else 0
        if self.stage is not None:
            window_steps = config.model.dyffusion.horizon * (1 + pushforward)
        self.dataset = WindowDataset(self.train_frames, window_steps or training.rollout_steps)
        self.climatology = climatology(self.train_frames, training.climatology_samples)
        units = self.data.tendency_ratio if training.loss_units == "tendency" else None
        self.noise_scale = torch.as_tensor(training.input_noise * self.data.tendency_ratio, dtype=torch.float32,
                                           device=ctx.device)[:, None, None]
        self.loss = SphericalMSE(self.data.grid, channel_weight_vector(self.data.channels, training.channel_weights, units)).to(ctx.device)
        """The validation metric's per-channel MSE (of the components, whatever ``training.wind_loss``)."""
        self.wind_potentials = self._wind_potentials() if training.wind_loss == "helmholtz" else None

        grid = self.data.grid
        self.kind, self.hparams = config.model.stage_model(self.stage, list(self.data.channels), len(self.data.static_names),
                                                           grid.nlat, grid.nlon)
        seed_everything(seed)
        self.model = build_model(self.kind, **self.hparams)
        self.directory = seed_directory(config.run_dir, config.model.checkpoint_name(self.stage), seed)
        self._warm_start()
        self.model.set_static_fields(torch.from_numpy(self.data.static_fields()))
        if config.model.residual:
            self.model.set_increment_scale(torch.as_tensor(self.data.tendency_ratio, dtype=torch.float32))
        if self.hparams.get("wind_pairs"):
            self.model.set_output_std(torch.as_tensor(self.data.normalisation.std, dtype=torch.float32))
        if self.hparams.get("seasonal_harmonics"):
            self.model.set_seasonal_cycle(self._seasonal_coefficients(self.hparams["seasonal_harmonics"]), self.step_hours * 3600.0)
        self.model.to(ctx.device)
        self.interpolator = (load_frozen_interpolator(interpolator.path, ctx.device)
                             if interpolator is not None else None)
        self.interpolator_info = interpolator
        if self.stage is None:
            objective: nn.Module = RolloutLoss(self.model, self._scored(SphericalMSE, units), self.step_hours * 3600.0)
        else:
            stage_loss = self._scored(SphericalMSE, units) if self.stage == "interpolator" else self._forecaster_loss(units)
            objective = StageLoss(self.stage, self.model, stage_loss, self.interpolator, pushforward,
                                  self.step_hours * 3600.0,
                                  config.model.dyffusion.interpolation_end if self.stage == "forecaster" else "truth")
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # Buffers (static fields, increment scale) are equal on every rank and never change;
            # torch 2.14 deprecates broadcast_buffers in favour of a keyword older torch lacks.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                objective = DistributedDataParallel(objective, device_ids=device_ids, broadcast_buffers=False)
        self.objective = torch.compile(objective) if training.compile else objective

        targets_at = training.targets_at if window_steps is None else (lambda step: window_steps)
        self.sampler = WindowBatchSampler(
            len(self.dataset), training.batch_size // ctx.world_size, ctx.rank, ctx.world_size, seed, targets_at
        )
        epochs_steps = training.epochs * self.sampler.steps_per_epoch if training.epochs is not None else None
        self.total_steps = min(s for s in (epochs_steps, training.max_steps) if s is not None)
        self.loader = DataLoader(
            self.dataset,
            batch_size=None,
            sampler=self.sampler,
            num_workers=training.num_workers,
            pin_memory=ctx.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )
        self.optimizer = build_optimizer(self.model, training.lr, training.weight_decay)
        self.progress = Progress()
        seed_everything(rank_seed(seed, ctx.rank))
        resumed = self._resume()
        self.average = self._weight_average(resumed)

    # ------------------------------------------------------------------ setup helpers

    def _forecaster_loss(self, units: np.ndarray | None) -> nn.Module:
        """The DYffusion forecaster stage's loss (``model.dyffusion.forecaster_loss``)."""
        if self.config.model.dyffusion.forecaster_loss == "amse":
            lmax = SphericalAMSE.degrees(self.data.grid)
            network = next(m for m in self.model.modules() if isinstance(m, SFNO))
            if not network.bandlimit_output or network.sht_data.lmax > lmax:
                raise MyriadError(
                    f"model.dyffusion.forecaster_loss amse scores the spherical harmonic degrees below {lmax}, "
                    f"but this forecaster's increments reach degree {network.sht_data.lmax - 1}"
                    f"{'' if network.bandlimit_output else ' and beyond (bandlimit_output is off)'}; "
                    "use model.scale_factor >= 2 with bandlimit_output: true, or forecaster_loss: l1"
                )
            return self._scored(SphericalAMSE, units)
        return self._scored(SphericalL1, units, power=1)

    def _scored(self, loss_class: type[SphericalMSE], units: np.ndarray | None, power: int = 2) -> nn.Module:
        """A training loss of ``loss_class``, of the wind pairs' rotational and divergent parts with ``wind_loss: helmholtz``,
        plus the polar rows' error with ``polar_weight > 0``."""
        channels, weights, grid = list(self.data.channels), self.training.channel_weights, self.data.grid
        component_weights = channel_weight_vector(channels, weights, units, power)
        if self.wind_potentials is None:
            loss: nn.Module = loss_class(grid, component_weights)
        else:
            loss = HelmholtzWindLoss(loss_class(grid, helmholtz_channel_weights(channels, weights, self.wind_potentials.pairs, units,
                                                                                power, self.training.divergent_wind_weight)),
                                     self.wind_potentials)
        if self.training.polar_weight > 0:
            loss = PolarEmphasis(loss, polar_term(grid, self.training.polar_latitude, component_weights, absolute=power == 1),
                                 self.training.polar_weight)
        return loss.to(self.ctx.device)

    def _seasonal_coefficients(self, harmonics: int) -> torch.Tensor:
        """Annual harmonics of the training frames' normalised zonal means (:func:`models.seasonal.fit_seasonal_cycle`)."""
        frames, block = self.train_frames, 512
        zonal = torch.cat([frames.read(np.arange(k, min(k + block, len(frames)))).mean(-1).double()
                           for k in range(0, len(frames), block)])
        try:
            return fit_seasonal_cycle(zonal, frames.seconds(np.arange(len(frames))), harmonics).float()
        except ValueError as exc:
            raise MyriadError(f"model.dyffusion.seasonal_harmonics: {exc} (the training period is "
                              f"{len(frames)} times of {self.step_hours:g} h)") from None

    def _wind_potentials(self) -> WindPotentials:
        """The wind pairs' potentials scaled by each part's change over the training frames (``wind_loss: helmholtz``).

        Raises
        ------
        MyriadError
            No wind pair among the channels, or a part that never changes.
        """
        channels, grid = list(self.data.channels), self.data.grid
        pairs = wind_pairs(channels)
        if not pairs:
            raise MyriadError(f"training.wind_loss: helmholtz scores wind pairs (such as u500 and v500), but the channels "
                              f"{channels} have none; use wind_loss: components")
        raw = WindPotentials(grid, pairs, self.data.normalisation)
        scales = wind_part_scales(self.train_frames, raw, grid.quadrature_weights(), self.training.climatology_samples,
                                  self.training.loss_units)
        for (i, j), scale in zip(pairs, scales):
            if not np.all(np.isfinite(scale) & (scale > 0)):
                raise MyriadError(f"training.wind_loss: helmholtz: the {channels[i]}/{channels[j]} pair's "
                                  f"{' and '.join(p for p, s in zip(PARTS, scale) if not s > 0)} part never changes in the training frames")
            logger.info("wind loss: %s/%s scored as rotational and divergent parts, scales %.4g and %.4g m/s (%s)",
                        channels[i], channels[j], scale[0], scale[1], self.training.loss_units)
        return WindPotentials(grid, pairs, self.data.normalisation, scales).to(self.ctx.device)

    def _lead_steps(self, hours: int, key: str) -> int:
        if hours % self.step_hours:
            raise MyriadError(f"{key}: {hours} h is not a multiple of the store's time step ({self.step_hours} h)")
        return hours // self.step_hours

    def _warm_start(self) -> None:
        """A new run's first weights from ``training.init_from`` (:mod:`pipeline.training.warm_start`)."""
        if (self.directory / LAST).is_file():
            return
        path = init_checkpoint_path(self.config, self.stage, self.seed)
        if path is None:
            return
        added = warm_start(self.model, self.kind, self.hparams, self.data, path)
        if self.ctx.is_main:
            logger.info("seed %d: starting from the weights of %s%s", self.seed, path,
                        f" (the encoder's columns for the new forcings {added} start at zero)" if added else "")

    def _resume(self) -> dict | None:
        """Continue from ``last.pt`` if there is one (its live weights, optimiser, progress, generators); returns its payload."""
        path = self.directory / LAST
        if self.ctx.is_main and self.directory.is_dir():
            remove_stale_temporaries(self.directory)
        self.ctx.barrier()
        if not path.is_file():
            return None
        payload = read_checkpoint(path, map_location=self.ctx.device)
        self._check_compatible(payload, path)
        self.model.load_state_dict(payload.get("training_weights", payload["model"]["state_dict"]))
        self.optimizer.load_state_dict(payload["optimizer"])
        saved = payload["progress"]
        self.progress = Progress(**{f.name: saved[f.name] for f in fields(Progress)})
        self._restart_best_on_new_objective(payload, path)
        if payload["world_size"] == self.ctx.world_size:
            restore_rng_state(payload["rng"][self.ctx.rank])
        else:
            logger.warning(
                "%s was written by %d ranks, this run has %d: data order and dropout continue reseeded, not exactly",
                path, payload["world_size"], self.ctx.world_size,
            )
            seed_everything(rank_seed(self.seed + self.progress.step, self.ctx.rank))
        if self.ctx.is_main:
            logger.info("seed %d: resuming from %s at step %d (epoch %d, batch %d)", self.seed, path,
                        self.progress.step, self.progress.epoch, self.progress.batch_in_epoch)
        return payload

    def _restart_best_on_new_objective(self, payload: dict, path: Path) -> None:
        """Forget the best validation score when the resumed run trains another loss (a fine-tune)."""
        before = training_objective(json.loads(payload["config"]), self.stage)
        now = training_objective(self.config.model_dump(mode="json"), self.stage)
        if before == now or not math.isfinite(self.progress.best_score):
            return
        self.progress.best_score = math.inf
        if self.ctx.is_main:
            changed = ", ".join(f"{key} {before[key]} -> {now[key]}" for key in now if before[key] != now[key])
            logger.info("seed %d: the training loss changed since %s (%s): best.pt is chosen again from this "
                        "run's validations", self.seed, path, changed)

    def _weight_average(self, resumed: dict | None) -> WeightAverage | None:
        """The EMA of the weights when ``training.ema_decay`` is set: a resumed run's average, else one
        starting from the current weights (a fine-tune may switch averaging on)."""
        decay = self.training.ema_decay
        saved = (resumed or {}).get("weight_average")
        if decay is None:
            if saved is not None and self.ctx.is_main:
                logger.info("seed %d: training.ema_decay is unset; the checkpoint's weight average is dropped", self.seed)
            return None
        average = WeightAverage(self.model, decay)
        if saved is not None:
            average.load(resumed["model"]["state_dict"], int(saved["updates"]))
        return average

    def _check_compatible(self, payload: dict, path: Path) -> None:
        wanted = {
            "model kind": self.kind,
            "model hyper-parameters": self.hparams,
            "channels": list(self.data.channels),
            "static fields": list(self.data.static_names),
            "grid": [self.data.grid.nlat, self.data.grid.nlon],
            "seed": self.seed,
        }
        found = {
            "model kind": payload["model"]["kind"],
            "model hyper-parameters": payload["model"]["hparams"],
            "channels": list(payload["channels"]),
            "static fields": list(payload["static"]),
            "grid": [payload["grid"]["nlat"], payload["grid"]["nlon"]],
            "seed": payload["seed"],
        }
        if self.interpolator_info is not None:
            wanted["interpolator"] = [str(self.interpolator_info.path), self.interpolator_info.step]
            frozen = payload.get("interpolator") or {}
            found["interpolator"] = [frozen.get("source"), frozen.get("step")]
        differ = [key for key in wanted if wanted[key] != found[key]]
        if differ:
            raise MyriadError(
                f"checkpoint {path}: was trained with different {', '.join(differ)}; "
                f"choose another model.name or run_dir, or delete {self.directory} to start over"
            )

    # ------------------------------------------------------------------ the loop

    @property
    def _budget_seconds(self) -> float:
        return self.training.max_minutes * 60.0 if self.training.max_minutes is not None else math.inf

    def _finished(self) -> bool:
        return self.progress.step >= self.total_steps or self.progress.elapsed_seconds >= self._budget_seconds

    def fit(self) -> TrainResult:
        """Train until ``total_steps`` or the time budget; validate each epoch; checkpoint."""
        progress = self.progress
        if self._finished():
            if self.ctx.is_main:
                logger.info("seed %d: already trained (%d steps) in %s", self.seed, progress.step, self.directory)
            return TrainResult(self.directory, progress.step, None, "already complete")
        if self.ctx.is_main:
            logger.info(
                "seed %d: training %s (%d parameters) on %d rank(s), %s, for %d steps (%d per epoch, global batch %d)",
                self.seed, self.kind, sum(p.numel() for p in self.model.parameters()), self.ctx.world_size,
                self.ctx.device.type, self.total_steps, self.sampler.steps_per_epoch, self.training.batch_size,
            )
        clock = time.monotonic()
        elapsed_before = progress.elapsed_seconds
        log_clock, log_step = time.monotonic(), progress.step
        skill: Skill | None = None
        stopped_by = "steps"
        while not self._finished():
            self.sampler.set_epoch(progress.epoch)
            self.sampler.start_at(progress.batch_in_epoch)
            for batch in self.loader:
                loss, time_up = self.train_step(batch, elapsed_before + time.monotonic() - clock)
                progress.step += 1
                progress.batch_in_epoch += 1
                progress.elapsed_seconds = elapsed_before + time.monotonic() - clock
                if self.ctx.is_main and (progress.step % self.training.log_every == 0 or progress.step == self.total_steps):
                    now = time.monotonic()
                    rate = (progress.step - log_step) * self.training.batch_size / max(now - log_clock, 1e-9)
                    logger.info(
                        "seed %d step %d/%d epoch %d loss %.4g lr %.3g %.1f samples/s",
                        self.seed, progress.step, self.total_steps, progress.epoch, loss,
                        self.optimizer.param_groups[0]["lr"], rate,
                    )
                    log_clock, log_step = now, progress.step
                if time_up:
                    stopped_by = "time budget"
                    progress.elapsed_seconds = max(progress.elapsed_seconds, self._budget_seconds)
                    break
                if progress.step >= self.total_steps:
                    break
                if progress.step % self.training.checkpoint_every == 0 and progress.batch_in_epoch < self.sampler.steps_per_epoch:
                    self._save([LAST], None)
            if progress.batch_in_epoch >= self.sampler.steps_per_epoch:
                skill = self.validate()
                progress.epoch += 1
                progress.batch_in_epoch = 0
                self._save(self._improved(skill), skill)
        if progress.last_validated_step != progress.step:
            skill = self.validate()
            progress.complete = True
            self._save(self._improved(skill), skill)
        else:
            progress.complete = True
            self._save([LAST], skill)
        if self.ctx.is_main:
            logger.info("seed %d: finished at step %d (%s) in %.0f s; checkpoints in %s", self.seed, progress.step,
                        stopped_by, progress.elapsed_seconds, self.directory)
        return TrainResult(self.directory, progress.step, skill, stopped_by)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], elapsed: float = 0.0) -> tuple[float, bool]:
        """One optimiser step on ``(windows, start times)``; returns the rank-mean loss and whether the time budget is spent.

        ``elapsed`` (training seconds so far) counts as rank 0 measured it, on every rank,
        so that the time-aware schedule and the budget stop agree across ranks.
        """
        windows, seconds = batch
        windows = windows.to(self.ctx.device, non_blocking=True)
        seconds = seconds.to(self.ctx.device)
        self.model.train()
        if self.training.input_noise > 0:
            windows = windows.clone()
            windows[:, 0] += self.noise_scale * torch.randn_like(windows[:, 0])
        with autocast_context(self.ctx.device, self.training.bf16):
            loss = self.objective(windows, seconds)
        flags = torch.stack([
            loss.detach().double(),
            (~torch.isfinite(loss.detach())).double(),
            torch.tensor(elapsed if self.ctx.is_main else 0.0, dtype=torch.float64, device=loss.device),
        ])
        self.ctx.all_reduce_sum(flags)
        if flags[1] > 0:
            self._diverged("loss", float("nan"))
        elapsed = float(flags[2])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.training.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.training.grad_clip)
            if not torch.isfinite(norm):
                self._diverged("gradient norm", float(norm))
        set_learning_rate(self.optimizer, self.learning_rate(elapsed))
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        return float(flags[0]) / self.ctx.world_size, elapsed >= self._budget_seconds

    def learning_rate(self, elapsed: float) -> float:
        """Learning rate of the current step (warm-up + cosine, see :mod:`pipeline.training.optim`)."""
        t = self.training
        return t.lr * cosine_with_warmup(self.progress.step, t.warmup_steps, self.total_steps, t.min_lr_ratio,
                                         elapsed / self._budget_seconds)

    def _diverged(self, what: str, value: float) -> None:
        last = self.directory / LAST
        kept = (
            f"the last good checkpoint {last} (step {read_checkpoint(last)['progress']['step']}) is kept"
            if last.is_file() else "no checkpoint had been written yet"
        )
        raise MyriadError(
            f"training diverged at step {self.progress.step + 1} (seed {self.seed}): the {what} is {value}; "
            f"lower training.lr (now {self.training.lr:g}) or set training.grad_clip; {kept}"
        )

    # ------------------------------------------------------------------ validation and checkpoints

    def validate(self) -> Skill:
        """Skill on the validation period (every rank gets the same result).

        Forecasts (SFNO, DYffusion forecaster through its deterministic
        sampler) at ``val_lead_hours``; the DYffusion interpolator at each
        interior step of the horizon, against linear interpolation.
        With ``training.ema_decay`` set, the averaged weights are scored
        (they are what the checkpoints hold for forecasts).
        """
        with self._forecast_weights():
            skill = self._score()
        self.progress.last_validated_step = self.progress.step
        if self.ctx.is_main:
            logger.info("seed %d validation at step %d (%d initial times, RMSE in channel units):\n%s",
                        self.seed, self.progress.step, skill.n_inits, skill.table())
        return skill

    def _forecast_weights(self) -> AbstractContextManager:
        """The averaged weights in the model for a block, when averaging is on."""
        return self.average.swapped_into(self.model) if self.average is not None else nullcontext()

    def _score(self) -> Skill:
        """The validation skill of the weights now in the model."""
        self.model.eval()
        if self.stage == "interpolator":
            horizon = self.config.model.dyffusion.horizon
            starts = evenly_spaced(len(self.val_frames) - horizon, self.training.val_max_inits)
            skill = evaluate_interpolator(self.model, self.val_frames, starts, horizon, self.step_hours, self.loss,
                                          self.data.normalisation, self.ctx)
        else:
            forecaster = Forecaster(self._forecast_model(), self.data.normalisation, self.ctx.device, self.training.bf16,
                                    step_hours=self.step_hours)
            starts = evenly_spaced(len(self.val_frames) - max(self.val_leads), self.training.val_max_inits)
            if self.interpolator is not None:
                self.interpolator.set_mc_dropout(False)  # deterministic validation
            try:
                skill = evaluate(
                    forecaster.rollout_normalised, self.val_frames, starts, self.val_leads, self.step_hours,
                    self.climatology, self.loss, self.data.normalisation, self.ctx,
                )
            finally:
                if self.interpolator is not None:
                    self.interpolator.set_mc_dropout(True)  # the forecaster stage trains on its samples
        return skill

    def _forecast_model(self) -> nn.Module:
        """The network as a forecaster: the SFNO, or the DYffusion sampler with the frozen interpolator."""
        return self.model if self.stage != "forecaster" else DYffusion(self.model, self.interpolator)

    def _improved(self, skill: Skill) -> list[str]:
        """Files to write after a validation: ``best.pt`` too when the score improved."""
        score = skill.score()
        if score < self.progress.best_score:
            self.progress.best_score = score
            return [LAST, BEST]
        return [LAST]

    def _save(self, names: list[str], skill: Skill | None) -> None:
        """Write checkpoint files (rank 0) with every rank's generator states; refuses non-finite weights.

        ``model.state_dict`` holds the weights forecasts use: the average when
        ``training.ema_decay`` is set, whose live weights go to ``training_weights``.
        """
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._diverged("model weights", float("nan"))
        if self.average is not None and not self.average.is_finite():
            self._diverged("averaged model weights", float("nan"))
        rng = self.ctx.all_gather_objects(capture_rng_state())
        if self.ctx.is_main:
            payload = {
                "model": {"kind": self.kind, "name": self.config.model.name, "hparams": self.hparams,
                          "state_dict": (self.average.state_dict(self.model) if self.average is not None
                                         else self.model.state_dict())},
                "channels": list(self.data.channels),
                "static": list(self.data.static_names),
                "grid": {"nlat": self.data.grid.nlat, "nlon": self.data.grid.nlon, "name": self.data.grid.name},
                "time_step_hours": self.step_hours,
                "normalisation": self.data.normalisation.to_dict(),
                "seed": self.seed,
                "progress": {**asdict(self.progress), "steps_per_epoch": self.sampler.steps_per_epoch,
                             "total_steps": self.total_steps},
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "world_size": self.ctx.world_size,
                "metrics": skill.to_dict() if skill is not None else {},
                "config": self.config.model_dump_json(),
            }
            if self.average is not None:
                payload["training_weights"] = self.model.state_dict()
                payload["weight_average"] = {"decay": self.average.decay, "updates": self.average.updates}
            if self.interpolator_info is not None:
                payload["interpolator"] = {
                    "kind": self.interpolator_info.kind, "hparams": self.interpolator_info.hparams,
                    "state_dict": self.interpolator.state_dict(), "source": str(self.interpolator_info.path),
                    "step": self.interpolator_info.step,
                }
            for name in names:
                save_checkpoint(payload, self.directory / name)
            logger.debug("seed %d: wrote %s at step %d", self.seed, ", ".join(names), self.progress.step)
        self.ctx.barrier()

    # ------------------------------------------------------------------ calibration

    def calibrate(self) -> Calibration:
        """48 h RMSE per channel of the forecast checkpoint, written as ``calibration.json`` beside it."""
        path = select_checkpoint(self.directory)
        step = int(read_checkpoint(path)["progress"]["step"])
        lead_hours = self.calibration_lead * self.step_hours
        if (self.directory / CALIBRATION_FILE).is_file():
            existing = load_calibration(self.directory)
            if (existing.checkpoint, existing.step, existing.lead_hours) == (path.name, step, lead_hours):
                return existing
        model, info = load_checkpoint(path, map_location=self.ctx.device)
        forecaster = Forecaster(model, info.normalisation, self.ctx.device, self.training.bf16, step_hours=self.step_hours)
        starts = evenly_spaced(len(self.val_frames) - self.calibration_lead, self.training.calibration_max_inits)
        skill = evaluate(
            forecaster.rollout_normalised, self.val_frames, starts, [self.calibration_lead], self.step_hours,
            None, self.loss, info.normalisation, self.ctx,
        )
        calibration = Calibration(
            lead_hours=lead_hours,
            checkpoint=path.name,
            step=step,
            n_inits=skill.n_inits,
            period=self.val_period,
            rmse={c: float(v) for c, v in zip(skill.channels, skill.rmse["model"][0])},
            persistence_rmse={c: float(v) for c, v in zip(skill.channels, skill.rmse["persistence"][0])},
        )
        if self.ctx.is_main:
            written = write_calibration(calibration, self.directory)
            logger.info("seed %d: %d h RMSE of %s written to %s: %s", self.seed, lead_hours, path.name, written,
                        ", ".join(f"{c} {v:.4g}" for c, v in calibration.rmse.items()))
        self.ctx.barrier()
        return calibration

