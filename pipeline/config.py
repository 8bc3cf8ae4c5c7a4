"""Run configuration: one YAML file per run, validated by pydantic.

Every section forbids unknown keys, so a typo fails before any work with a
message naming the key. ``--set a.b=value`` overrides (values parsed as YAML)
are applied before validation. Paths in the file are relative to the current
working directory.

Sections: ``run_dir``, ``source`` (planet | arco | cds | files), ``grid``,
``channels``, ``static``, ``time``, ``ingest``, ``statistics``, ``dask``,
and the optional stage sections ``model``, ``training``, ``ensemble``, ``diagnostics``.
Later stages add their own sections in the same style (each a
:class:`StrictModel`), see :data:`STAGE_SECTIONS`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config_base import StrictModel, checked_channel_list
from pipeline.data.channels import STATIC_CODES
from pipeline.diagnostics.config import DiagnosticsConfig
from pipeline.ensemble.config import EnsembleConfig
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from pipeline.training.config import ModelConfig, TrainingConfig


# --------------------------------------------------------------------------- sources


class PlanetSourceConfig(StrictModel):
    """The embedded forced-dissipative shallow-water planet (offline default)."""

    kind: Literal["planet"] = "planet"
    seed: int = 0
    spinup_days: float = Field(90.0, ge=0)
    dt_seconds: float = Field(600.0, gt=0, le=3600)
    """Solver time step; must divide the output step."""
    mean_depth_m: float = Field(8000.0, gt=0)
    equator_pole_contrast_m: float = Field(2000.0, ge=0)
    seasonal_amplitude: float = Field(0.4, ge=0, le=1)
    """Seasonal hemispheric asymmetry of the equilibrium height, as a fraction of the contrast."""
    relaxation_days: float = Field(3.0, gt=0)
    drag_days: float = Field(20.0, gt=0)
    stirring_amplitude: float = Field(1.0, ge=0)
    """Scale of the stochastic vorticity stirring (1 = default climate)."""
    stirring_memory_days: float = Field(2.0, gt=0)
    stirring_lmin: int = Field(6, ge=1)
    stirring_lmax: int = Field(12, ge=1)
    year_days: float = Field(365.25, gt=0)
    state_cache: bool = True
    """Save the solver state at each block end so a resumed ingest restarts there."""


class ArcoSourceConfig(StrictModel):
    """ERA5 from the ARCO public Zarr on Google Cloud Storage (anonymous)."""

    kind: Literal["arco"] = "arco"
    url: str = "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"
    coarsen: int = Field(1, ge=1)
    """Keep every k-th row/column after area-averaging (1 = native 0.25 deg, 4 = 1 deg)."""
    storage_options: dict[str, Any] = Field(default_factory=lambda: {"token": "anon"})
    retries: int = Field(3, ge=0)
    backoff_seconds: float = Field(2.0, ge=0)
    """Wait before the first retry of a failed network read; doubles each retry."""


class CdsSourceConfig(StrictModel):
    """ERA5 through the Copernicus CDS API (cdsapi); requests split by month."""

    kind: Literal["cds"] = "cds"
    download_dir: Path | None = None
    """Where monthly downloads are kept (default ``<run_dir>/downloads``)."""
    data_format: Literal["netcdf", "grib"] = "netcdf"
    product_type: str = "reanalysis"
    grid_deg: float | None = Field(None, gt=0)
    """Ask the CDS to interpolate to this spacing (default: the configured grid's)."""
    retries: int = Field(5, ge=0)
    backoff_seconds: float = Field(30.0, ge=0)


class FilesSourceConfig(StrictModel):
    """Local NetCDF or GRIB files (new CDS, classic and cfgrib layouts)."""

    kind: Literal["files"] = "files"
    paths: list[str] = Field(min_length=1)
    """Files or glob patterns."""
    member: int = 0
    """Ensemble member (``number``) to ingest from files that hold several."""
    engine: Literal["auto", "netcdf4", "cfgrib"] = "auto"


SourceConfig = Annotated[
    Union[PlanetSourceConfig, ArcoSourceConfig, CdsSourceConfig, FilesSourceConfig],
    Field(discriminator="kind"),
]

# --------------------------------------------------------------------------- sections


class GridConfig(StrictModel):
    """Canonical equiangular output grid with poles (latitude 90 -> -90)."""

    nlat: int = Field(ge=3)
    nlon: int = Field(ge=4)

    def build(self) -> Grid:
        return Grid(self.nlat, self.nlon)


class TimeConfig(StrictModel):
    """Regular time axis: ``start`` to ``end`` inclusive every ``step_hours``."""

    start: datetime
    end: datetime
    step_hours: int = Field(6, ge=1, le=24)

    @model_validator(mode="after")
    def _check(self) -> "TimeConfig":
        if self.end <= self.start:
            raise ValueError(f"time.end ({self.end}) must be after time.start ({self.start})")
        if (self.end - self.start) % self.step != timedelta(0):
            raise ValueError("time.end - time.start must be a whole number of time.step_hours")
        return self

    @property
    def step(self) -> timedelta:
        return timedelta(hours=self.step_hours)

    @property
    def n_times(self) -> int:
        return (self.end - self.start) // self.step + 1


class IngestConfig(StrictModel):
    """How the analysis store is written."""

    block_size: int = Field(40, ge=1)
    """Time steps per work block (the unit of resumability and parallelism)."""
    chunk_time: int = Field(4, ge=1)
    """Time steps per Zarr chunk; must divide block_size. 4 writes as fast as a plain
    ``open_mfdataset().to_zarr()`` with validation on (benchmarks/ingest.py: 1.06x; 1 gives
    0.60x) at a small cost to random reads of single times."""
    compression_level: int = Field(1, ge=0, le=9)
    """Blosc-zstd level (0-9). Level 1 compresses within a few % of level 3 at 2-3x the speed."""

    @model_validator(mode="after")
    def _check(self) -> "IngestConfig":
        if self.block_size % self.chunk_time:
            raise ValueError(f"ingest.chunk_time ({self.chunk_time}) must divide ingest.block_size ({self.block_size})")
        return self


class StatisticsConfig(StrictModel):
    """Period over which stats.nc is computed (default: the whole store)."""

    start: datetime | None = None
    end: datetime | None = None


class DaskConfig(StrictModel):
    """Dask cluster for ingest and diagnostics."""

    cluster: Literal["local", "threads", "slurm"] = "local"
    """local: LocalCluster of processes; threads: in-process threads; slurm: dask-jobqueue."""
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "4GiB"
    slurm: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for dask_jobqueue.SLURMCluster (cores, memory, walltime, ...)."""


class MyriadConfig(StrictModel):
    """A whole run. Later stages add optional sections here."""

    run_dir: Path
    source: SourceConfig = Field(default_factory=PlanetSourceConfig)
    grid: GridConfig
    channels: list[str] = Field(min_length=1)
    static: list[str] = Field(default_factory=list)
    time: TimeConfig
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig)
    dask: DaskConfig = Field(default_factory=DaskConfig)
    model: ModelConfig | None = None
    training: TrainingConfig | None = None
    ensemble: EnsembleConfig | None = None
    diagnostics: DiagnosticsConfig | None = None

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        return checked_channel_list(value)

    @field_validator("static")
    @classmethod
    def _static(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in STATIC_CODES:
                raise ValueError(f"static field '{name}' is not one of {list(STATIC_CODES)}")
        return value

    @model_validator(mode="after")
    def _forcing_year_is_the_planets(self) -> "MyriadConfig":
        # year-phase forcings follow the 365.25-day year (models.forcings.YEAR_SECONDS); on a
        # planet with another year they would drift through its seasons
        yearly = [name for name in (self.model.forcings if self.model else []) if name != "day_progress"]
        if isinstance(self.source, PlanetSourceConfig) and yearly and self.source.year_days != 365.25:
            raise ValueError(f"model.forcings {yearly} follow a 365.25-day year but source.year_days is "
                             f"{self.source.year_days:g}: they would drift through the planet's seasons; "
                             "use year_days 365.25 or only day_progress")
        return self

    # -------------------------------------------------------------- derived paths

    @property
    def analysis_path(self) -> Path:
        return self.run_dir / "analysis.zarr"

    @property
    def stats_path(self) -> Path:
        return self.run_dir / "stats.nc"

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (for caching stages on their inputs)."""
        dumped = self.model_dump(mode="json", include=set(sections))
        text = json.dumps(dumped, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


INGEST_SECTIONS = ("source", "grid", "channels", "static", "time", "ingest")
"""Sections that determine the analysis store's content (its cache key)."""


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise MyriadError(f"--set '{item}': expected KEY=VALUE, e.g. --set time.end=2001-01-01")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise MyriadError(f"--set '{item}': empty key segment")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise MyriadError(f"--set '{item}': value is not valid YAML ({exc.problem})") from None
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MyriadError(f"--set '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _format_validation_error(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in {"planet", "arco", "cds", "files"}))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")  # our validators' own messages
        lines.append(f"{loc or '(top level)'}: {msg}")
    return f"config {where}: " + "; ".join(lines)


def config_from_dict(data: dict[str, Any], where: str = "<dict>") -> MyriadConfig:
    """Validate a plain dict into a :class:`MyriadConfig` (errors as MyriadError)."""
    try:
        return MyriadConfig.model_validate(data)
    except ValidationError as exc:
        raise MyriadError(_format_validation_error(where, exc)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> MyriadConfig:
    """Read, override and validate a YAML run config.

    Raises
    ------
    MyriadError
        Missing or unreadable file, invalid YAML, unknown keys, bad values.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MyriadError(f"config {path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise MyriadError(f"config {path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise MyriadError(f"config {path}: top level must be a mapping of sections")
    for item in overrides:
        _apply_override(data, item)
    return config_from_dict(data, str(path))
