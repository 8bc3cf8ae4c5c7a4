"""The embedded shallow-water planet: an offline source with a climate, extremes and a 6-hourly record.

A forced-dissipative shallow-water model on the rotating sphere (radius
a = 6371.22 km, Omega = 7.292e-5 s-1, g = 9.80616 m s-2), built on
torch-harmonics' spectral ``ShallowWaterSolver`` and run for years like a
reanalysis: deterministic for ``source.seed``, spun up for
``source.spinup_days`` (discarded), sampled every ``time.step_hours`` from
``time.start`` without a gap.

Equations
---------
Prognostic fields: geopotential Phi = g h (h the layer depth), relative
vorticity zeta and divergence delta, with u = k x grad(psi) + grad(chi),
lap(psi) = zeta, lap(chi) = delta, f = 2 Omega sin(lat), q = zeta + f::

    dPhi/dt   = -div(Phi u)                               - (Phi - Phi_eq(t)) / tau_r   [l >= 1]
    dzeta/dt  = -div(q u)                   + F(t)        - zeta / tau_d  - nu lap^4 zeta
    ddelta/dt = curl(q u) - lap(Phi + |u|^2 / 2)           - delta / tau_d - nu lap^4 delta

* **Relaxation** (Newtonian "radiation", tau_r = ``relaxation_days``) of the
  degrees l >= 1 of Phi towards ``Phi_eq = g [H + dH ((1/3 - sin^2 lat) +
  A s(t) sin lat)]`` with H = ``mean_depth_m``, dH =
  ``equator_pole_contrast_m`` and A = ``seasonal_amplitude``. The l = 0 mode
  (the global mean depth) is never touched.
* **Seasonal cycle**: ``s(t) = cos(2 pi (t - t_0) / Y)``, Y = ``year_days``,
  t_0 the June solstice (2000-06-21 and every Y days from it): the summer
  hemisphere's equilibrium layer is deeper ("warmer"), the winter
  hemisphere's gradient and jet stronger.
* **Drag**: linear (Rayleigh) drag on vorticity and divergence,
  tau_d = ``drag_days``; scale-selective hyperdiffusion nu lap^4 of the
  parent solver (e-folding of the smallest resolved scale in 2 h).
* **Stirring** F: a random vorticity forcing with isotropic,
  degree-independent variance on the total wavenumbers
  ``stirring_lmin <= l <= stirring_lmax`` (all orders), grid RMS
  ``stirring_amplitude`` x 3e-11 s-2; an AR(1) process with memory
  ``stirring_memory_days`` sampled once per output step and held constant
  within it, drawn from a ``torch.Generator`` seeded with ``source.seed``. It
  stands for baroclinic eddy generation, which one layer cannot produce, and
  bounds predictability as in the real atmosphere.

Numerics: spectral transform method on the equiangular grid with poles of
``grid`` (latitude 90 -> -90), triangular truncation lmax = (nlat + 1) // 2,
orthonormal harmonics; per step of ``dt_seconds`` third-order Adams-Bashforth
for the adiabatic terms (Euler and AB2 on the first two steps) plus the
stirring integrated over the step, then the relaxation, drag and
hyperdiffusion as exact exponential factors; float64 throughout. The
tendency uses the solver's own transform tables in batched real form
(:mod:`.planet_dynamics`), equal to the solver's ``dudtspec`` to round-off.

Channels (the single layer stands for 500 hPa)
---------------------------------------------
``z500`` = Phi (m2 s-2), ``u500``/``v500`` (m s-1), ``vo500`` = zeta (s-1),
``d500`` = delta (s-1), and ``tp6h`` (kg m-2, i.e. mm), a precipitation-like
diagnostic: convergence lifts moist air, moisture grows steeply with layer
depth, and the rate is accumulated over the 6 h ending at the valid time::

    tp6h(t) = sum over solver steps t_n in [t - 6 h, t) of
              dt * W_0 * exp((h_n - H) / h_q) * max(0, -delta_n)

with W_0 = 1000 kg m-2 and h_q = 1000 m (:mod:`.planet_forcing`). It is
zero where the flow diverges and heavy-tailed (intermittent convergence in
deep, moist air); it does not feed back on the dynamics.

Conservation
------------
Mass (the area integral of h, the l = 0 mode of Phi) is conserved to the last
bit: its tendency is exactly zero in the transform method and no forcing
touches it. Energy ``E = integral of [h |u|^2 / 2 + g (h - H)^2 / 2] dA``
(kinetic plus available potential, per unit density) is not conserved: the
relaxation and the stirring feed it, drag and hyperdiffusion drain it, and it
is statistically stationary after spin-up apart from the seasonal cycle.
Potential vorticity and momentum are not conserved either (forced, damped).

Resuming
--------
Blocks of times are produced in order from an in-memory simulation. With
``source.state_cache`` the full solver state (spectral fields,
Adams-Bashforth history, stirring, rain accumulator, generator state, step)
is written atomically at the end of each block to
``<state_dir>/<fingerprint>/<time>.pt``; a new process asked for a block
restarts from the latest saved state at or before the block and produces
the same bits as an uninterrupted run. Without one it re-simulates from the
start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch_harmonics.quadrature import clenshaw_curtiss_weights

from pipeline.config import MyriadConfig, PlanetSourceConfig
from pipeline.data.channels import channel_attrs
from pipeline.data.sources.canonical import time_axis
from pipeline.data.sources.planet_dynamics import GRAVITY
from pipeline.data.sources.planet_simulation import STATE_FORMAT, PlanetSimulation, simulation_context
from pipeline.errors import MyriadError
from pipeline.grid import EARTH_RADIUS_M, Grid

logger = logging.getLogger(__name__)

PLANET_CHANNELS: dict[str, str] = {
    "z500": "geopotential",
    "u500": "u",
    "v500": "v",
    "vo500": "vorticity",
    "d500": "divergence",
    "tp6h": "rain",
}
"""Channels the planet provides, and the simulation field behind each."""

RAIN_HOURS = 6
"""Accumulation window of ``tp6h`` (must equal ``time.step_hours`` when it is asked for)."""

_STATE_SUFFIX = ".pt"
_STATE_TIME_FORMAT = "%Y%m%dT%H%M%S"


class PlanetSource:
    """The shallow-water planet as a :class:`~pipeline.data.sources.base.Source`.

    Parameters
    ----------
    config
        The run config; ``config.source`` must be a planet section.
    state_dir
        Where solver states are cached at block ends (with
        ``source.state_cache``); ``None`` keeps states in memory only.

    Raises
    ------
    MyriadError
        A channel the planet does not have, static fields, ``tp6h`` with an
        output step other than 6 h, a time step that does not divide the
        output step, or a stirring band beyond the grid's truncation.
    """

    name = "planet"
    sequential = True
    network = False

    def __init__(self, config: MyriadConfig, state_dir: Path | None = None) -> None:
        if not isinstance(config.source, PlanetSourceConfig):
            raise MyriadError(f"source.kind is '{config.source.kind}', not 'planet'")
        unknown = [name for name in config.channels if name not in PLANET_CHANNELS]
        if unknown:
            raise MyriadError(
                f"channels: the planet has no channel '{unknown[0]}' (it provides {', '.join(PLANET_CHANNELS)})"
            )
        if config.static:
            raise MyriadError(f"static: the planet has no static fields (asked for {', '.join(config.static)}); use static: []")
        if "tp6h" in config.channels and config.time.step_hours != RAIN_HOURS:
            raise MyriadError(
                f"channels: 'tp6h' accumulates over {RAIN_HOURS} h but time.step_hours is {config.time.step_hours}"
            )
        self.config = config
        self.grid = config.grid.build()
        self.step = config.time.step
        spinup_steps = max(1, -(-round(config.source.spinup_days * 86_400) // round(self.step.total_seconds())))
        self.initial_time = config.time.start - spinup_steps * self.step
        self.simulation = PlanetSimulation(config.source, self.grid.nlat, self.grid.nlon, self.initial_time, self.step)
        self.state_dir = None
        if state_dir is not None and config.source.state_cache:
            self.state_dir = Path(state_dir) / state_fingerprint(config)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Source protocol

    def available_times(self) -> pd.DatetimeIndex:
        """``time.start`` to ``time.end`` every ``time.step_hours``."""
        return time_axis(self.config.time.start, self.config.time.end, self.config.time.step_hours)

    def static_fields(self) -> xr.Dataset:
        """The planet has no static fields: an empty Dataset."""
        return xr.Dataset()

    def read_block(self, times: pd.DatetimeIndex) -> xr.Dataset:
        """Simulate up to and sample ``times`` (consecutive output times), float32 canonical Dataset."""
        times = pd.DatetimeIndex(times)
        self._check_times(times)
        with self._lock, simulation_context():
            self._position(times[0].to_pydatetime() - self.step)
            samples = []
            for _ in times:
                self.simulation.advance()
                samples.append(self.simulation.sample())
            if self.state_dir is not None:
                self._save_state()
        return self._dataset(times, samples)

    # ------------------------------------------------------------------ helpers

    def _check_times(self, times: pd.DatetimeIndex) -> None:
        if len(times) == 0:
            raise MyriadError("planet: read_block was asked for no times")
        outside = times.difference(self.available_times())
        if len(outside):
            raise MyriadError(
                f"planet: time {outside[0]} is not on the configured axis "
                f"({self.config.time.start} to {self.config.time.end} every {self.config.time.step_hours} h)"
            )
        if (times[1:] - times[:-1] != pd.Timedelta(self.step)).any():
            raise MyriadError(f"planet: block times {times[0]} .. {times[-1]} are not consecutive output times")

    def _position(self, target: datetime) -> None:
        """Bring the simulation to ``target`` from the nearest earlier state (memory, disk or start)."""
        simulation = self.simulation
        if simulation.time > target:
            simulation.reset()
        saved = self._latest_saved_state(target, after=simulation.time)
        if saved is not None:
            simulation.load_state_dict(saved)
            logger.info("planet: resumed from the saved state of %s", simulation.time)
        elif simulation.step_count == 0:
            logger.info("planet: simulating from rest at %s (spin-up to %s)", simulation.time, self.config.time.start)
        outputs = (target - simulation.time) // self.step
        simulation.advance(outputs)

    def _state_path(self, time: datetime) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{time.strftime(_STATE_TIME_FORMAT)}{_STATE_SUFFIX}"

    def _latest_saved_state(self, target: datetime, after: datetime) -> dict | None:
        """The latest loadable saved state with ``after < time <= target``, or None."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return None
        candidates = []
        for path in self.state_dir.glob(f"*{_STATE_SUFFIX}"):
            try:
                time = datetime.strptime(path.name.removesuffix(_STATE_SUFFIX), _STATE_TIME_FORMAT)
            except ValueError:
                continue
            if after < time <= target:
                candidates.append((time, path))
        for time, path in sorted(candidates, reverse=True):
            try:
                state = torch.load(path, weights_only=True)
            except Exception as exc:  # a damaged cache file is skipped, never fatal
                logger.warning("planet: ignoring unreadable state %s (%s)", path, exc)
                continue
            expected = round((time - self.initial_time) / self.step) * self.simulation.steps_per_output
            if state.get("format") == STATE_FORMAT and state.get("step_count") == expected:
                return state
            logger.warning("planet: ignoring state %s (format or step does not match)", path)
        return None

    def _save_state(self) -> None:
        """Write the current state atomically (temporary file, fsync, rename)."""
        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        final = self._state_path(self.simulation.time)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            torch.save(self.simulation.state_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)

    def _dataset(self, times: pd.DatetimeIndex, samples: list[dict[str, np.ndarray]]) -> xr.Dataset:
        dims = ("time", "latitude", "longitude")
        data = {
            name: xr.Variable(dims, np.stack([s[PLANET_CHANNELS[name]] for s in samples]).astype(np.float32), channel_attrs(name))
            for name in self.config.channels
        }
        coords = {"time": ("time", times.as_unit("ns").values), **self.grid.coords()}
        return xr.Dataset(data, coords=coords)


def build_planet_source(config: MyriadConfig, state_dir: Path | None = None) -> PlanetSource:
    """The planet source for ``config`` with its state cache in ``state_dir``."""
    return PlanetSource(config, state_dir)


def state_fingerprint(config: MyriadConfig) -> str:
    """Short hash of everything a saved state depends on (physics, grid, start, output step)."""
    key = "|".join(
        (config.section_hash("source", "grid"), config.time.start.isoformat(), str(config.time.step_hours), str(STATE_FORMAT))
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def global_budgets(ds: xr.Dataset) -> xr.Dataset:
    """Per-time global mass and energy of planet output, integrated exactly on its grid.

    ``mass`` = integral of h dA (m3, i.e. mass per unit density) and
    ``energy`` = integral of ``h |u|^2 / 2 + g (h - <h>)^2 / 2`` dA (m5 s-2),
    with h = ``z500`` / g, winds ``u500``, ``v500`` and <h> the global mean
    depth at that time. The Clenshaw-Curtis weights of the equiangular grid
    integrate the band-limited fields exactly (the area weights of
    :mod:`pipeline.grid` are cell approximations).
    """
    grid = Grid.of(ds, "planet output")
    _, weights = clenshaw_curtiss_weights(grid.nlat, -1.0, 1.0)
    area = xr.DataArray(
        weights.numpy() * (2.0 * np.pi / grid.nlon) * EARTH_RADIUS_M**2, dims="latitude", coords={"latitude": ds["latitude"]}
    )

    def integral(field: xr.DataArray) -> xr.DataArray:
        return (field * area).sum(("latitude", "longitude"))

    depth = ds["z500"].astype(np.float64) / GRAVITY
    mass = integral(depth)
    mean_depth = mass / (4.0 * np.pi * EARTH_RADIUS_M**2)
    kinetic = 0.5 * depth * (ds["u500"].astype(np.float64) ** 2 + ds["v500"].astype(np.float64) ** 2)
    potential = 0.5 * GRAVITY * (depth - mean_depth) ** 2
    return xr.Dataset(
        {
            "mass": mass.assign_attrs(units="m3", long_name="global integral of layer depth"),
            "energy": integral(kinetic + potential).assign_attrs(
                units="m5 s-2", long_name="kinetic plus available potential energy per unit density"
            ),
        }
    )
