r"""Forecasts with a trained model: physical state in, physical states out.

A :class:`Forecaster` pairs a model with its normalisation and device. It
steps in normalised space, ``z_{t+1} = f(z_t)``, and converts at the edges,
``x = z * std + mean``; the ensemble stage, validation and calibration all
go through it. A model with its own ``rollout(z, n_steps, time, step_seconds)`` (Spherical
DYffusion's cold or jump sampler, :class:`models.dyffusion.DYffusion`, whose state
is more than the last emitted step) is rolled out by that; ``forward`` is
then only its first step. Valid times advance by the model's time step and
feed a model's forcings (:mod:`models.forcings`).

**Non-negative channels** (precipitation, humidity, water vapour:
:func:`pipeline.data.channels.is_non_negative`) are clipped at zero in every
state a forecast emits, :math:`x_c \leftarrow \max(x_c, 0)`, i.e.
:math:`z_c \leftarrow \max(z_c, -\mu_c / \sigma_c)` in normalised units: a
network's increment knows no floor, and a free run would otherwise report
negative rain where it never rains. The clip is applied to the output only;
the rollout carries on from the model's own state. (Feeding the clipped
state back, as ACE's corrector does for a model trained with it, moved the
10-year climate of our DYffusion model, trained without it, further from
the planet's: README, Stage 5.) Rollouts take optional per-row dropout generators
(:func:`models.sfno.dropout_generators`) for stochastic members. On CUDA the model runs under bf16 autocast (the SHT stays
float32 inside the model) and states are kept in float32.

``compile=True`` compiles every SFNO network inside the model with
``torch.compile`` (inductor; one graph per batch shape, built on first use).
A compiled model also runs under bf16 autocast on the CPU: eager bf16 there is
no faster than float32 (the casts cost what the bf16 matrix products save),
while inductor fuses the casts into the neighbouring kernels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from models.dyffusion import Constraint, DYffusion
from models.forcings import posix_seconds
from models.sfno import SFNO, dropout_generators
from pipeline.data.channels import is_non_negative
from pipeline.training.checkpoint import CheckpointInfo, load_checkpoint
from pipeline.training.normalisation import Normalisation


def autocast_context(device: torch.device, bf16: bool, cpu: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked, and on the CPU only with ``cpu`` too; otherwise nothing (float32)."""
    if bf16 and (device.type == "cuda" or (cpu and device.type == "cpu")):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_networks(model: nn.Module) -> int:
    """Compile every :class:`models.sfno.SFNO` inside ``model`` in place (``torch.compile``, static shapes); returns how many.

    In place (:meth:`torch.nn.Module.compile`), so parameter names, ``state_dict``
    and the wrapping modules (DYffusion's sampler) are unchanged.
    """
    networks = [module for module in model.modules() if isinstance(module, SFNO)]
    for network in networks:
        network.compile(dynamic=False)
    return len(networks)


def non_negative_floor(normalisation: Normalisation, device: torch.device) -> torch.Tensor | None:
    """Per-channel lower bound in normalised units, shape ``(C, 1, 1)``: ``-mean / std`` for non-negative channels, ``-inf`` else.

    None when no channel is non-negative.
    """
    bounded = [is_non_negative(name) for name in normalisation.channels]
    if not any(bounded):
        return None
    floor = [-m / s if b else -math.inf for b, m, s in zip(bounded, normalisation.mean, normalisation.std)]
    return torch.tensor(floor, dtype=torch.float32, device=device)[:, None, None]


class Forecaster:
    """A model plus its normalisation, for autoregressive forecasts.

    Parameters
    ----------
    model
        Maps a normalised state ``(B, C, nlat, nlon)`` to the next one.
    normalisation
        Per-channel mean/std of the model's channels.
    device
        Where the model lives; inputs are moved there.
    bf16
        bf16 autocast on CUDA (and on the CPU when compiled).
    compile
        Compile the model's SFNO networks (:func:`compile_networks`).
    step_hours
        The model's time step, which advances the valid times of a rollout
        (needed by a model with forcings; :meth:`from_checkpoint` sets it).

    Every method takes the valid ``time`` of its input state (one, or one per
    batch row; see :func:`models.forcings.posix_seconds`); a model with
    forcings refuses to run without it, others ignore it.
    """

    def __init__(self, model: nn.Module, normalisation: Normalisation, device: torch.device | str = "cpu", bf16: bool = True,
                 compile: bool = False, step_hours: float | None = None) -> None:
        self.device = torch.device(device)
        self.step_hours = step_hours
        self.model = model.to(self.device).eval()
        self.normalisation = normalisation
        self.floor = non_negative_floor(normalisation, self.device)
        self.bf16 = bf16
        self.compiled = compile and compile_networks(self.model) > 0
        self.info: CheckpointInfo | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu", bf16: bool = True,
                        compile: bool = False, dyffusion_sampler: str = "cold") -> "Forecaster":
        """Load ``path`` (see :func:`pipeline.training.checkpoint.load_checkpoint`); a DYffusion
        model samples with ``dyffusion_sampler`` (``cold`` or ``jump``; :meth:`models.dyffusion.DYffusion.use_sampler`)."""
        model, info = load_checkpoint(path, map_location=device)
        if isinstance(model, DYffusion):
            model.use_sampler(dyffusion_sampler)
        forecaster = cls(model, info.normalisation, device, bf16, compile, info.time_step_hours)
        forecaster.info = info
        return forecaster

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast of this forecaster's passes (bf16 on CUDA; on the CPU only when compiled)."""
        return autocast_context(self.device, self.bf16, cpu=self.compiled)

    def _seconds(self, time: object, batch: int) -> torch.Tensor | None:
        return None if time is None else posix_seconds(time, batch).to(self.device)

    @property
    def takes_time(self) -> bool:
        """Whether a network of the model has forcings or a seasonal cycle (and so needs valid times)."""
        return any(getattr(module, "forcings", ()) or getattr(module, "seasonal", None) is not None
                   for module in self.model.modules())

    @property
    def step_seconds(self) -> float | None:
        return None if self.step_hours is None else self.step_hours * 3600.0

    def clip(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` with each non-negative channel raised to its physical zero (``z`` itself when there is none)."""
        return z if self.floor is None else torch.maximum(z, self.floor)

    @torch.no_grad()
    def step_normalised(self, z: torch.Tensor, time: object = None) -> torch.Tensor:
        """One model step in normalised units (float32 out) from ``z`` valid at ``time``."""
        with self.autocast():
            return self.clip(self.model(z.to(self.device), time=self._seconds(time, z.shape[0])).float())

    @torch.no_grad()
    def rollout_normalised(self, z: torch.Tensor, n_steps: int, generators: Sequence[torch.Generator] | None = None,
                           time: object = None, constraint: Constraint | None = None) -> Iterator[torch.Tensor]:
        """Yield ``n_steps`` successive normalised states (float32) from ``z`` valid at ``time``.

        Each yielded state has its non-negative channels clipped (:meth:`clip`);
        the rollout continues from the model's unclipped state. ``generators`` (one per batch row) draw the Monte Carlo dropout masks of
        a stochastic model; without them an eval-mode model is deterministic. ``constraint`` (which needs
        ``time`` and the model's time step) is applied to every model step before it is clipped and continued from
        (a DYffusion model applies it inside its sampler: :meth:`models.dyffusion.ColdSampler.rollout`).
        """
        z = z.to(self.device)
        seconds = self._seconds(time, z.shape[0])
        if seconds is not None and self.step_seconds is None:
            if self.takes_time:
                raise ValueError("this model has forcings or a seasonal cycle: a rollout with valid times needs the forecaster's step_hours")
            seconds = None  # the model ignores valid times; nothing to advance
        if constraint is not None and seconds is None:
            raise ValueError("a constrained rollout needs valid times and the forecaster's step_hours")
        own = getattr(self.model, "rollout", None)
        states = (own(z, n_steps, seconds, self.step_seconds, constraint) if own is not None
                  else self._iterate(z, n_steps, seconds, constraint))
        for _ in range(n_steps):
            with dropout_generators(generators), self.autocast():
                z = next(states).float()
            yield self.clip(z)

    def _iterate(self, z: torch.Tensor, n_steps: int, seconds: torch.Tensor | None,
                 constraint: Constraint | None) -> Iterator[torch.Tensor]:
        for _ in range(n_steps):
            previous, z = z, self.model(z, time=seconds).float()
            if seconds is not None:
                seconds = seconds + self.step_seconds
            if constraint is not None:
                z = constraint(previous, z, seconds)
            yield z

    @torch.no_grad()
    def step(self, state: torch.Tensor, time: object = None) -> torch.Tensor:
        """One step from a physical state ``(B, C, nlat, nlon)`` valid at ``time``; returns the physical next state."""
        z = self.normalisation.normalise(state.to(self.device, torch.float32))
        return self.normalisation.denormalise(self.step_normalised(z, time))

    @torch.no_grad()
    def rollout(self, state: torch.Tensor, n_steps: int, generators: Sequence[torch.Generator] | None = None,
                time: object = None, constraint: Constraint | None = None) -> Iterator[torch.Tensor]:
        """Yield the physical states after 1, 2, ..., ``n_steps`` steps from ``state`` (see :meth:`rollout_normalised`)."""
        z = self.normalisation.normalise(state.to(self.device, torch.float32))
        for step in self.rollout_normalised(z, n_steps, generators, time, constraint):
            yield self.normalisation.denormalise(step)
