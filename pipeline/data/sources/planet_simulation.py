"""The planet's time integration: state, one solver step, samples, save and restore.

:class:`PlanetSimulation` owns the complete state of the forced shallow-water
run (spectral fields, Adams-Bashforth history, stirring, rain accumulator,
random generator, step count). Its evolution is a pure function of that state,
so a simulation restored from :meth:`PlanetSimulation.state_dict` continues
bit for bit like one that never stopped. Physics: :mod:`pipeline.data.sources.planet`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import torch

from pipeline.config import PlanetSourceConfig
from pipeline.data.sources.planet_dynamics import GRAVITY, GRID_FIELDS, SpectralShallowWater
from pipeline.data.sources.planet_forcing import JUNE_SOLSTICE, PlanetForcing
from pipeline.errors import MyriadError

STATE_FORMAT = 1
"""Version of :meth:`PlanetSimulation.state_dict`; bump when its content changes."""

_ADAMS_BASHFORTH = (
    (1.0,),  # forward Euler on the first step
    (1.5, -0.5),  # AB2 on the second
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),  # AB3 afterwards
)


@contextmanager
def simulation_context() -> Iterator[None]:
    """Torch on one intra-op thread (fastest at these sizes, reproducible bit for bit), inference mode."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(previous)


class PlanetSimulation:
    """A forced-dissipative shallow-water run sampled every output step.

    Parameters
    ----------
    config
        Physical and numerical knobs of the planet.
    nlat, nlon
        Equiangular grid with poles.
    start
        Time of the initial state (a resting layer of uniform depth).
    output_step
        Sampling interval; ``config.dt_seconds`` must divide it.

    Notes
    -----
    The simulation always sits at a whole number of output steps after
    ``start``; :meth:`advance` moves it by output steps and :meth:`sample`
    reads the fields there without changing anything. Run it inside
    :func:`simulation_context`.
    """

    def __init__(self, config: PlanetSourceConfig, nlat: int, nlon: int, start: datetime, output_step: timedelta) -> None:
        ratio = output_step.total_seconds() / config.dt_seconds
        if abs(ratio - round(ratio)) > 1e-9:
            raise MyriadError(
                f"source.dt_seconds ({config.dt_seconds:g}) must divide the output step "
                f"({output_step.total_seconds():g} s from time.step_hours)"
            )
        self.config = config
        self.start = start
        self.output_step = output_step
        self.steps_per_output = round(ratio)
        self.dt = float(config.dt_seconds)
        self.dynamics = SpectralShallowWater(nlat, nlon, self.dt, config.mean_depth_m)
        self.forcing = PlanetForcing(config, self.dynamics, output_step.total_seconds())
        self._solstice_offset = (start - JUNE_SOLSTICE).total_seconds()
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Resting layer of depth ``mean_depth_m``, empty history, generator seeded from the config."""
        shape = self.dynamics.spectral_shape
        dtype = self.dynamics.fast_dtype
        self.spectral = torch.zeros(shape, dtype=dtype)
        self.spectral[0, 0, 0] = math.sqrt(4.0 * math.pi) * GRAVITY * self.config.mean_depth_m
        self.history: list[torch.Tensor] = []
        self.stirring = self.forcing.new_stirring()
        self.rain = torch.zeros(self.dynamics.nlon, self.dynamics.nlat, dtype=dtype)
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(self.config.seed)

    @property
    def time(self) -> datetime:
        """Valid time of the current state."""
        return self.start + self.output_step * (self.step_count // self.steps_per_output)

    def state_dict(self) -> dict[str, Any]:
        """Everything the future depends on (tensors are copies)."""
        return {
            "format": STATE_FORMAT,
            "step_count": self.step_count,
            "spectral": self.spectral.clone(),
            "history": [t.clone() for t in self.history],
            "stirring": self.stirring.clone(),
            "rain": self.rain.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (of a simulation with the same config)."""
        if state.get("format") != STATE_FORMAT:
            raise MyriadError(f"planet state: format {state.get('format')} is not {STATE_FORMAT}")
        if state["spectral"].shape != self.spectral.shape or state["stirring"].shape != self.stirring.shape:
            raise MyriadError("planet state: its spectral or stirring shape does not match this grid and configuration")
        self.step_count = int(state["step_count"])
        self.spectral = state["spectral"].clone()
        self.history = [t.clone() for t in state["history"]]
        self.stirring = state["stirring"].clone()
        self.rain = state["rain"].clone()
        self.generator.set_state(state["generator"])

    # ------------------------------------------------------------------ integration

    def advance(self, n_outputs: int = 1) -> None:
        """Integrate ``n_outputs`` output steps.

        Per output step: update the AR(1) stirring, form the step source
        (equilibrium at the interval's middle plus stirring), clear the rain
        accumulator, then take ``steps_per_output`` solver steps.
        """
        for _ in range(n_outputs):
            self.forcing.advance_stirring(self.stirring, self.generator)
            middle = self._solstice_offset + (self.step_count + 0.5 * self.steps_per_output) * self.dt
            source = self.forcing.step_source(self.stirring, middle)
            self.rain.zero_()
            for _ in range(self.steps_per_output):
                self._step(source)

    def _step(self, source: torch.Tensor) -> None:
        """One solver step: AB3 dynamics, then exact relaxation, drag, hyperdiffusion and the source."""
        tendency, grid = self.dynamics.tendency(self.spectral)
        self.forcing.accumulate_rain(self.rain, grid[:, 0], grid[:, 2], self.dt)
        coefficients = _ADAMS_BASHFORTH[len(self.history)]
        self.spectral.add_(tendency, alpha=self.dt * coefficients[0])
        for coefficient, previous in zip(coefficients[1:], self.history):
            self.spectral.add_(previous, alpha=self.dt * coefficient)
        self.spectral.mul_(self.forcing.damping).add_(source)
        self.history = [tendency, *self.history[:1]]
        self.step_count += 1

    def sample(self) -> dict[str, np.ndarray]:
        """Fields at the current time, each ``(nlat, nlon)`` float64, latitude 90 -> -90.

        Keys: ``geopotential`` (m2 s-2), ``vorticity``, ``divergence`` (s-1),
        ``u``, ``v`` (m s-1) and ``rain`` (kg m-2 accumulated over the output
        step ending now).
        """
        grid = self.dynamics.synthesize(self.spectral)  # (nlon, 5, nlat)
        fields = {name: grid[:, i].T.numpy().copy() for i, name in enumerate(GRID_FIELDS)}
        fields["rain"] = self.rain.T.numpy().copy()
        return fields
