"""Config sections of the training stage: ``model`` and ``training``.

Both are optional in a run config (the ingest stage does not need them);
``pipeline.training`` raises a clear error when they are missing. Cross-section
checks (channel weights name configured channels, lead times are multiples of
the time step, periods lie inside the store) happen when a training run is
set up, where the store and the whole config are known.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config_base import StrictModel
from pipeline.data.channels import wind_pairs
from pipeline.errors import MyriadError

DYFFUSION_STAGES = ("interpolator", "forecaster")
"""Training stages of Spherical DYffusion, in the order they run."""


class DYffusionConfig(StrictModel):
    """Spherical DYffusion settings (``model.dyffusion`` with ``model.kind: dyffusion``).

    Both networks use the SFNO hyper-parameters of the ``model`` section, always
    time-conditioned. Stage ``interpolator`` trains into
    ``checkpoints/<model.name>-interpolator/seed-<k>``, stage ``forecaster`` into
    ``checkpoints/<model.name>-forecaster/seed-<k>`` with the interpolator frozen.
    """

    horizon: int = 6
    """h: time steps one chain spans (the paper: 6 six-hourly steps, 36 h). 1 = a plain
    time-conditioned forecaster, no interpolator."""
    interpolator_checkpoint: Path | None = None
    """Trained interpolator for the forecaster stage: a ``.pt`` file or a seed directory
    (``best.pt``, else ``last.pt``). Default: the same seed's
    ``<run_dir>/checkpoints/<model.name>-interpolator/seed-<k>``. Relative paths are
    taken from the working directory."""
    interpolator_dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout in the interpolator's blocks, kept on at inference: the sampling noise."""
    forecaster_dropout: float = Field(0.0, ge=0, lt=1)
    time_scale: float = Field(100.0, gt=0)
    """Multiplier of the time input i = s/h before its sinusoidal embedding."""
    pushforward_chains: int = Field(0, ge=0)
    """Forecaster stage: K > 0 starts each training sample k chains (k uniform in 0..K) into
    its window, from the forecaster's own k-chain forecast of that state (no gradient) instead
    of the truth, so it learns to pull its own drifted states back (pushforward training;
    windows span (K + 1) h steps). 0 = the paper's stage, started from the truth."""
    forecaster_loss: Literal["l1", "amse"] = "l1"
    """Forecaster stage loss: ``l1`` (the paper's area-weighted absolute error) or ``amse``, the
    adjusted MSE over spherical harmonic degrees, which does not reward damping the scales the
    forecaster cannot place (:class:`pipeline.training.losses.SphericalAMSE`)."""
    interpolation_end: Literal["truth", "forecast"] = "truth"
    """Forecaster stage: the end state of the interpolations that give its inputs for n > 0:
    the true ``x_{t+h}`` (the paper) or, as in the sampler, the forecaster's own jump
    ``F(x_t, 0)`` (no gradient; one more forward pass for those samples)."""

    seasonal_harmonics: int = Field(0, ge=0)
    """Forecaster stage: K > 0 makes the forecaster map departures from the seasonal cycle of its
    training data's zonal means (K annual harmonics, fitted when training starts; the known
    seasonal change over a jump is added outright; :mod:`models.seasonal`). Needs at least a year
    of training data; rollouts then need valid times. 0 = the states themselves."""

    @field_validator("horizon")
    @classmethod
    def _horizon(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"the DYffusion horizon h must be >= 1 (time steps per chain), got {value}")
        return value


class ModelConfig(StrictModel):
    """Model hyper-parameters (see :class:`models.sfno.SFNO` for their meaning).

    ``kind: sfno`` is the deterministic SFNO; ``kind: dyffusion`` is Spherical
    DYffusion (:mod:`models.dyffusion`), two time-conditioned SFNOs with these
    hyper-parameters and the ``dyffusion`` sub-section.

    The channel counts and the grid come from the run config; :meth:`hparams`
    (SFNO) and :meth:`stage_model` (DYffusion) merge them into the plain dict
    that :func:`models.registry.build_model` takes and that checkpoints store.
    """

    kind: Literal["sfno", "dyffusion"] = "sfno"
    name: str = Field("sfno", pattern=r"^[A-Za-z0-9_.-]+$")
    """Directory under ``<run_dir>/checkpoints/`` (so several models can share a run); default
    ``dyffusion`` for kind dyffusion, whose stages add ``-interpolator`` / ``-forecaster``."""
    embed_dim: int = Field(64, ge=4)
    num_layers: int = Field(4, ge=1)
    scale_factor: int = Field(2, ge=1)
    """Internal grid coarsening of the SFNO blocks (1 = the data grid)."""
    mlp_ratio: float = Field(2.0, gt=0)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    residual: bool = True
    """Predict the increment: ``x_{t+1} = x_t + f(x_t)``."""
    normalization: Literal["none", "instance"] = "instance"
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    hard_thresholding_fraction: float = Field(1.0, gt=0, le=1)
    grid_internal: Literal["legendre-gauss", "equiangular"] = "legendre-gauss"
    static_inputs: bool = True
    """Feed the run's static fields (``static:`` e.g. orog, lsm) as extra input channels."""
    lat_lon_features: bool = True
    """Feed sin/cos of latitude and longitude as extra input channels."""
    conditioning: bool = False
    """Time-conditioned blocks (sinusoidal embedding -> MLP -> per-block scale/shift)."""
    cond_embed_dim: int = Field(64, ge=2)
    bandlimit_output: bool = True
    """Keep the predicted increment within the degrees the SFNO blocks resolve (stable rollouts)."""
    wind_vectors: bool = False
    """Band-limit the increments of each wind pair (``u500``/``v500``, ``u10m``/``v10m``...) as one
    vector field (:class:`models.spectral.VectorBandLimit`) instead of two scalars, which cannot
    represent a wind crossing a pole. Needs ``bandlimit_output`` and at least one pair."""
    forcings: list[Literal["year_progress", "day_progress", "toa_insolation", "daily_insolation"]] = Field(default_factory=list)
    """Known forcings of the valid time as input channels (:mod:`models.forcings`): ``year_progress``
    and ``day_progress`` (phases of the year and of the local solar day), ``toa_insolation`` (the sun's
    flux at the top of the atmosphere, for data with a daily cycle such as ERA5) and ``daily_insolation``
    (its daily mean, for the planet). Checkpoints carry them; forecasts pass valid times."""

    def hparams(self, channels: list[str], n_static: int, nlat: int, nlon: int) -> dict[str, Any]:
        """Keyword arguments of the model class for this run (a plain, JSON-able dict).

        Raises
        ------
        MyriadError
            ``wind_vectors`` without a wind pair among ``channels``, or without ``bandlimit_output``.
        """
        n_channels = len(channels)
        return {
            "nlat": nlat,
            "nlon": nlon,
            "in_channels": n_channels,
            "out_channels": n_channels,
            "n_static": n_static if self.static_inputs else 0,
            "lat_lon_features": self.lat_lon_features,
            "embed_dim": self.embed_dim,
            "num_layers": self.num_layers,
            "scale_factor": self.scale_factor,
            "mlp_ratio": self.mlp_ratio,
            "drop_rate": self.drop_rate,
            "residual": self.residual,
            "normalization": self.normalization,
            "activation": self.activation,
            "hard_thresholding_fraction": self.hard_thresholding_fraction,
            "grid_internal": self.grid_internal,
            "conditioning": self.conditioning,
            "cond_embed_dim": self.cond_embed_dim,
            "bandlimit_output": self.bandlimit_output,
            # only when set, so checkpoints from before forcings existed still resume
            **({"forcings": list(self.forcings)} if self.forcings else {}),
            **({"wind_pairs": [list(pair) for pair in self._wind_pairs(channels)]} if self.wind_vectors else {}),
        }

    def _wind_pairs(self, channels: list[str]) -> list[tuple[int, int]]:
        pairs = wind_pairs(channels)
        if not pairs:
            raise MyriadError(f"model.wind_vectors: no eastward/northward wind pair (such as u500 and v500) among the channels {channels}")
        if not self.bandlimit_output:
            raise MyriadError("model.wind_vectors band-limits the wind increments: it needs model.bandlimit_output: true")
        return pairs

    dyffusion: DYffusionConfig | None = None
    """Spherical DYffusion settings; defaults apply with ``kind: dyffusion``."""

    @field_validator("forcings")
    @classmethod
    def _distinct_forcings(cls, value: list[str]) -> list[str]:
        # checked here rather than with models.forcings: loading a config must not import torch
        # (Dask workers load configs; torch adds ~0.5 GiB to each one's memory)
        if len(set(value)) != len(value):
            raise ValueError(f"forcings repeated: {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _dyffusion_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "dyffusion":
            data = dict(data)
            data.setdefault("name", "dyffusion")
            if data.get("dyffusion") is None:
                data["dyffusion"] = {}
        return data

    @model_validator(mode="after")
    def _dyffusion_section(self) -> ModelConfig:
        if self.kind == "dyffusion":
            if self.drop_rate != 0.0:
                raise ValueError("drop_rate is for kind sfno; with kind dyffusion set "
                                 "dyffusion.interpolator_dropout / dyffusion.forecaster_dropout")
        elif self.dyffusion is not None:
            raise ValueError(f"the dyffusion sub-section needs kind: dyffusion (kind is {self.kind!r})")
        return self

    def checkpoint_name(self, stage: str | None = None) -> str:
        """Directory under ``<run_dir>/checkpoints/`` of a model (and DYffusion stage)."""
        if self.kind != "dyffusion":
            return self.name
        return f"{self.name}-{self._stage(stage)}"

    def stage_model(self, stage: str | None, channels: list[str], n_static: int, nlat: int, nlon: int) -> tuple[str, dict[str, Any]]:
        """Registry kind and hyper-parameters of the network a training stage builds.

        ``stage`` is None for ``kind: sfno`` and ``"interpolator"`` or
        ``"forecaster"`` for ``kind: dyffusion``.
        """
        hparams = self.hparams(channels, n_static, nlat, nlon)
        if self.kind != "dyffusion":
            if stage is not None:
                raise ValueError(f"training stage {stage!r} is for model.kind dyffusion (kind is {self.kind!r})")
            return self.kind, hparams
        stage = self._stage(stage)
        dyf = self.dyffusion
        hparams.update(
            conditioning=True,
            horizon=dyf.horizon,
            time_scale=dyf.time_scale,
            drop_rate=dyf.interpolator_dropout if stage == "interpolator" else dyf.forecaster_dropout,
        )
        if stage == "forecaster" and dyf.seasonal_harmonics:
            hparams["seasonal_harmonics"] = dyf.seasonal_harmonics
        return f"dyffusion_{stage}", hparams

    def _stage(self, stage: str | None) -> str:
        if stage not in DYFFUSION_STAGES:
            raise ValueError(f"model.kind dyffusion trains in stages {list(DYFFUSION_STAGES)}; got stage {stage!r}")
        return stage


class PeriodConfig(StrictModel):
    """A closed time interval ``[start, end]`` of the analysis store."""

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> "PeriodConfig":
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class InitFromConfig(StrictModel):
    """Start a new run from the weights of another trained model (:mod:`pipeline.training.warm_start`):
    ``<run_dir>/checkpoints/<model>[-<stage>]/seed-<k>/<checkpoint>.pt`` of the same stage and seed
    (or of ``seed``)."""

    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """The trained model's ``model.name``."""
    run_dir: Path | None = None
    """Its run directory; default: this config's ``run_dir``."""
    checkpoint: Literal["best", "last"] = "best"
    seed: int | None = None
    """The trained model's seed to start every seed of this run from; default: each seed from its own.
    Several new seeds from one trained seed differ in data order and dropout only: the spread that
    fine-tuning alone gives."""


class TrainingConfig(StrictModel):
    """How models are trained, validated and calibrated.

    Steps are optimiser steps over the *global* batch (all ranks together).
    The total is ``min(max_steps, epochs x steps_per_epoch)`` of whichever is
    given; ``max_minutes`` additionally stops a run (with a checkpoint) when
    its accumulated wall time exceeds the budget.
    """

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """One checkpoint per seed: model init, data order and dropout derive from it."""
    batch_size: int = Field(8, ge=1)
    """Global batch; must be divisible by the number of ranks."""
    epochs: int | None = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    lr: float = Field(5e-4, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Floor of the cosine schedule as a fraction of ``lr``."""
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    """Keep an exponential moving average of the weights with this decay (e.g. 0.999, spanning about
    1,000 steps; :mod:`pipeline.training.averaging`); validation, ``best.pt`` and forecasts use the
    average. Unset: the live weights. May be switched on when resuming (the average starts there)."""
    init_from: InitFromConfig | None = None
    """A new run's first weights (not its optimiser or schedule) from another trained model, which may
    lack forcings this config appends; a run with its own ``last.pt`` resumes instead."""
    rollout_steps: int = Field(1, ge=1)
    """Autoregressive steps per sample in the fine-tune phase (1 = none)."""
    rollout_start_step: int = Field(0, ge=0)
    """Global step from which samples carry ``rollout_steps`` targets."""
    input_noise: float = Field(0.0, ge=0)
    """Gaussian noise added to each window's initial state, in units of each channel's
    one-step tendency std: the model learns to pull perturbed states back towards the
    data (steadier long rollouts). 0 turns it off."""
    channel_weights: dict[str, float] = Field(default_factory=dict)
    """Loss weight per channel (default 1); normalised to mean 1 over the channels."""
    loss_units: Literal["tendency", "normalised"] = "tendency"
    """Measure each channel's error in units of its one-step tendency std (HENS) or of its std."""
    wind_loss: Literal["components", "helmholtz"] = "components"
    """Score each wind pair (``u500``/``v500``...) as its two components, or as its rotational and
    divergent parts, each in units of its own change (:mod:`pipeline.training.wind_loss`: the
    divergent wind, which carries the zonal-mean ``v`` and the mass, is otherwise lost in the
    rotational wind's error). ``helmholtz`` needs at least one pair among the channels."""
    divergent_wind_weight: float = Field(1.0, gt=0)
    """With ``wind_loss: helmholtz``, a factor on each pair's divergent term (after the channel weights)."""
    polar_weight: float = Field(0.0, ge=0)
    """Extra weight on the rows poleward of ``polar_latitude``: the training loss adds this times their
    area-weighted error (:mod:`pipeline.training.polar_loss`); 0 scores every row by its area alone."""
    polar_latitude: float = Field(60.0, gt=0, lt=90)
    """Degrees (either hemisphere) from which ``polar_weight`` applies."""
    checkpoint_every: int = Field(500, ge=1)
    """Write ``last.pt`` every N steps (and at each epoch end and at the end)."""
    log_every: int = Field(20, ge=1)
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes per rank (0 reads in the training process)."""
    cache_in_memory: Literal["auto", "always", "never"] = "auto"
    memory_limit_gb: float = Field(4.0, gt=0)
    """``auto`` loads the training and validation frames into memory below this size."""
    train_period: PeriodConfig | None = None
    """Default: the store's times before ``val_period``."""
    val_period: PeriodConfig | None = None
    """Default: the last ``val_fraction`` of the store's times."""
    val_fraction: float = Field(0.1, gt=0, lt=1)
    val_lead_hours: list[int] = Field(default_factory=lambda: [6, 24, 120], min_length=1)
    val_max_inits: int = Field(32, ge=1)
    """Validation initial times per epoch (evenly spaced over the period)."""
    climatology_samples: int = Field(512, ge=1)
    """Training frames (evenly spaced) averaged into the climatology reference."""
    calibration_lead_hours: int = Field(48, ge=1)
    calibration_max_inits: int = Field(64, ge=1)
    bf16: bool = True
    """bf16 autocast on CUDA (the SHT stays fp32); ignored on CPU."""
    compile: bool = False
    deterministic: bool = False
    """Deterministic kernels (bitwise-reproducible resume on CPU)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend: auto = nccl on CUDA, gloo on CPU."""
    nproc_per_node: int = Field(1, ge=1)
    """Ranks per node that ``myriad train`` starts (``--nproc`` overrides)."""
    parallel_seeds: int = Field(1, ge=1)
    """Seeds trained at the same time by the train flow."""

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate seeds in {value}")
        if any(seed < 0 for seed in value):
            raise ValueError(f"seeds must be >= 0, got {value}")
        return value

    @field_validator("channel_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not weight >= 0:
                raise ValueError(f"channel weight for '{name}' must be >= 0, got {weight}")
        return value

    @model_validator(mode="after")
    def _length(self) -> "TrainingConfig":
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        return self

    def targets_at(self, step: int) -> int:
        """Autoregressive targets used at global ``step``."""
        return self.rollout_steps if step >= self.rollout_start_step else 1


_EVERY_STAGE = (TrainingConfig, ("input_noise", "loss_units", "channel_weights", "wind_loss", "divergent_wind_weight",
                                 "polar_weight", "polar_latitude"))
LOSS_SETTINGS: dict[str | None, tuple[tuple[type[StrictModel], tuple[str, ...]], ...]] = {
    None: (_EVERY_STAGE, (TrainingConfig, ("rollout_steps", "rollout_start_step"))),
    "interpolator": (_EVERY_STAGE,),
    "forecaster": (_EVERY_STAGE, (DYffusionConfig, ("pushforward_chains", "forecaster_loss", "interpolation_end"))),
}
"""Per stage (None: the SFNO), the settings that define the training loss (not its schedule)."""


def training_objective(config: dict[str, Any], stage: str | None) -> dict[str, Any]:
    """The loss-defining settings of a run (:data:`LOSS_SETTINGS`) from its config as JSON data.

    ``best.pt`` is the best-validated checkpoint under one objective; a run
    resumed with another (pushforward chains or the adjusted MSE switched on
    for a fine-tune, say) chooses it afresh. ``config`` is
    ``MyriadConfig.model_dump(mode="json")`` or a checkpoint's ``config``
    parsed; a setting an older checkpoint's config lacks takes its default.
    """
    sections = {TrainingConfig: config.get("training") or {},
                DYffusionConfig: (config.get("model") or {}).get("dyffusion") or {}}
    objective: dict[str, Any] = {}
    for schema, names in LOSS_SETTINGS[stage]:
        section = sections[schema]
        for name in names:
            objective[name] = (section[name] if name in section
                               else schema.model_fields[name].get_default(call_default_factory=True))
    return objective
