r"""Spherical DYffusion's two training stages: checks, batches and losses.

Both stages read windows of :math:`h + 1` consecutive normalised states
``(x_t, x_{t+1}, ..., x_{t+h})``, shape ``(B, h + 1, C, nlat, nlon)`` (the
:class:`pipeline.training.dataset.WindowDataset` windows with ``h`` targets),
and give each sample its own time step (time fractions :math:`i = n / h`,
see :mod:`models.dyffusion`):

- stage ``interpolator``: :math:`n` uniform in :math:`1 \ldots h-1`; the
  network sees ``(x_t, x_{t+h}, n/h)`` and is scored against
  :math:`x_{t+n}` with the area-weighted MSE
  (:class:`pipeline.training.losses.SphericalMSE`). It needs :math:`h \ge 2`.
- stage ``forecaster``: :math:`n` uniform in :math:`0 \ldots h-1`; the input
  is :math:`x_t` for :math:`n = 0`, otherwise the frozen interpolator's
  :math:`I(x_t, x_{t+h}, n/h)` computed without gradient and with its Monte
  Carlo dropout on (the states the sampler will feed the forecaster); with
  ``interpolation_end: forecast`` the interpolation ends at the forecaster's
  own jump :math:`F(x_t, 0)` instead of the truth, as the sampler's do
  (its first state :math:`x_1 = I(x_t, F(x_t, 0), 1/h)` exactly); the
  forecaster sees ``(input, n/h)`` and is scored against :math:`x_{t+h}` with
  the area-weighted L1 (:class:`pipeline.training.losses.SphericalL1`), or with
  ``forecaster_loss: amse`` the adjusted MSE (:class:`pipeline.training.losses.SphericalAMSE`). With
  :math:`h = 1` there is no interpolator and every input is :math:`x_t`.

Networks with forcings (``model.forcings``) get the valid time of
:math:`x_t` (the window's start) in both stages, as the sampler gives them
the chain's start time.

Pushforward (``model.dyffusion.pushforward_chains`` :math:`K > 0`, forecaster
stage): windows span :math:`(K + 1) h` steps; each sample draws :math:`k`
uniform in :math:`0 \ldots K`, replaces the truth :math:`x_{t+kh}` by the
forecaster's own forecast of it, :math:`\hat x_{t+kh} = F^{k}(x_t)` with
:math:`F(x) = F(x, 0)` (one chain's jump, no gradient), and trains on the
sub-window :math:`(\hat x_{t+kh}, x_{t+kh+1}, \ldots, x_{t+(k+1)h})` as
above. Free runs leave the states the training data cover; this shows the
forecaster its own drifted states with the truth as target, the pushforward
trick of Brandstetter et al. (2022) at the cost of :math:`k` extra forward
passes.

:func:`check_interpolator` validates the forecaster stage's interpolator
checkpoint before any training starts; :func:`evaluate_interpolator` scores
the interpolator stage against linear interpolation in time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config import MyriadConfig
from pipeline.errors import MyriadError
from pipeline.training.checkpoint import (
    INTERPOLATOR_KIND,
    CheckpointInfo,
    checkpoint_info,
    load_checkpoint,
    read_checkpoint,
    seed_directory,
    select_checkpoint,
)
from pipeline.training.config import DYFFUSION_STAGES
from pipeline.training.dataset import Frames
from pipeline.training.distributed import DistributedContext
from pipeline.training.losses import SphericalMSE
from pipeline.training.normalisation import Normalisation
from pipeline.training.validation import Skill, ranks_rmse


def _dyffusion(config: MyriadConfig):
    if config.model is None or config.model.kind != "dyffusion":
        kind = None if config.model is None else config.model.kind
        raise MyriadError(f"config: DYffusion training needs `model: {{kind: dyffusion}}` (model.kind is {kind!r})")
    return config.model.dyffusion


def checked_stage(config: MyriadConfig, stage: str | None) -> str | None:
    """The training stage of a run: None for ``kind: sfno``, a DYffusion stage name for ``kind: dyffusion``.

    Raises
    ------
    MyriadError
        A stage for an SFNO, no stage or an unknown one for DYffusion.
    """
    kind = config.model.kind if config.model is not None else None
    if kind != "dyffusion":
        if stage is not None:
            raise MyriadError(f"--stage {stage}: training stages are for model.kind dyffusion (model.kind is {kind!r})")
        return None
    if stage is None:
        raise MyriadError(f"model.kind dyffusion trains in two stages: pass --stage {' or --stage '.join(DYFFUSION_STAGES)} "
                          "(the train flow and `myriad run` run both in order)")
    if stage not in DYFFUSION_STAGES:
        raise MyriadError(f"--stage {stage!r}: DYffusion stages are {list(DYFFUSION_STAGES)}")
    return stage


def stages_to_train(config: MyriadConfig) -> list[str | None]:
    """The stages a full training of the configured model runs, in order.

    ``[None]`` for an SFNO; ``["interpolator", "forecaster"]`` for DYffusion
    (``["forecaster"]`` with ``h = 1``, or when ``model.dyffusion.interpolator_checkpoint``
    points at an interpolator trained elsewhere).
    """
    if config.model is None or config.model.kind != "dyffusion":
        return [None]
    dyf = config.model.dyffusion
    if dyf.horizon == 1 or dyf.interpolator_checkpoint is not None:
        return ["forecaster"]
    return list(DYFFUSION_STAGES)


def default_seed(config: MyriadConfig) -> int:
    """The first of ``training.seeds`` (0 without a training section)."""
    return config.training.seeds[0] if config.training is not None else 0


def check_stage(config: MyriadConfig, stage: str, seed: int | None = None) -> CheckpointInfo | None:
    """Refuse a DYffusion stage that cannot train, before any data is read.

    Returns the interpolator checkpoint's info for stage ``forecaster`` with
    ``h >= 2`` (see :func:`check_interpolator`), else None.

    Raises
    ------
    MyriadError
        Not a DYffusion config, an unknown stage, the interpolator stage with
        ``h = 1``, or a bad interpolator checkpoint.
    """
    dyf = _dyffusion(config)
    if stage not in DYFFUSION_STAGES:
        raise MyriadError(f"--stage {stage!r}: DYffusion stages are {list(DYFFUSION_STAGES)}")
    if stage == "interpolator":
        if dyf.horizon < 2:
            raise MyriadError(
                f"model.dyffusion.horizon is {dyf.horizon}: there is nothing between x_t and x_(t+h) to interpolate; "
                "with h = 1 train only --stage forecaster (it is then a time-conditioned SFNO)"
            )
        return None
    return check_interpolator(config, seed)


def interpolator_checkpoint_path(config: MyriadConfig, seed: int | None = None) -> Path:
    """Where the forecaster stage looks for its interpolator (see ``model.dyffusion.interpolator_checkpoint``).

    Raises
    ------
    MyriadError
        No checkpoint file there.
    """
    dyf = _dyffusion(config)
    seed = default_seed(config) if seed is None else seed
    configured = dyf.interpolator_checkpoint
    where = Path(configured) if configured is not None else seed_directory(
        config.run_dir, config.model.checkpoint_name("interpolator"), seed)
    key = "model.dyffusion.interpolator_checkpoint" if configured is not None else "default interpolator checkpoint"
    hint = "train it first with `myriad train CONFIG --stage interpolator`"
    if where.is_file():
        return where
    if where.is_dir():
        try:
            return select_checkpoint(where)
        except MyriadError:
            raise MyriadError(f"{key} {where}: no best.pt or last.pt in it; {hint}") from None
    raise MyriadError(f"{key} {where}: does not exist; {hint} or set model.dyffusion.interpolator_checkpoint")


def check_interpolator(config: MyriadConfig, seed: int | None = None) -> CheckpointInfo | None:
    """Check that the forecaster stage's interpolator checkpoint fits this config.

    It must exist, be a ``dyffusion_interpolator`` checkpoint, and share the
    config's channels (names and order), static fields, grid, horizon and
    forcings (``model.forcings``). With
    ``h = 1`` no interpolator is used and None is returned.

    Raises
    ------
    MyriadError
        Naming the checkpoint and each mismatch.
    """
    dyf = _dyffusion(config)
    if dyf.horizon == 1:
        return None
    path = interpolator_checkpoint_path(config, seed)
    info = checkpoint_info(read_checkpoint(path), path)
    if info.kind != INTERPOLATOR_KIND:
        raise MyriadError(f"interpolator checkpoint {path}: is a {info.kind!r} checkpoint, not a DYffusion interpolator "
                          f"(train one with `myriad train CONFIG --stage interpolator`)")
    static = list(config.static) if config.model.static_inputs else []
    wanted = {
        "channels": list(config.channels),
        "static fields": static,
        "grid": [config.grid.nlat, config.grid.nlon],
        "horizon": dyf.horizon,
        "forcings": list(config.model.forcings),
    }
    found = {
        "channels": list(info.channels),
        "static fields": list(info.static) if info.hparams.get("n_static", 0) else [],
        "grid": [info.grid.nlat, info.grid.nlon],
        "horizon": info.hparams.get("horizon"),
        "forcings": list(info.hparams.get("forcings", [])),
    }
    differ = [f"{key} {found[key]} (config: {wanted[key]})" for key in wanted if wanted[key] != found[key]]
    if differ:
        raise MyriadError(f"interpolator checkpoint {path}: was trained with other " + "; ".join(differ)
                          + "; retrain the interpolator for this config or point model.dyffusion.interpolator_checkpoint elsewhere")
    return info


def freeze_interpolator(model: nn.Module) -> nn.Module:
    """Make ``model`` the forecaster stage's frozen interpolator: eval mode, no gradients, MC dropout on."""
    model.eval()
    model.requires_grad_(False)
    if hasattr(model, "set_mc_dropout"):
        model.set_mc_dropout(True)
    return model


def load_frozen_interpolator(path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """The forecaster stage's interpolator (checked with :func:`check_interpolator`), frozen."""
    model, _ = load_checkpoint(path, map_location=device)
    return freeze_interpolator(model)


@torch.no_grad()
def evaluate_interpolator(interpolator: nn.Module, frames: Frames, starts: np.ndarray, horizon: int, step_hours: int,
                          loss: SphericalMSE, normalisation: Normalisation, ctx: DistributedContext,
                          batch_size: int = 8) -> Skill:
    r"""Interpolation skill at each interior step :math:`n = 1 \ldots h-1` of the horizon.

    For windows :math:`(x_t, \ldots, x_{t+h})` from ``starts``: area-weighted
    RMSE per channel (physical units) of ``model`` :math:`I(x_t, x_{t+h}, n/h)`
    (dropout off) and of ``linear`` :math:`(1 - n/h)\,x_t + (n/h)\,x_{t+h}`,
    both against :math:`x_{t+n}`. Starts are split over ranks and the sums
    added, as :func:`pipeline.training.validation.evaluate` does; the Skill's
    lead times are :math:`n` steps.
    """
    interpolator.eval()
    sums = torch.zeros(2, horizon - 1, len(normalisation.channels), dtype=torch.float64, device=ctx.device)
    mine = np.asarray(starts)[ctx.rank :: ctx.world_size]
    for first in range(0, len(mine), batch_size):
        batch = mine[first : first + batch_size]
        window = frames.read(batch[:, None] + np.arange(horizon + 1)[None, :]).to(ctx.device)
        seconds = frames.seconds(batch).to(ctx.device)
        x_start, x_end = window[:, 0], window[:, horizon]
        for n in range(1, horizon):
            fraction = n / horizon
            guesses = (interpolator(x_start, x_end, fraction, time=seconds).float(), (1 - fraction) * x_start + fraction * x_end)
            for r, guess in enumerate(guesses):
                sums[r, n - 1] += loss.per_channel(guess, window[:, n]).double().sum(dim=0)
    rmse, n_inits = ranks_rmse(sums, len(mine), normalisation, ctx)
    return Skill(lead_hours=tuple(n * step_hours for n in range(1, horizon)), channels=normalisation.channels,
                 rmse={"model": rmse[0], "linear": rmse[1]}, n_inits=n_inits)


# ---------------------------------------------------------------------- batches and losses


def _horizon(window: torch.Tensor, *models: object) -> int:
    if window.ndim != 5 or window.shape[1] < 2:
        raise ValueError(f"a DYffusion window has shape (B, h + 1, C, nlat, nlon) with h >= 1, got {tuple(window.shape)}")
    horizon = window.shape[1] - 1
    for model in models:
        built = getattr(model, "horizon", None)
        if built is not None and built != horizon:
            raise ValueError(f"window spans h = {horizon} steps but the network was built for h = {built}")
    return horizon


def _draw(low: int, high: int, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """``batch`` integers uniform in ``low .. high`` (inclusive), on the CPU."""
    return torch.randint(low, high + 1, (batch,), generator=generator)


def interpolator_batch(window: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs and target of the interpolator stage.

    Returns
    -------
    (x_start, x_end, i, target)
        ``x_t``, ``x_{t+h}``, the time fractions ``n / h`` (shape ``(B,)``,
        ``n`` uniform in ``1 .. h-1``) and ``x_{t+n}``.
    """
    h = _horizon(window)
    if h < 2:
        raise ValueError("the interpolator stage needs h >= 2 (a window of at least 3 states)")
    steps = _draw(1, h - 1, window.shape[0], generator).to(window.device)
    target = window[torch.arange(window.shape[0], device=window.device), steps]
    return window[:, 0], window[:, h], steps.float() / h, target


def interpolator_loss(interpolator: nn.Module, window: torch.Tensor, loss: nn.Module,
                      generator: torch.Generator | None = None, seconds: torch.Tensor | None = None) -> torch.Tensor:
    """Stage ``interpolator``: ``loss(I(x_t, x_{t+h}, n/h), x_{t+n})`` (``loss`` a SphericalMSE).

    ``seconds``: valid times of ``x_t`` (POSIX seconds, shape ``(B,)``) for a network with forcings.
    """
    _horizon(window, interpolator)
    x_start, x_end, i, target = interpolator_batch(window, generator)
    return loss(interpolator(x_start, x_end, i, time=seconds), target)


def forecaster_batch(window: torch.Tensor, interpolator: nn.Module | None, generator: torch.Generator | None = None,
                     seconds: torch.Tensor | None = None, forecaster: nn.Module | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs and target of the forecaster stage.

    Parameters
    ----------
    window
        ``(B, h + 1, C, nlat, nlon)``.
    interpolator
        The frozen interpolator (:func:`freeze_interpolator`: dropout on);
        may be None only when ``h = 1``.
    seconds
        Valid times of ``x_t`` (POSIX seconds, shape ``(B,)``), for an interpolator with forcings.
    forecaster
        If given, the interpolations end at its jump ``F(x_t, 0)`` (no gradient) instead of
        ``x_{t+h}`` (``interpolation_end: forecast``).

    Returns
    -------
    (inputs, i, target)
        ``x_t`` where ``n = 0`` else ``I(x_t, x_{t+h}, n/h)`` (no gradient; ``x_{t+h}`` replaced as above),
        the time fractions ``n / h`` (``n`` uniform in ``0 .. h-1``) and ``x_{t+h}``.
    """
    h = _horizon(window, interpolator)
    batch = window.shape[0]
    steps = _draw(0, h - 1, batch, generator).to(window.device)
    i = steps.float() / h
    x_start, x_end = window[:, 0], window[:, h]
    inputs = x_start.clone()
    interpolated = steps > 0
    if bool(interpolated.any()):
        if interpolator is None:
            raise ValueError(f"h = {h}: the forecaster stage needs the frozen interpolator")
        with torch.no_grad():
            times = seconds[interpolated] if seconds is not None else None
            start = x_start[interpolated]
            end = x_end[interpolated] if forecaster is None else forecaster(
                start, torch.zeros(start.shape[0], device=start.device), time=times).to(start.dtype)
            inputs[interpolated] = interpolator(start, end, i[interpolated], time=times).to(inputs.dtype)
    return inputs, i, x_end


def forecaster_loss(forecaster: nn.Module, window: torch.Tensor, interpolator: nn.Module | None, loss: nn.Module,
                    generator: torch.Generator | None = None, seconds: torch.Tensor | None = None,
                    interpolate_to_forecast: bool = False) -> torch.Tensor:
    """Stage ``forecaster``: ``loss(F(input, n/h), x_{t+h})`` (``loss`` a SphericalL1 or SphericalAMSE).

    Both networks get the chain's start time ``seconds`` (valid time of ``x_t``), as in the sampler.
    ``interpolate_to_forecast``: the inputs interpolate towards ``F(x_t, 0)`` (``interpolation_end: forecast``).
    """
    _horizon(window, forecaster)
    inputs, i, target = forecaster_batch(window, interpolator, generator, seconds,
                                         forecaster if interpolate_to_forecast else None)
    return loss(forecaster(inputs, i, time=seconds), target)


def pushforward_window(forecaster: nn.Module, window: torch.Tensor, chains: int, step_seconds: float,
                       generator: torch.Generator | None = None, seconds: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Start each sample from the forecaster's own forecast, ``k`` chains into its window.

    Parameters
    ----------
    forecaster
        The forecaster being trained; its jumps :math:`F(x, 0)` run without gradient.
    window
        ``(B, (K + 1) h + 1, C, nlat, nlon)`` with ``K = chains``.
    chains
        K: the most chains a sample is pushed forward (``k`` uniform in ``0 .. K``).
    step_seconds
        Seconds per time step (the valid time advances ``h`` steps per jump).
    seconds
        Valid times of the window's first states (POSIX seconds, shape ``(B,)``), for forcings.

    Returns
    -------
    (sub_window, sub_seconds)
        ``(B, h + 1, C, nlat, nlon)``: :math:`(F^k(x_t), x_{t+kh+1}, \ldots, x_{t+(k+1)h})`,
        and the valid times of their first states, :math:`t + k h` (None without ``seconds``).
    """
    if chains < 1:
        raise ValueError(f"pushforward needs at least one chain, got {chains}")
    if window.ndim != 5 or (window.shape[1] - 1) % (chains + 1):
        raise ValueError(f"a pushforward window of {chains} chains has (K + 1) h + 1 states, got shape {tuple(window.shape)}")
    horizon = (window.shape[1] - 1) // (chains + 1)
    batch = window.shape[0]
    pushes = _draw(0, chains, batch, generator).to(window.device)
    state = window[:, 0].clone()
    with torch.no_grad():
        for chain in range(chains):
            moving = pushes > chain
            if not bool(moving.any()):
                break
            times = seconds[moving] + chain * horizon * step_seconds if seconds is not None else None
            start = torch.zeros(int(moving.sum()), device=window.device)
            state[moving] = forecaster(state[moving], start, time=times).to(state.dtype)
    index = pushes[:, None] * horizon + torch.arange(horizon + 1, device=window.device)[None, :]
    sub_window = window[torch.arange(batch, device=window.device)[:, None], index]
    sub_window[:, 0] = state
    sub_seconds = seconds + pushes.to(seconds.dtype) * horizon * step_seconds if seconds is not None else None
    return sub_window, sub_seconds


class StageLoss(nn.Module):
    """One DYffusion stage's loss as a module, ready to wrap in DistributedDataParallel.

    ``forward(window, seconds, generator)`` returns the stage loss of a window
    batch whose first states are valid at ``seconds`` (POSIX, shape ``(B,)``).
    Only ``network`` (the network this stage trains) is a sub-module: the
    frozen interpolator of the forecaster stage is held outside the module
    tree, so DDP neither syncs nor checks it and it stays out of
    ``state_dict`` and ``parameters()``.

    Parameters
    ----------
    stage
        ``"interpolator"`` or ``"forecaster"``.
    network
        The :class:`models.dyffusion.DYffusionInterpolator` or
        :class:`models.dyffusion.DYffusionForecaster` being trained.
    loss
        :class:`pipeline.training.losses.SphericalMSE` (interpolator) or
        :class:`pipeline.training.losses.SphericalL1` or ``SphericalAMSE`` (forecaster).
    interpolator
        The frozen interpolator (forecaster stage with ``h >= 2``), see :func:`freeze_interpolator`.
    pushforward_chains
        Forecaster stage: K of :func:`pushforward_window` (0 = none); windows then span ``(K + 1) h`` steps.
    step_seconds
        Seconds per time step (needed with pushforward).
    interpolation_end
        Forecaster stage: ``"truth"`` or ``"forecast"`` (:func:`forecaster_batch`).
    """

    def __init__(self, stage: str, network: nn.Module, loss: nn.Module, interpolator: nn.Module | None = None,
                 pushforward_chains: int = 0, step_seconds: float = 0.0, interpolation_end: str = "truth") -> None:
        super().__init__()
        if stage not in DYFFUSION_STAGES:
            raise ValueError(f"stage must be one of {list(DYFFUSION_STAGES)}, got {stage!r}")
        if stage == "interpolator" and interpolator is not None:
            raise ValueError("the interpolator stage takes no frozen interpolator")
        if pushforward_chains and (stage != "forecaster" or step_seconds <= 0):
            raise ValueError("pushforward is for the forecaster stage and needs step_seconds > 0")
        if interpolation_end not in ("truth", "forecast") or (interpolation_end == "forecast" and stage != "forecaster"):
            raise ValueError(f"interpolation_end {interpolation_end!r}: 'truth', or 'forecast' in the forecaster stage")
        self.stage = stage
        self.network = network
        self.loss = loss
        self.pushforward_chains = pushforward_chains
        self.step_seconds = step_seconds
        self.interpolation_end = interpolation_end
        self._frozen = (interpolator,)  # a tuple attribute: not registered as a sub-module

    @property
    def interpolator(self) -> nn.Module | None:
        return self._frozen[0]

    def forward(self, window: torch.Tensor, seconds: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if self.stage == "interpolator":
            return interpolator_loss(self.network, window, self.loss, generator, seconds)
        if self.pushforward_chains:
            window, seconds = pushforward_window(self.network, window, self.pushforward_chains, self.step_seconds,
                                                 generator, seconds)
        return forecaster_loss(self.network, window, self.interpolator, self.loss, generator, seconds,
                               self.interpolation_end == "forecast")
