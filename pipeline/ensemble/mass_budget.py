r"""The planet's zonal mass budget enforced on every emitted step (``ensemble.mass_budget_correction``).

The planet's layer obeys :math:`\partial_t\Phi = -\nabla\cdot(\Phi\mathbf u) - (\Phi - \Phi_{eq})/\tau_r`
on its degrees :math:`l \ge 1` (:mod:`pipeline.data.sources.planet_budget`). Zonally averaged,
at every instant,

.. math::

    \frac{1}{a\cos\varphi}\,\partial_\varphi\bigl(\cos\varphi\,[\Phi v]\bigr)
      = -\frac{D + \tau_r\,\partial_t[\Phi]}{\tau_r},

with :math:`D = [\Phi] - [\Phi_{eq}](s(t))` less its global mean. So the zonal-mean
northward geopotential flux is fixed by the zonal-mean layer and its tendency:
:math:`F^*` is :func:`~pipeline.data.sources.planet_budget.balanced_geopotential_flux` of
:math:`[\Phi] + \tau_r\,\partial_t[\Phi]`. An emulator's free run is under no such constraint:
nothing ties its ``v500`` to its ``z500`` tendency, and in 10-year runs its zonal-mean
meridional wind drifts far from the planet's while every other channel stays close (README,
Stage 5, "Long runs").

The correction: for each emitted state :math:`x_{n+1}` (after the state :math:`x_n`),
with the backward tendency :math:`\partial_t[\Phi] \approx ([\Phi]_{n+1} - [\Phi]_n)/\Delta t`,

.. math::

    [v]_{n+1} \leftarrow [v]_{n+1} + \frac{F^* - [\Phi v]_{n+1}}{[\Phi]_{n+1}},

a shift of ``v500`` that is constant along each latitude row, after which
:math:`[\Phi v]_{n+1} = F^*` exactly; nothing else changes. The zonal-mean meridional wind is
purely divergent, so the eddies, the rotational wind and ``z500`` itself are untouched. On
the planet's own 6-hourly record the budget closes to about 0.005 m/s RMS of ``v500`` (the
backward tendency's truncation), so the correction leaves the planet's own states almost as
they are.

It needs the planet's forcing (equilibrium contrast, seasonal amplitude, relaxation time):
a tool for emulating a known simulator, not for ERA5.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from pipeline.config import PlanetSourceConfig
from pipeline.data.sources.planet_budget import balanced_geopotential_flux, equilibrium_zonal_geopotential, seasonal_factor
from pipeline.data.sources.planet_forcing import DAY_SECONDS
from pipeline.training.checkpoint import CheckpointInfo
from pipeline.training.normalisation import Normalisation

REQUIRED_CHANNELS = ("z500", "v500")
"""The budget's channels: the layer's geopotential and the meridional wind."""


class MassBudgetCorrection:
    """Enforce the planet's instantaneous zonal mass budget on normalised states (module docstring).

    Call it as ``correction(previous, state, seconds)`` on normalised ``(B, C, nlat, nlon)``
    states, ``seconds`` the POSIX valid time of ``state`` (shape ``(B,)``); it returns ``state``
    with its ``v500`` shifted along each latitude row by minus :meth:`residual`.

    Parameters
    ----------
    source
        The planet the model emulates.
    channels
        The model's channels (must include ``z500`` and ``v500``).
    normalisation
        The model's normalisation (physical = normalised x std + mean).
    latitudes
        The grid's latitudes, degrees.
    step_seconds
        The model's time step.
    """

    def __init__(self, source: PlanetSourceConfig, channels: tuple[str, ...], normalisation: Normalisation,
                 latitudes: np.ndarray, step_seconds: float) -> None:
        missing = [c for c in REQUIRED_CHANNELS if c not in channels]
        if missing:
            raise ValueError(f"the mass budget needs the channels {list(REQUIRED_CHANNELS)}; the model lacks {missing}")
        self.source = source
        self.latitudes = np.asarray(latitudes, dtype=np.float64)
        self.step_seconds = float(step_seconds)
        self._z, self._v = (channels.index(c) for c in REQUIRED_CHANNELS)
        mean = np.asarray(normalisation.mean, dtype=np.float64).reshape(-1)
        std = np.asarray(normalisation.std, dtype=np.float64).reshape(-1)
        self._z_mean, self._z_std = mean[self._z], std[self._z]
        self._v_mean, self._v_std = mean[self._v], std[self._v]
        self.steps = 0
        """States corrected so far."""
        self.squared_shift_sum = 0.0
        """Sum over corrected states of the mean squared ``v500`` shift (m2 s-2)."""
        self._lock = threading.Lock()  # an ensemble's work units may run on several threads

    @classmethod
    def for_checkpoint(cls, source: PlanetSourceConfig, info: CheckpointInfo) -> MassBudgetCorrection:
        """The correction of a trained model's steps: its channels, normalisation, grid and time step."""
        return cls(source, info.channels, info.normalisation, np.asarray(info.grid.latitudes),
                   info.time_step_hours * 3600.0)

    @property
    def shift_rms(self) -> float:
        """RMS of the ``v500`` shifts so far (m/s, over rows and states; 0 before the first)."""
        return float(np.sqrt(self.squared_shift_sum / self.steps)) if self.steps else 0.0

    def target_flux(self, previous_zonal: np.ndarray, zonal: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """The balanced flux :math:`F^*` (m3 s-3, ``(B, nlat)``) of zonal-mean geopotentials ``zonal`` valid at
        POSIX ``seconds``, one step after ``previous_zonal``."""
        times = (np.asarray(seconds, dtype=np.float64) * 1e9).astype(np.int64).astype("datetime64[ns]")
        equilibrium = equilibrium_zonal_geopotential(self.latitudes, self.source,
                                                     seasonal_factor(times, self.source.year_days)[:, None])
        tau = self.source.relaxation_days * DAY_SECONDS
        return balanced_geopotential_flux(zonal + tau * (zonal - previous_zonal) / self.step_seconds, equilibrium,
                                          self.latitudes, self.source.relaxation_days)

    def residual(self, previous_geopotential: np.ndarray, geopotential: np.ndarray, wind: np.ndarray,
                 seconds: np.ndarray) -> np.ndarray:
        r"""The budget's miss in wind units, :math:`([\Phi v] - F^*) / [\Phi]` (m/s, ``(B, nlat)``), of physical
        ``z500`` and ``v500`` fields ``geopotential``, ``wind`` (``(B, nlat, nlon)``) valid at POSIX ``seconds``,
        one step after ``previous_geopotential``."""
        zonal = geopotential.mean(-1)
        target = self.target_flux(previous_geopotential.mean(-1), zonal, seconds)
        return ((geopotential * wind).mean(-1) - target) / zonal

    def __call__(self, previous: torch.Tensor, state: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
        def physical(x: torch.Tensor, channel: int, mean: float, std: float) -> np.ndarray:
            return x[:, channel].double().cpu().numpy() * std + mean

        shift = -self.residual(physical(previous, self._z, self._z_mean, self._z_std),
                               physical(state, self._z, self._z_mean, self._z_std),
                               physical(state, self._v, self._v_mean, self._v_std),
                               seconds.double().cpu().numpy())  # m/s, (B, nlat)
        with self._lock:
            self.steps += 1
            self.squared_shift_sum += float(np.mean(shift**2))
        corrected = state.clone()
        corrected[:, self._v] += torch.from_numpy(shift / self._v_std).to(state)[:, :, None]
        return corrected
