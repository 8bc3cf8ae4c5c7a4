"""Forecasts with a trained model: physical state in, physical states out.

A :class:`Forecaster` pairs a model with its normalisation and device. It
steps in normalised space, ``z_{t+1} = f(z_t)``, and converts at the edges,
``x = z * std + mean``; the ensemble stage, validation and calibration all
go through it. A model with its own ``rollout(z, n_steps)`` (Spherical
DYffusion's cold sampler, :class:`models.dyffusion.DYffusion`, whose state
is more than the last emitted step) is rolled out by that; ``forward`` is
then only its first step. Rollouts take optional per-row dropout generators
(:func:`models.sfno.dropout_generators`) for stochastic members. On CUDA the model runs under bf16 autocast (the SHT stays
float32 inside the model) and states are kept in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from models.sfno import dropout_generators
from pipeline.training.checkpoint import CheckpointInfo, load_checkpoint
from pipeline.training.normalisation import Normalisation


def autocast_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked, otherwise nothing (CPU runs float32)."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        bf16 autocast on CUDA.
    """

    def __init__(self, model: nn.Module, normalisation: Normalisation, device: torch.device | str = "cpu", bf16: bool = True) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.normalisation = normalisation
        self.bf16 = bf16
        self.info: CheckpointInfo | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu", bf16: bool = True) -> "Forecaster":
        """Load ``path`` (see :func:`pipeline.training.checkpoint.load_checkpoint`)."""
        model, info = load_checkpoint(path, map_location=device)
        forecaster = cls(model, info.normalisation, device, bf16)
        forecaster.info = info
        return forecaster

    @torch.no_grad()
    def step_normalised(self, z: torch.Tensor) -> torch.Tensor:
        """One model step in normalised units (float32 out)."""
        with autocast_context(self.device, self.bf16):
            return self.model(z.to(self.device)).float()

    @torch.no_grad()
    def rollout_normalised(self, z: torch.Tensor, n_steps: int,
                           generators: Sequence[torch.Generator] | None = None) -> Iterator[torch.Tensor]:
        """Yield ``n_steps`` successive normalised states (float32) from ``z``.

        ``generators`` (one per batch row) draw the Monte Carlo dropout masks of
        a stochastic model; without them an eval-mode model is deterministic.
        """
        z = z.to(self.device)
        own = getattr(self.model, "rollout", None)
        states = own(z, n_steps) if own is not None else self._iterate(z, n_steps)
        for _ in range(n_steps):
            with dropout_generators(generators), autocast_context(self.device, self.bf16):
                z = next(states).float()
            yield z

    def _iterate(self, z: torch.Tensor, n_steps: int) -> Iterator[torch.Tensor]:
        for _ in range(n_steps):
            z = self.model(z).float()
            yield z

    @torch.no_grad()
    def step(self, state: torch.Tensor) -> torch.Tensor:
        """One step from a physical state ``(B, C, nlat, nlon)``; returns the physical next state."""
        z = self.normalisation.normalise(state.to(self.device, torch.float32))
        return self.normalisation.denormalise(self.step_normalised(z))

    @torch.no_grad()
    def rollout(self, state: torch.Tensor, n_steps: int,
                generators: Sequence[torch.Generator] | None = None) -> Iterator[torch.Tensor]:
        """Yield the physical states after 1, 2, ..., ``n_steps`` steps from ``state`` (see :meth:`rollout_normalised`)."""
        z = self.normalisation.normalise(state.to(self.device, torch.float32))
        for step in self.rollout_normalised(z, n_steps, generators):
            yield self.normalisation.denormalise(step)
