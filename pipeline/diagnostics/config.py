"""Config section ``diagnostics`` (and its ``model_climate`` sub-section).

Kept light (pydantic only) so that loading a run config imports no Dask.
Cross-checks against the stores (channels present, lead and init times
present, valid times inside the analysis record) happen when the stage runs
(:func:`pipeline.diagnostics.run.diagnose`), where the stores are known.

The Dask cluster is the run's top-level ``dask:`` section.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from pipeline.config_base import StrictModel, checked_channel_list

RegionName = Literal["global", "nh_extratropics", "tropics", "sh_extratropics"]
"""Names of :data:`pipeline.diagnostics.regions.REGIONS` (checked equal by the tests)."""

ALL_REGIONS: tuple[str, ...] = ("global", "nh_extratropics", "tropics", "sh_extratropics")


class ModelClimateConfig(StrictModel):
    """Where the model climate for EFI / SOT comes from.

    The model climate is the distribution of the model's own forecasts at the
    same lead time, pooled over members and several init times (ECMWF pools
    re-forecasts: 20 years x 9 dates x 11 members). Here it is read from an
    ensemble store of re-forecasts (``ensemble``), or from the verified
    ensemble's own init times (default; then the climate includes the
    forecast being scored, which is fine for a demonstration and biases EFI
    towards 0 when there are few init times).
    """

    ensemble: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the re-forecast store ``<run_dir>/ensembles/<name>.zarr`` (default: the verified ensemble)."""
    init_times: list[datetime] | None = None
    """Init times pooled into the climate (default: every init time of that store)."""
    quantile_levels: int = Field(99, ge=9, le=999)
    """Number of climate quantiles, at levels k/(n+1) for k = 1..n (the EFI integral's resolution)."""


class DiagnosticsConfig(StrictModel):
    """Verification, spectral and extreme diagnostics of an ensemble (``myriad diagnose``)."""

    name: str = Field("diagnostics", pattern=r"^[A-Za-z0-9_.-]+$")
    """Output store ``<run_dir>/diagnostics/<name>.zarr``."""
    ensemble: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Ensemble store name under ``<run_dir>/ensembles`` (default: ``ensemble.name``)."""
    channels: list[str] | None = None
    """Channels to diagnose (default: every channel of the ensemble store)."""
    regions: list[RegionName] = Field(default_factory=lambda: list(ALL_REGIONS), min_length=1)
    """Area-weighted regions of the scores."""
    lead_hours: list[int] | None = None
    """Lead times (hours) to report (default: every lead time of the store, 0 included)."""
    init_times: list[datetime] | None = None
    """Init times to verify (default: every init time of the store)."""
    extremes: bool = True
    """Thresholds from the analysis climate, exceedance probabilities, reliability, Brier, ROC, EDI."""
    quantiles: list[float] = Field(default_factory=lambda: [0.95, 0.99], min_length=1)
    """Climate quantiles defining the extreme events (per month and hour of day, HENS style)."""
    reliability_bins: int = Field(11, ge=2, le=101)
    """Forecast-probability bins of the reliability diagrams."""
    edi_probability: float = Field(0.5, gt=0, le=1)
    """The EDI scores the yes/no forecast "probability >= edi_probability" of each extreme event."""
    efi: bool = True
    """Extreme Forecast Index and Shift of Tails maps (needs a model climate, see ``model_climate``)."""
    model_climate: ModelClimateConfig | None = None
    """Model climate for EFI / SOT (default: derived from the verified ensemble when it has >= 2 init times)."""
    spectra: bool = True
    """Angular power spectra of the members (mean over members) and of the ensemble mean."""
    rank_seed: int = Field(0, ge=0)
    """Seed of the random tie-breaking in rank histograms."""
    latitude_band: int | None = Field(None, ge=1)
    """Latitude rows per chunk for member statistics (default: sized by ``target_chunk_mb``)."""
    target_chunk_mb: float = Field(128.0, gt=0)
    """Target size of an all-members chunk (members x band rows x longitudes x 4 bytes)."""
    spectra_member_block: int | None = Field(None, ge=1)
    """Members per full-grid chunk for spectra (default: the store's member block)."""
    figures: bool = True
    """Write ``<run_dir>/report/`` (PNG figures and index.html) after the store."""
    map_lead_hours: int | None = None
    """Lead time shown on the maps (default: the longest reported lead)."""

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else checked_channel_list(value)

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate regions in {value}")
        return value

    @field_validator("lead_hours")
    @classmethod
    def _leads(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if any(h < 0 for h in value) or len(set(value)) != len(value) or not value:
            raise ValueError(f"lead hours must be distinct and >= 0, got {value}")
        return sorted(value)

    @field_validator("init_times")
    @classmethod
    def _inits(cls, value: list[datetime] | None) -> list[datetime] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("init times must be distinct and not empty")
        return value

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        if any(not 0.5 <= q < 1 for q in value) or len(set(value)) != len(value):
            raise ValueError(f"quantiles must be distinct and in [0.5, 1), got {value}")
        return sorted(value)

    def store_path(self, run_dir: str | Path) -> Path:
        """``<run_dir>/diagnostics/<name>.zarr``."""
        return Path(run_dir) / "diagnostics" / f"{self.name}.zarr"

    def report_dir(self, run_dir: str | Path) -> Path:
        """``<run_dir>/report/<name>`` (one report per diagnostics store, so several models can share a run)."""
        return Path(run_dir) / "report" / self.name
