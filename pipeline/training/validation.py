r"""Validation skill: area-weighted RMSE per channel and lead time against two references.

For initial times :math:`n = 1..N` in the validation period, lead
:math:`\tau` and channel :math:`c` (physical units, quadrature weights
:math:`q_{jk}` summing to 1):

.. math::

    \mathrm{RMSE}_c(\tau) = \sqrt{\frac{1}{N}\sum_n \sum_{jk} q_{jk}
        \big(f_{n,c,jk}(\tau) - a_{n,c,jk}(\tau)\big)^2}

(square root after the mean over initial times, as WeatherBench2), for
three forecasts :math:`f`:

- ``model``: the autoregressive rollout of the network;
- ``persistence``: the initial state, :math:`f(\tau) = a(0)`;
- ``climatology``: the per-grid-point time mean of the *training* period
  (from ``training.climatology_samples`` evenly spaced training times), the
  same map for every lead. It has no seasonal cycle; it is the reference a
  forecast must beat once it has lost its initial information.

Initial times are spread evenly over the period and split across ranks;
squared-error sums are added over ranks, so every rank gets the same scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from pipeline.training.dataset import Frames
from pipeline.training.distributed import DistributedContext
from pipeline.training.losses import SphericalMSE
from pipeline.training.normalisation import Normalisation

REFERENCES = ("model", "persistence", "climatology")


@dataclass(frozen=True)
class Skill:
    """RMSE (physical units) per forecast, lead time and channel."""

    lead_hours: tuple[int, ...]
    channels: tuple[str, ...]
    rmse: dict[str, np.ndarray]
    """Forecast name (of ``REFERENCES``) -> array (lead, channel)."""
    n_inits: int

    @property
    def baseline(self) -> str:
        """The reference the model must beat: persistence for forecasts, else the first one listed."""
        return "persistence" if "persistence" in self.rmse else next(k for k in self.rmse if k != "model")

    def score(self) -> float:
        """Mean over channels of the model's RMSE over the baseline's at the first lead (lower is better)."""
        return float(np.mean(self.rmse["model"][0] / self.rmse[self.baseline][0]))

    def to_dict(self) -> dict:
        return {
            "lead_hours": list(self.lead_hours),
            "channels": list(self.channels),
            "n_inits": self.n_inits,
            "rmse": {name: values.tolist() for name, values in self.rmse.items()},
        }

    def to_dataset(self) -> xr.Dataset:
        """Variables ``rmse_<reference>`` on dims (lead_time, channel)."""
        coords = {"lead_time": np.array(self.lead_hours, dtype="timedelta64[h]"), "channel": list(self.channels)}
        return xr.Dataset(
            {f"rmse_{name}": (("lead_time", "channel"), values) for name, values in self.rmse.items()},
            coords=coords,
            attrs={"n_inits": self.n_inits, "weighting": "quadrature (cell-area) weights"},
        )

    def table(self) -> str:
        """Plain-text table: one row per lead and channel, one column per forecast (model first)."""
        names = list(self.rmse)
        lines = [f"{'lead':>6} {'channel':<10} " + " ".join(f"{name:>11}" for name in names)]
        for i, lead in enumerate(self.lead_hours):
            for j, channel in enumerate(self.channels):
                lines.append(f"{lead:>5}h {channel:<10} " + " ".join(f"{self.rmse[name][i, j]:>11.4g}" for name in names))
        return "\n".join(lines)


def evenly_spaced(n_available: int, n_wanted: int) -> np.ndarray:
    """Up to ``n_wanted`` distinct indices spread evenly over ``0..n_available-1``."""
    if n_available <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_available - 1, min(n_available, n_wanted)).round().astype(np.int64))


def climatology(frames: Frames, n_samples: int, chunk: int = 64) -> torch.Tensor:
    """Per-grid-point mean of up to ``n_samples`` evenly spaced frames, shape (C, nlat, nlon)."""
    index = evenly_spaced(len(frames), n_samples)
    total = None
    for start in range(0, len(index), chunk):
        part = frames.read(index[start : start + chunk]).double().sum(dim=0)
        total = part if total is None else total + part
    return (total / len(index)).float()


@torch.no_grad()
def evaluate(
    rollout: Callable[..., Iterator[torch.Tensor]],
    frames: Frames,
    starts: np.ndarray,
    lead_steps: list[int],
    step_hours: int,
    climatology_z: torch.Tensor | None,
    loss: SphericalMSE,
    normalisation: Normalisation,
    ctx: DistributedContext,
    batch_size: int = 8,
) -> Skill:
    """Skill of ``rollout`` from ``starts`` at ``lead_steps``.

    Parameters
    ----------
    rollout
        ``rollout(z0, n, time=seconds)`` yields the model's next ``n``
        normalised states from ``z0``, valid at ``seconds`` (POSIX, shape
        ``(B,)``), on ``ctx.device``
        (:meth:`pipeline.training.forecast.Forecaster.rollout_normalised`).
    frames
        Normalised frames of the validation period; ``starts + max(lead_steps)`` must be valid.
    starts
        Initial time indices into ``frames`` (the same on every rank).
    lead_steps
        Lead times in model steps, ascending.
    climatology_z
        Normalised climatology map (C, nlat, nlon), or None to score only
        the model and persistence.
    loss
        Supplies the quadrature weights.
    normalisation
        Converts the RMSE to physical units (times ``std``).
    ctx
        Ranks to split the initial times over.
    """
    device = ctx.device
    leads = sorted(lead_steps)
    references = REFERENCES if climatology_z is not None else REFERENCES[:2]
    n_channels = len(normalisation.channels)
    sums = torch.zeros(len(references), len(leads), n_channels, dtype=torch.float64, device=device)
    mine = np.asarray(starts)[ctx.rank :: ctx.world_size]
    for first in range(0, len(mine), batch_size):
        batch = mine[first : first + batch_size]
        z0 = frames.read(batch).to(device)
        states = rollout(z0, leads[-1], time=frames.seconds(batch))
        z = z0
        done = 0
        for i, lead in enumerate(leads):
            for _ in range(lead - done):
                z = next(states)
            done = lead
            truth = frames.read(batch + lead).to(device)
            forecasts = (z, z0) if climatology_z is None else (z, z0, climatology_z.to(device).expand_as(truth))
            for r, forecast in enumerate(forecasts):
                sums[r, i] += loss.per_channel(forecast, truth).double().sum(dim=0)
    rmse, n_inits = ranks_rmse(sums, len(mine), normalisation, ctx)
    return Skill(
        lead_hours=tuple(lead * step_hours for lead in leads),
        channels=normalisation.channels,
        rmse={name: rmse[r] for r, name in enumerate(references)},
        n_inits=n_inits,
    )


def ranks_rmse(sums: torch.Tensor, n_local: int, normalisation: Normalisation,
               ctx: DistributedContext) -> tuple[np.ndarray, int]:
    """RMSE in physical units from every rank's squared-error sums over its ``n_local`` initial times.

    ``sums`` (..., channel) are normalised squared errors; returns
    ``sqrt(sum_ranks sums / sum_ranks n) * std`` and the total count.
    """
    count = torch.tensor([float(n_local)], dtype=torch.float64, device=sums.device)
    ctx.all_reduce_sum(sums)
    ctx.all_reduce_sum(count)
    return torch.sqrt(sums / count).cpu().numpy() * normalisation.std, int(count.item())
