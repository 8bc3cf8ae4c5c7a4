"""Spherical DYffusion: cold sampler (fake networks with known outputs), networks, config, stage losses, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.dyffusion import ColdSampler, DYffusionForecaster, DYffusionInterpolator
from models.registry import build_model
from pipeline.config import MyriadConfig, config_from_dict
from pipeline.errors import MyriadError
from pipeline.training.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    seed_directory,
)
from pipeline.training.dyffusion import (
    StageLoss,
    check_interpolator,
    check_stage,
    forecaster_batch,
    forecaster_loss,
    freeze_interpolator,
    interpolator_batch,
    interpolator_loss,
    load_frozen_interpolator,
    pushforward_window,
)
from pipeline.training.losses import SphericalL1, SphericalMSE, channel_weight_vector
from pipeline.training.normalisation import Normalisation
from tests.analysis_files import CHANNELS, GRID
from tests.training_fixtures import base_config, merged

torch.set_num_threads(1)

NLAT, NLON = GRID.nlat, GRID.nlon
TINY = {"embed_dim": 8, "num_layers": 2, "scale_factor": 1, "mlp_ratio": 1.0}


# ---------------------------------------------------------------------- fake networks with known outputs


class RecordingForecaster:
    """F(x, i) = x + a + b i (per sample), recording its calls and the valid times it gets."""

    def __init__(self, a: float = 1.0, b: float = 0.5) -> None:
        self.a, self.b = a, b
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.times: list[torch.Tensor | None] = []

    def __call__(self, x: torch.Tensor, i: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.clone(), i.clone()))
        self.times.append(time)
        return x + self.a + self.b * i[:, None, None, None]


class BlendInterpolator:
    """I(x0, x1, i) = (1 - i) x0 + i x1 + c i (1 - i): a linear blend with a known bump."""

    def __init__(self, c: float = 0.25) -> None:
        self.c = c
        self.calls: list[float] = []
        self.times: list[torch.Tensor | None] = []

    def __call__(self, x0: torch.Tensor, x1: torch.Tensor, i: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(float(i[0]))
        self.times.append(time)
        w = i[:, None, None, None]
        return (1 - w) * x0 + w * x1 + self.c * w * (1 - w)


def reference_chain(x_t: torch.Tensor, h: int, F, I) -> list[torch.Tensor]:
    """The cold-sampling formula written out: I(., ., 0) = x_t and I(., xhat, 1) = xhat."""
    def interp(xhat, s):
        if s == 0:
            return x_t
        if s == h:
            return xhat
        return I(x_t, xhat, torch.full((x_t.shape[0],), s / h))

    out, x = [], x_t
    for s in range(h):
        xhat = F(x, torch.full((x_t.shape[0],), s / h))
        x = x + interp(xhat, s + 1) - interp(xhat, s)
        out.append(x)
    return out


def test_cold_sampler_matches_the_formula_step_by_step() -> None:
    h = 4
    x_t = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    F, I = RecordingForecaster(), BlendInterpolator()
    emitted = list(ColdSampler(I, F, horizon=h).chain(x_t))
    expected = reference_chain(x_t, h, RecordingForecaster(), BlendInterpolator())
    assert len(emitted) == h
    for got, want in zip(emitted, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # the forecaster saw x_0 .. x_{h-1} at times s/h; the interpolator was never asked for i = 0 or 1
    assert [float(i[0]) for _, i in F.calls] == [s / h for s in range(h)]
    torch.testing.assert_close(F.calls[0][0], x_t)
    for s in range(1, h):
        torch.testing.assert_close(F.calls[s][0], emitted[s - 1])
    assert sorted(set(I.calls)) == [s / h for s in range(1, h)]
    assert len(I.calls) == 2 * (h - 1)


def test_cold_sampler_by_hand_for_h2() -> None:
    """h = 2, F(x, i) = x + 1 + i/2, I = blend with bump c i(1-i), x_t = 0."""
    x_t = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    x1, x2 = ColdSampler(BlendInterpolator(0.25), RecordingForecaster(1.0, 0.5), horizon=2).chain(x_t)
    # s=0: xhat = 1;  x1 = I(0, 1, 1/2) = 0.5 + 0.25/4 = 0.5625
    assert float(x1) == pytest.approx(0.5625)
    # s=1: xhat = x1 + 1 + 0.25 = 1.8125;  x2 = x1 + xhat - I(0, xhat, 1/2) = 0.5625 + 1.8125 - (0.90625 + 0.0625)
    assert float(x2) == pytest.approx(0.5625 + 1.8125 - 0.96875)
    assert ColdSampler(BlendInterpolator(), RecordingForecaster(), horizon=2).passes_per_step == pytest.approx(2.0)


def test_horizon_one_reduces_to_the_forecaster() -> None:
    x = torch.randn(3, 2, 5, 8)
    F = RecordingForecaster(0.3, 2.0)

    def no_interpolator(*args):
        raise AssertionError("h = 1 must not call the interpolator")

    sampler = ColdSampler(no_interpolator, F, horizon=1)
    states = list(sampler.rollout(x, 3))
    expected = x
    for state in states:
        expected = expected + 0.3  # F(x, 0) = x + a
        torch.testing.assert_close(state, expected)
    assert [float(i[0]) for _, i in F.calls] == [0.0, 0.0, 0.0]
    assert sampler.passes_per_step == 1.0
    # with real networks: exactly the forecaster's output
    forecaster = build_model("dyffusion_forecaster", nlat=NLAT, nlon=NLON, in_channels=2, horizon=1, **TINY).eval()
    interpolator = build_model("dyffusion_interpolator", nlat=NLAT, nlon=NLON, in_channels=2, horizon=1, **TINY).eval()
    z = torch.randn(2, 2, NLAT, NLON)
    with torch.no_grad():
        (one,) = ColdSampler(interpolator, forecaster).chain(z)
        assert torch.equal(one, forecaster(z, 0.0))


def test_rollout_restarts_chains_from_the_state_at_t_plus_h() -> None:
    h, n = 3, 8
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    sampler = ColdSampler(BlendInterpolator(), RecordingForecaster(), horizon=h)
    states = list(sampler.rollout(x0, n))
    assert len(states) == n
    expected, start = [], x0
    while len(expected) < n:
        chain = reference_chain(start, h, RecordingForecaster(), BlendInterpolator())
        expected += chain
        start = chain[-1]
    for got, want in zip(states, expected[:n]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # 8 steps = chains of 3, 3, 2: the last chain stops after the steps wanted (no forecaster call at s = 2)
    F = RecordingForecaster()
    list(ColdSampler(BlendInterpolator(), F, horizon=h).rollout(x0, n))
    assert [round(float(i[0]) * h) for _, i in F.calls] == [0, 1, 2, 0, 1, 2, 0, 1]
    torch.testing.assert_close(F.calls[3][0], states[2])
    torch.testing.assert_close(F.calls[6][0], states[5])
    assert list(sampler.rollout(x0, 0)) == []
    # valid times: both networks of a chain get the chain's start time, advancing h steps per chain
    F, I = RecordingForecaster(), BlendInterpolator()
    t0 = torch.full((x0.shape[0],), 1.0e9, dtype=torch.float64)
    timed = list(ColdSampler(I, F, horizon=h).rollout(x0, n, time=t0, step_seconds=3600.0))
    assert [float(t[0] - 1.0e9) / 3600 for t in F.times] == [0, 0, 0, 3, 3, 3, 6, 6]
    assert {float(t[0] - 1.0e9) / 3600 for t in I.times} == {0, 3, 6}
    torch.testing.assert_close(torch.stack(timed), torch.stack(states))
    with pytest.raises(ValueError, match="step_seconds"):
        next(ColdSampler(I, F, horizon=h).rollout(x0, n, time=t0))


def test_jump_sampler_calls_the_forecaster_once_per_chain_and_interpolates_towards_its_jump() -> None:
    h, n = 4, 10
    x0 = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    F, I = RecordingForecaster(a=1.0), BlendInterpolator()
    sampler = ColdSampler(I, F, horizon=h, refine=False)
    states = list(sampler.rollout(x0, n))
    # by hand: a chain's end is F(start, 0) = start + 1, the steps before it the blend I(start, end, s/h)
    expected, start = [], x0
    while len(expected) < n:
        end = start + 1.0
        expected += [BlendInterpolator()(start, end, torch.full((2,), s / h)) for s in range(1, h)] + [end]
        start = end
    assert len(states) == n
    for got, want in zip(states, expected[:n]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # chains of 4, 4 and 2 steps: one forecaster call each, always at i = 0, from the previous chain's end
    assert [float(i[0]) for _, i in F.calls] == [0.0, 0.0, 0.0]
    torch.testing.assert_close(F.calls[1][0], states[3])
    torch.testing.assert_close(F.calls[2][0], states[7])
    assert len(I.calls) == 3 + 3 + 2 and sampler.passes_per_step == 1.0
    assert ColdSampler(I, F, horizon=h).passes_per_step == pytest.approx((3 * h - 2) / h)
    # its first step is the cold sampler's (both start with I(x_t, F(x_t, 0), 1/h)); later ones are not
    cold = list(ColdSampler(BlendInterpolator(), RecordingForecaster(a=1.0), horizon=h).rollout(x0, n))
    torch.testing.assert_close(cold[0], states[0], rtol=0, atol=0)
    assert not torch.allclose(cold[h - 1], states[h - 1])


class DropoutBlend(nn.Module):
    """A blend whose interpolation weight passes through a real nn.Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, i: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        w = i[:, None, None, None]
        return x0 + self.dropout(w * (x1 - x0))


def test_dropout_off_is_deterministic_and_on_is_stochastic() -> None:
    x = torch.randn(2, 2, 6, 6)
    F = lambda state, i, time=None: state + 1.0
    interpolator = DropoutBlend().eval()
    torch.manual_seed(1)
    first = torch.stack(list(ColdSampler(interpolator, F, horizon=4).rollout(x, 6)))
    second = torch.stack(list(ColdSampler(interpolator, F, horizon=4).rollout(x, 6)))
    assert torch.equal(first, second)
    interpolator.train()  # dropout on
    torch.manual_seed(1)
    a = torch.stack(list(ColdSampler(interpolator, F, horizon=4).rollout(x, 6)))
    b = torch.stack(list(ColdSampler(interpolator, F, horizon=4).rollout(x, 6)))
    assert not torch.equal(a, b)
    torch.manual_seed(1)
    assert torch.equal(torch.stack(list(ColdSampler(interpolator, F, horizon=4).rollout(x, 6))), a)


def test_jump_sampled_chain_ends_do_not_depend_on_the_interpolators_dropout() -> None:
    x = torch.randn(2, 2, 6, 6)
    F = lambda state, i, time=None: state + 1.0
    interpolator = DropoutBlend().train()  # dropout on
    a = torch.stack(list(ColdSampler(interpolator, F, horizon=3, refine=False).rollout(x, 9)))
    b = torch.stack(list(ColdSampler(interpolator, F, horizon=3, refine=False).rollout(x, 9)))
    assert not torch.equal(a, b)  # the steps inside a chain are sampled ...
    ends = [x + 1]  # chain ends by hand, each the jump F(x) = x + 1 of the one before
    for _ in range(2):
        ends.append(ends[-1] + 1)
    torch.testing.assert_close(a[2::3], torch.stack(ends), rtol=0, atol=0)  # ... its ends are the jumps
    torch.testing.assert_close(b[2::3], a[2::3], rtol=0, atol=0)


def test_real_networks_sample_stochastically_only_with_mc_dropout() -> None:
    torch.manual_seed(0)
    interpolator = DYffusionInterpolator(NLAT, NLON, 2, horizon=3, drop_rate=0.3, **TINY).eval()
    forecaster = DYffusionForecaster(NLAT, NLON, 2, horizon=3, **TINY).eval()
    x = torch.randn(2, 2, NLAT, NLON)
    with torch.no_grad():
        off = ColdSampler(interpolator, forecaster, mc_dropout=False)
        assert torch.equal(torch.stack(list(off.rollout(x, 4))), torch.stack(list(off.rollout(x, 4))))
        on = ColdSampler(interpolator, forecaster)  # default: MC dropout on, in eval mode
        a, b = torch.stack(list(on.rollout(x, 4))), torch.stack(list(on.rollout(x, 4)))
        assert not torch.allclose(a, b)
        assert torch.isfinite(a).all()


# ---------------------------------------------------------------------- networks and registry


def test_networks_build_from_the_registry_and_run_on_a_small_grid() -> None:
    torch.manual_seed(0)
    hp = {"nlat": NLAT, "nlon": NLON, "in_channels": 3, "out_channels": 3, "n_static": 1, "horizon": 4, **TINY}
    interpolator = build_model("dyffusion_interpolator", **hp)
    forecaster = build_model("dyffusion_forecaster", **hp)
    assert isinstance(interpolator, DYffusionInterpolator) and isinstance(forecaster, DYffusionForecaster)
    assert interpolator.net.in_channels == 6 and interpolator.net.out_channels == 3 and interpolator.net.conditioning
    assert forecaster.net.in_channels == 3 and forecaster.horizon == 4
    interpolator.set_static_fields(torch.randn(1, NLAT, NLON))
    x0, x1 = torch.randn(2, 3, NLAT, NLON), torch.randn(2, 3, NLAT, NLON)
    interpolator.eval()
    assert interpolator(x0, x1, torch.tensor([0.25, 0.5])).shape == (2, 3, NLAT, NLON)
    assert forecaster(x0, 0.5).shape == (2, 3, NLAT, NLON)
    # the time input reaches the output once FiLM is non-zero
    for block in forecaster.net.blocks:
        nn.init.normal_(block.film.weight, std=0.5)
    assert not torch.allclose(forecaster(x0, 0.0), forecaster(x0, 0.5))
    with pytest.raises(ValueError, match="horizon"):
        build_model("dyffusion_forecaster", **{**hp, "horizon": 0})
    with pytest.raises(ValueError, match="always time-conditioned"):
        build_model("dyffusion_interpolator", **{**hp, "conditioning": False})
    with pytest.raises(ValueError, match="horizon"):
        ColdSampler(interpolator, forecaster, horizon=3)
    with pytest.raises(ValueError, match="horizon"):
        ColdSampler(BlendInterpolator(), RecordingForecaster(), horizon=0)


# ---------------------------------------------------------------------- config and checkpoints


def dyffusion_config(root: Path, **dyffusion) -> MyriadConfig:
    data = merged(base_config(root), model={**TINY, "kind": "dyffusion", "dyffusion": dyffusion})
    return config_from_dict(data)


def write_interpolator(config: MyriadConfig, path: Path, channels=tuple(CHANNELS), horizon: int | None = None,
                       kind: str = "dyffusion_interpolator") -> Path:
    """A checkpoint file as the trainer writes one (its fields), for a tiny interpolator."""
    kind_, hparams = config.model.stage_model("interpolator", list(channels), len(config.static), NLAT, NLON)
    if horizon is not None:
        hparams["horizon"] = horizon
    torch.manual_seed(0)
    model = build_model(kind_, **hparams)
    payload = {
        "model": {"kind": kind, "name": config.model.checkpoint_name("interpolator"), "hparams": hparams,
                  "state_dict": model.state_dict()},
        "channels": list(channels),
        "static": list(config.static),
        "grid": {"nlat": NLAT, "nlon": NLON, "name": "equiangular"},
        "time_step_hours": 6,
        "normalisation": Normalisation(tuple(channels), np.zeros(len(channels)), np.ones(len(channels))).to_dict(),
        "seed": 0,
        "progress": {"step": 1, "epoch": 0, "complete": True},
        "config": config.model_dump_json(),
    }
    save_checkpoint(payload, path)
    return path


def test_config_kind_dyffusion_and_bad_horizon(tmp_path: Path) -> None:
    config = dyffusion_config(tmp_path, horizon=3)
    assert config.model.name == "dyffusion" and config.model.checkpoint_name("forecaster") == "dyffusion-forecaster"
    kind, hparams = config.model.stage_model("interpolator", CHANNELS, 1, NLAT, NLON)
    assert kind == "dyffusion_interpolator" and hparams["horizon"] == 3 and hparams["drop_rate"] == 0.1
    assert config.model.stage_model("forecaster", CHANNELS, 1, NLAT, NLON)[1]["drop_rate"] == 0.0
    assert dyffusion_config(tmp_path).model.dyffusion.horizon == 6
    # existing SFNO configs stay valid and unchanged
    sfno = config_from_dict(base_config(tmp_path))
    assert sfno.model.kind == "sfno" and sfno.model.dyffusion is None and sfno.model.checkpoint_name() == "sfno"
    assert sfno.model.stage_model(None, CHANNELS, 1, NLAT, NLON) == ("sfno", sfno.model.hparams(CHANNELS, 1, NLAT, NLON))
    for bad in (0, -2):
        with pytest.raises(MyriadError, match=r"horizon h must be >= 1"):
            dyffusion_config(tmp_path, horizon=bad)
    with pytest.raises(MyriadError, match="needs kind: dyffusion"):
        config_from_dict(merged(base_config(tmp_path), model={"dyffusion": {"horizon": 2}}))
    with pytest.raises(MyriadError, match="interpolator_dropout"):
        config_from_dict(merged(base_config(tmp_path), model={"kind": "dyffusion", "drop_rate": 0.2}))
    with pytest.raises(MyriadError, match="horizon is 1: there is nothing between"):
        check_stage(dyffusion_config(tmp_path, horizon=1), "interpolator")
    assert check_stage(dyffusion_config(tmp_path, horizon=1), "forecaster") is None
    with pytest.raises(MyriadError, match="stages"):
        check_stage(config, "both")
    with pytest.raises(MyriadError, match="kind: dyffusion"):
        check_stage(sfno, "forecaster")


def test_check_interpolator_finds_and_checks_the_checkpoint(tmp_path: Path) -> None:
    config = dyffusion_config(tmp_path, horizon=3)
    with pytest.raises(MyriadError, match=r"does not exist; train it first with `myriad train CONFIG --stage interpolator`"):
        check_interpolator(config)
    with pytest.raises(MyriadError, match="does not exist"):
        check_stage(config, "forecaster")
    # the default place: the same seed's <name>-interpolator directory
    default = seed_directory(config.run_dir, "dyffusion-interpolator", 0)
    default.mkdir(parents=True)
    with pytest.raises(MyriadError, match="no best.pt or last.pt"):
        check_interpolator(config)
    write_interpolator(config, default / "last.pt")
    info = check_interpolator(config)
    assert info.path == default / "last.pt" and info.kind == "dyffusion_interpolator"
    model = load_frozen_interpolator(info.path)
    assert isinstance(model, DYffusionInterpolator) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    # an explicit file with other channels, another horizon, another kind
    other = write_interpolator(config, tmp_path / "other.pt", channels=("t2m", "msl", "v10m"))
    explicit = dyffusion_config(tmp_path, horizon=3, interpolator_checkpoint=str(other))
    with pytest.raises(MyriadError, match=r"other\.pt: was trained with other channels \['t2m', 'msl', 'v10m'\]"):
        check_interpolator(explicit)
    longer = write_interpolator(config, tmp_path / "h4.pt", horizon=4)
    with pytest.raises(MyriadError, match=r"horizon 4 \(config: 3\)"):
        check_stage(dyffusion_config(tmp_path, horizon=3, interpolator_checkpoint=str(longer)), "forecaster")
    wrong = write_interpolator(config, tmp_path / "fc.pt", kind="dyffusion_forecaster")
    with pytest.raises(MyriadError, match="not a DYffusion interpolator"):
        check_interpolator(dyffusion_config(tmp_path, horizon=3, interpolator_checkpoint=str(wrong)))
    missing = dyffusion_config(tmp_path, horizon=3, interpolator_checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(MyriadError, match=r"model.dyffusion.interpolator_checkpoint .*nope.pt: does not exist"):
        check_interpolator(missing)
    # a checkpoint rebuilds through the registry from the file alone
    rebuilt, _ = load_checkpoint(default / "last.pt")
    assert isinstance(rebuilt, DYffusionInterpolator) and rebuilt.horizon == 3


# ---------------------------------------------------------------------- stage batches and losses


def window(batch: int = 4, h: int = 3, channels: int = 3) -> torch.Tensor:
    """Window whose state k is the constant k (+ channel offset): targets identify their step."""
    steps = torch.arange(h + 1, dtype=torch.float32)[None, :, None, None, None]
    offsets = 0.01 * torch.arange(channels, dtype=torch.float32)[None, None, :, None, None]
    return steps + offsets + torch.zeros(batch, h + 1, channels, NLAT, NLON)


def tiny_forecaster_stage(h: int) -> tuple[nn.Module, DYffusionForecaster, SphericalL1]:
    """A frozen tiny interpolator, a tiny forecaster and the L1 loss on the three test channels."""
    frozen = freeze_interpolator(DYffusionInterpolator(NLAT, NLON, 3, horizon=h, **TINY))
    forecaster = DYffusionForecaster(NLAT, NLON, 3, horizon=h, **TINY)
    return frozen, forecaster, SphericalL1(GRID, channel_weight_vector(list(CHANNELS), {}, None, power=1))


def test_interpolator_batch_draws_inner_steps_and_matching_targets() -> None:
    h = 4
    w = window(batch=64, h=h)
    x0, x1, i, target = interpolator_batch(w, torch.Generator().manual_seed(0))
    steps = torch.round(i * h).long()
    assert steps.min() == 1 and steps.max() == h - 1 and len(steps.unique()) == h - 1
    assert torch.equal(x0, w[:, 0]) and torch.equal(x1, w[:, h])
    torch.testing.assert_close(target[:, 0, 0, 0], steps.float())
    with pytest.raises(ValueError, match="h >= 2"):
        interpolator_batch(window(h=1))


def test_forecaster_batch_uses_x_t_at_step_zero_and_the_interpolator_otherwise() -> None:
    h = 3
    w = window(batch=32, h=h)
    calls = []

    def interpolator(x0, x1, i, time=None):
        calls.append(torch.is_grad_enabled())
        return x0 + 100.0 + i[:, None, None, None]

    inputs, i, target = forecaster_batch(w, interpolator, torch.Generator().manual_seed(0))
    steps = torch.round(i * h).long()
    assert set(steps.tolist()) == {0, 1, 2}
    assert torch.equal(target, w[:, h])
    zero = steps == 0
    assert torch.equal(inputs[zero], w[zero, 0])
    torch.testing.assert_close(inputs[~zero][:, 0, 0, 0], 100.0 + steps[~zero].float() / h)
    assert calls == [False]  # one call, without gradient
    # h = 1: every input is x_t, no interpolator needed
    inputs, i, target = forecaster_batch(window(batch=5, h=1), None)
    assert torch.equal(i, torch.zeros(5)) and torch.equal(inputs, window(batch=5, h=1)[:, 0])


def test_stage_losses_on_a_tiny_batch_train_only_their_network() -> None:
    torch.manual_seed(0)
    h = 3
    w = torch.randn(2, h + 1, 3, NLAT, NLON)
    interpolator = DYffusionInterpolator(NLAT, NLON, 3, horizon=h, drop_rate=0.2, **TINY)
    forecaster = DYffusionForecaster(NLAT, NLON, 3, horizon=h, **TINY)
    ones = np.ones(3)
    mse = SphericalMSE(GRID, channel_weight_vector(list(CHANNELS), {}, 0.5 * ones))
    l1 = SphericalL1(GRID, channel_weight_vector(list(CHANNELS), {}, 0.5 * ones, power=1))
    assert float(l1.channel_weights[0]) == pytest.approx(2.0) and float(mse.channel_weights[0]) == pytest.approx(4.0)

    loss = interpolator_loss(interpolator.train(), w, mse, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in interpolator.net.encoder.parameters())

    frozen = freeze_interpolator(interpolator)
    frozen.zero_grad(set_to_none=True)
    loss = forecaster_loss(forecaster.train(), w, frozen, l1, torch.Generator().manual_seed(2))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert forecaster.net.encoder.weight.grad is not None
    assert all(p.grad is None for p in frozen.parameters())
    # the frozen interpolator keeps its dropout on: two draws of the same inputs differ
    x0, x1 = w[:, 0], w[:, h]
    with torch.no_grad():
        assert not torch.equal(frozen(x0, x1, 1 / 3), frozen(x0, x1, 1 / 3))
    # L1 by hand: constant error 1 everywhere -> sum of quadrature (1) x weight (2)
    assert float(l1(torch.ones(1, 3, NLAT, NLON), torch.zeros(1, 3, NLAT, NLON))) == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ValueError, match="built for h = 3"):
        forecaster_loss(forecaster, torch.randn(2, 3, 3, NLAT, NLON), frozen, l1)


def test_stage_loss_module_holds_only_the_trained_network() -> None:
    torch.manual_seed(0)
    h = 2
    w = torch.randn(2, h + 1, 3, NLAT, NLON)
    frozen, forecaster, l1 = tiny_forecaster_stage(h)
    stage = StageLoss("forecaster", forecaster, l1, frozen)
    assert {id(p) for p in stage.parameters()} == {id(p) for p in forecaster.parameters()}
    assert all(key.startswith(("network.", "loss.")) for key in stage.state_dict())
    assert stage.interpolator is frozen
    torch.manual_seed(5)  # the frozen interpolator's dropout draws from the global generator
    expected = forecaster_loss(forecaster, w, frozen, l1, torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    torch.testing.assert_close(stage(w, generator=torch.Generator().manual_seed(3)), expected)
    mse = SphericalMSE(GRID, channel_weight_vector(list(CHANNELS), {}))
    assert torch.isfinite(StageLoss("interpolator", DYffusionInterpolator(NLAT, NLON, 3, horizon=h, **TINY), mse)(w))
    with pytest.raises(ValueError, match="no frozen interpolator"):
        StageLoss("interpolator", frozen, mse, frozen)


def test_pushforward_starts_each_sample_from_the_forecasters_own_k_chain_forecast() -> None:
    h, chains, batch = 2, 3, 64
    w = window(batch=batch, h=h * (chains + 1))  # state n is the constant n
    forecaster = RecordingForecaster(a=100.0)  # F(x, 0) = x + 100: k jumps add 100 k
    seconds = torch.full((batch,), 1000.0, dtype=torch.float64)
    grads: list[bool] = []

    def jump(x, i, time=None):
        grads.append(torch.is_grad_enabled())
        return forecaster(x, i, time)

    sub, sub_seconds = pushforward_window(jump, w, chains, 3600.0, torch.Generator().manual_seed(0), seconds)
    assert sub.shape == (batch, h + 1, 3, NLAT, NLON)
    pushes = torch.round(sub[:, 0, 0, 0, 0] / 100.0).long()  # k: the start is x_t + 100 k
    assert set(pushes.tolist()) == set(range(chains + 1))
    torch.testing.assert_close(sub[:, 0, 0, 0, 0], 100.0 * pushes.float())
    # the rest of the sub-window is the truth from t + k h + 1 to t + (k + 1) h, the target last
    for n in range(1, h + 1):
        torch.testing.assert_close(sub[:, n, 0, 0, 0], (pushes * h + n).float())
    torch.testing.assert_close(sub_seconds, 1000.0 + pushes.double() * h * 3600.0)
    # jump j runs on the samples pushed more than j chains, at time t + j h, with i = 0, without gradient
    assert grads == [False] * chains
    for j, ((x, i), time) in enumerate(zip(forecaster.calls, forecaster.times)):
        assert len(x) == int((pushes > j).sum()) and torch.equal(i, torch.zeros(len(x)))
        torch.testing.assert_close(time, torch.full((len(x),), 1000.0 + j * h * 3600.0, dtype=torch.float64))
    assert torch.equal(w[:, 0, 0, 0, 0], torch.zeros(batch))  # the window itself is left as it was
    with pytest.raises(ValueError, match=r"\(K \+ 1\) h \+ 1 states"):
        pushforward_window(jump, window(h=4), 2, 3600.0)


def test_stage_loss_with_pushforward_scores_the_pushed_sub_window() -> None:
    torch.manual_seed(0)
    h, chains = 2, 2
    w = torch.randn(3, h * (chains + 1) + 1, 3, NLAT, NLON)
    frozen, forecaster, l1 = tiny_forecaster_stage(h)
    stage = StageLoss("forecaster", forecaster, l1, frozen, pushforward_chains=chains, step_seconds=3600.0)
    torch.manual_seed(5)
    draws = torch.Generator().manual_seed(3)  # the pushes, then the forecaster batch's steps
    sub, _ = pushforward_window(forecaster, w, chains, 3600.0, draws)
    expected = forecaster_loss(forecaster, sub, frozen, l1, draws)
    torch.manual_seed(5)
    loss = stage(w, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert forecaster.net.encoder.weight.grad is not None
    for bad in ({"pushforward_chains": 1}, {"pushforward_chains": 1, "step_seconds": 3600.0, "stage": "interpolator"}):
        stage_name = bad.pop("stage", "forecaster")
        with pytest.raises(ValueError, match="pushforward is for the forecaster stage"):
            StageLoss(stage_name, forecaster, l1, None, **bad)


def test_forecaster_inputs_can_interpolate_towards_its_own_jump_as_the_sampler_does() -> None:
    h = 3
    w = window(batch=32, h=h)
    forecaster, interpolator = RecordingForecaster(a=7.0, b=0.5), BlendInterpolator(c=0.25)
    inputs, i, target = forecaster_batch(w, interpolator, torch.Generator().manual_seed(0), forecaster=forecaster)
    steps = torch.round(i * h).long()
    inner = steps > 0
    assert torch.equal(target, w[:, h]) and torch.equal(inputs[~inner], w[~inner, 0])
    jump = w[inner, 0] + 7.0  # F(x_t, 0) = x_t + a
    torch.testing.assert_close(inputs[inner], interpolator(w[inner, 0], jump, i[inner]))
    (called, fractions), = forecaster.calls  # one jump, of the interpolated samples only, at i = 0
    assert torch.equal(called, w[inner, 0]) and torch.equal(fractions, torch.zeros(int(inner.sum())))
    # at n = 1 the input is the sampler's first state exactly
    first = steps == 1
    sampler_first = reference_chain(w[first, 0], h, RecordingForecaster(a=7.0, b=0.5), BlendInterpolator(c=0.25))[0]
    torch.testing.assert_close(inputs[first], sampler_first)


def test_stage_loss_interpolates_towards_the_forecast_only_when_asked() -> None:
    torch.manual_seed(0)
    h = 2
    w = torch.randn(3, h + 1, 3, NLAT, NLON)
    frozen, forecaster, l1 = tiny_forecaster_stage(h)
    losses = {}
    for end in ("truth", "forecast"):
        stage = StageLoss("forecaster", forecaster, l1, frozen, interpolation_end=end)
        torch.manual_seed(5)
        losses[end] = stage(w, generator=torch.Generator().manual_seed(3))
        torch.manual_seed(5)
        expected = forecaster_loss(forecaster, w, frozen, l1, torch.Generator().manual_seed(3),
                                   interpolate_to_forecast=end == "forecast")
        torch.testing.assert_close(losses[end], expected)
    assert not torch.equal(losses["truth"], losses["forecast"])
    for stage_name, end in (("interpolator", "forecast"), ("forecaster", "jump")):
        with pytest.raises(ValueError, match="interpolation_end"):
            StageLoss(stage_name, forecaster, l1, None, interpolation_end=end)
