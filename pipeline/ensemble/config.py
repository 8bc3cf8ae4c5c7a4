"""Config section ``ensemble`` (and its ``perturbation`` sub-section).

Kept free of torch so that loading a run config stays light; the library
modules take their HENS defaults from here. Validated alone here;
cross-checks against the rest of the run (channels of the checkpoints, init
times inside the analysis record with the breeding analyses before them)
happen when an ensemble run is set up, where the checkpoints and the store
are known.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from pipeline.config_base import StrictModel, checked_channel_list
from pipeline.ensemble.plan import EnsemblePlan
from pipeline.grid import Grid

if TYPE_CHECKING:
    from pipeline.ensemble.seed_field import SphericalSeedField

DEFAULT_ALPHA = 0.35
"""HENS: bred-vector amplitude = 0.35 x the model's 48 h RMSE."""
DEFAULT_EXTRATROPICS_DEG = 20.0
"""HENS: rescale over each hemisphere poleward of 20 deg."""
DEFAULT_CORRELATION_LENGTH_KM = 500.0
"""HENS: seed-field length scale."""


class BredVectorConfig(StrictModel):
    """Hemispheric-centred bred vectors (:mod:`pipeline.ensemble.bred_vectors`)."""

    alpha: float = Field(DEFAULT_ALPHA, gt=0)
    """Target amplitude per channel as a fraction of the checkpoint's 48 h RMSE."""
    seed_channels: list[str] = Field(default_factory=lambda: ["z500"], min_length=1)
    """Channels that get the seed noise."""
    correlation_length_km: float = Field(DEFAULT_CORRELATION_LENGTH_KM, gt=0)
    """Daley correlation length of the seed field (correlation exp(-1/2) at this distance)."""
    cycles: int = Field(3, ge=1)
    """Breeding cycles K, through the analyses at t0 - (K-1) dt ... t0 (starting from t0 - K dt)."""
    extratropics_deg: float = Field(DEFAULT_EXTRATROPICS_DEG, gt=0, lt=90)
    """Equatorward edge of the bands over which the bred vector is rescaled."""

    @field_validator("seed_channels")
    @classmethod
    def _seed_channels(cls, value: list[str]) -> list[str]:
        return checked_channel_list(value)

    def build_seed_field(self, grid: Grid) -> SphericalSeedField:
        """The seed field on ``grid``."""
        from pipeline.ensemble.seed_field import SphericalSeedField  # torch only when an ensemble is built

        return SphericalSeedField(grid, correlation_length_m=self.correlation_length_km * 1e3)


class EnsembleConfig(StrictModel):
    """A bred-vector ensemble: checkpoints x (pairs x {+, -} (+ controls)) x samples per init time."""

    name: str = Field("ensemble", pattern=r"^[A-Za-z0-9_.-]+$")
    """Store name: ``<run_dir>/ensembles/<name>.zarr``."""
    checkpoints: list[Path] = Field(min_length=1)
    """Checkpoint files or seed directories (``best.pt``, else ``last.pt``; ``calibration.json``
    beside it), one per model seed (the model-uncertainty dimension)."""
    init_times: list[datetime] = Field(min_length=1)
    n_steps: int = Field(40, ge=1)
    """Model steps per forecast (lead times 0 .. n_steps x the model's time step)."""
    time_mean_hours: int | None = Field(None, ge=1)
    """Write means over consecutive windows of this many hours (e.g. 24: daily, 720: 30-day)
    instead of every step, for long (climate) runs; lead 0 stays the initial state and a
    window's mean is stored at the lead time of its end. A multiple of the model's time
    step that divides ``n_steps`` x step."""
    output_channels: list[str] | None = None
    """Channels written to the store (default: all of the model's channels)."""
    n_pairs: int = Field(8, ge=1)
    """Bred pairs per checkpoint."""
    samples: int = Field(1, ge=1)
    """Stochastic samples per bred member (and control): each draws its own Monte Carlo
    dropout noise (Spherical DYffusion's interpolator, or an SFNO trained with dropout).
    Needs checkpoints with dropout when > 1."""
    dyffusion_sampler: Literal["cold", "jump"] = "cold"
    """How DYffusion checkpoints sample (SFNO checkpoints ignore it): ``cold``, the paper's
    cold sampling, where the forecaster re-estimates the chain's end at every step; ``jump``,
    one forecaster call per chain, F(x_t, 0), with the interpolator filling in the steps
    between (:mod:`models.dyffusion`): one network pass per step instead of (3h - 2) / h,
    and a steadier 10-year climate on the planet (README, Stage 5), but its chain ends are
    deterministic, so it takes ``samples: 1``, and its weather ensembles, though more accurate
    in the mean, are under-dispersive (a higher CRPS than cold's from day 3 on the planet)."""
    mass_budget_correction: bool = False
    """Enforce the planet's zonal mass budget on every emitted step of the members' forecasts
    (:mod:`pipeline.ensemble.mass_budget`): each state's ``v500`` is shifted along each latitude
    row so that its zonal-mean geopotential flux is the one the planet's relaxation and the
    layer's tendency imply. Planet sources only (it uses the planet's forcing); needs the
    channels z500 and v500; the breeding cycles are not corrected. With it every channel of the
    seasonal DYffusion model's 10-year runs on the planet is within the stated bias, on three
    training seeds after 12,000 fine-tuning steps (README, Stage 5, "Long runs")."""
    include_control: bool = False
    """Give each checkpoint an unperturbed control member (member 0 is checkpoint 0's)."""
    member_block: int = Field(32, ge=1)
    """Members per work unit and per store chunk."""
    seed: int = Field(0, ge=0)
    """Base seed of every random draw (:func:`pipeline.ensemble.seeds.member_seed`)."""
    perturbation: BredVectorConfig = Field(default_factory=BredVectorConfig)
    compression_level: int = Field(3, ge=0, le=22)
    leads_per_shard: int = Field(1, ge=1)
    """Lead times per Zarr shard (one file per channel and unit for this many leads; chunks
    stay one lead each). 1: no shards. Shards cut file counts and write cost (the quickstart
    benchmark's generator is about 1.5x faster with 41) but slow the diagnostics' partial
    reads (2x at the quickstart size)."""
    writer_queue: int = Field(2, ge=1)
    """Lead times buffered for the background writer."""
    bf16: bool = True
    """bf16 autocast on CUDA (the SHT stays float32); on the CPU only with ``compile``."""
    compile: bool = False
    """``torch.compile`` the models' SFNO networks (inductor) before generating. Each batch
    shape compiles once per process (tens of seconds on the CPU), which pays back on long or
    large runs; on the CPU the compiled model runs under bf16 autocast when ``bf16`` is on
    (1.2-2.2x eager float32's member-steps/s in the quickstart benchmark)."""

    @field_validator("init_times")
    @classmethod
    def _init_times(cls, value: list[datetime]) -> list[datetime]:
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate init times in {[t.isoformat() for t in value]}")
        return value

    @field_validator("output_channels")
    @classmethod
    def _output_channels(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else checked_channel_list(value)

    def plan(self) -> EnsemblePlan:
        """The member plan of this ensemble."""
        return EnsemblePlan.build(
            self.init_times,
            [str(p) for p in self.checkpoints],
            n_pairs=self.n_pairs,
            include_control=self.include_control,
            samples=self.samples,
            member_block=self.member_block,
            base_seed=self.seed,
        )

    def store_path(self, run_dir: str | Path) -> Path:
        """The ensemble store: ``<run_dir>/ensembles/<name>.zarr``."""
        return Path(run_dir) / "ensembles" / f"{self.name}.zarr"
