"""Per-channel normalisation of states with the statistics of ``stats.nc``.

``z_c = (x_c - mean_c) / std_c`` with the area-weighted mean and standard
deviation of channel ``c`` over the statistics period; the model works on
``z``, forecasts are returned as ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from pipeline.errors import MyriadError


@dataclass(frozen=True)
class Normalisation:
    """Per-channel affine normalisation ``z = (x - mean) / std`` (float64 values)."""

    channels: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Physical -> normalised; channels on dimension -3."""
        mean, std = self._shaped(x)
        return (x - mean) / std

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised -> physical; channels on dimension -3."""
        mean, std = self._shaped(z)
        return z * std + mean

    def _shaped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return mean, std

    def to_dict(self) -> dict[str, list]:
        return {"channels": list(self.channels), "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> "Normalisation":
        return cls(tuple(data["channels"]), np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], dtype=np.float64))


def normalisation_from_statistics(stats: xr.Dataset, channels: list[str], where: str) -> Normalisation:
    """Pick ``mean``/``std`` of ``channels`` from a loaded stats.nc.

    Raises
    ------
    MyriadError
        A channel without statistics, or a std that is not finite and positive.
    """
    known = [str(c) for c in stats["channel"].values]
    missing = [c for c in channels if c not in known]
    if missing:
        raise MyriadError(f"stats file {where}: no statistics for channel(s) {missing} (it has {known}); rerun `myriad stats CONFIG`")
    sel = stats.sel(channel=channels)
    mean = np.asarray(sel["mean"].values, dtype=np.float64)
    std = np.asarray(sel["std"].values, dtype=np.float64)
    bad = [c for c, m, s in zip(channels, mean, std) if not (np.isfinite(m) and np.isfinite(s) and s > 0)]
    if bad:
        raise MyriadError(f"stats file {where}: mean/std of channel(s) {bad} are not finite with std > 0; cannot normalise")
    return Normalisation(tuple(channels), mean, std)


def tendency_ratio(stats: xr.Dataset, channels: list[str], where: str) -> np.ndarray:
    """Typical one-step change per channel in normalised units: ``tendency_std / std``.

    Raises
    ------
    MyriadError
        A channel whose tendency std is not finite and positive (a field that never changes).
    """
    sel = stats.sel(channel=channels)
    ratio = np.asarray(sel["tendency_std"].values, dtype=np.float64) / np.asarray(sel["std"].values, dtype=np.float64)
    bad = [c for c, r in zip(channels, ratio) if not (np.isfinite(r) and r > 0)]
    if bad:
        raise MyriadError(f"stats file {where}: tendency_std of channel(s) {bad} is not finite and positive; cannot scale the loss")
    return ratio
