"""Training stage in process: data windows, sampler, loss, schedule, checkpoints, calibration, bad input.

All tests train on a real analysis store ingested from NetCDF files
(tests/training_fixtures.py); each writes its own ``checkpoints/<name>``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch_harmonics import InverseRealSHT

from models.spectral import harmonic_factors
from pipeline.data.statistics import load_statistics
from pipeline.data.store import open_analysis
from pipeline.errors import MyriadError
from pipeline.grid import Grid
from pipeline.training.averaging import WeightAverage
from pipeline.training.calibration import load_calibration
from pipeline.training.checkpoint import BEST, LAST, load_checkpoint, read_checkpoint, select_checkpoint
from pipeline.training.config import training_objective
from pipeline.training.dataset import WindowBatchSampler, WindowDataset, load_frames, open_training_data, resolve_periods
from pipeline.training.distributed import DistributedContext
from pipeline.training.forecast import Forecaster
from pipeline.training.losses import SphericalAMSE, SphericalMSE, channel_weight_vector
from pipeline.training.optim import cosine_with_warmup
from pipeline.training.polar_loss import PolarEmphasis
from pipeline.training.run import ERROR_PREFIX
from pipeline.training.trainer import Trainer
from tests.analysis_files import CHANNELS, GRID
from tests.training_fixtures import build_store, merged, run_module_command, write_config

torch.set_num_threads(1)
SINGLE = DistributedContext(0, 1, 0, torch.device("cpu"), None)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shared store's base config dict (run_dir holds analysis.zarr and stats.nc)."""
    return build_store(tmp_path_factory.mktemp("training-store"))


def config_for(store: dict, tmp_path: Path, name: str, **sections):
    model = {"name": name, **sections.pop("model", {})}
    return write_config(tmp_path / f"{name}.yaml", merged(store, model=model, **sections))


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- data


def test_windows_hold_store_values_normalised_by_stats(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "windows")
    data = open_training_data(config)
    train, val = resolve_periods(data, config.training)
    assert (len(train), len(val)) == (128, 32)
    frames = load_frames(data, train, config.training, "training")
    dataset = WindowDataset(frames, max_targets=2)
    batch, seconds = dataset[([0, 5, 100], 2)]
    assert batch.shape == (3, 3, len(CHANNELS), GRID.nlat, GRID.nlon)
    analysis = open_analysis(config.analysis_path)
    # each window's start time, in POSIX seconds (the input of a model's forcings)
    starts = analysis["time"].values[train[[0, 5, 100]]]
    assert seconds.dtype == torch.float64
    assert seconds.tolist() == (starts.astype("datetime64[s]").astype(np.int64)).astype(float).tolist()
    stats = load_statistics(config.stats_path)
    for c, name in enumerate(CHANNELS):
        raw = analysis[name].isel(time=[5, 6, 7]).values
        expected = (raw - float(stats["mean"].sel(channel=name))) / float(stats["std"].sel(channel=name))
        np.testing.assert_allclose(batch[1, :, c].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert len(dataset) == 128 - 2


def test_sampler_splits_each_global_batch_across_ranks_and_resumes_mid_epoch() -> None:
    one = WindowBatchSampler(50, 8, rank=0, world_size=1, seed=3, targets_at=lambda step: 1 + (step >= 7))
    ranks = [WindowBatchSampler(50, 4, rank=r, world_size=2, seed=3, targets_at=lambda step: 1) for r in (0, 1)]
    assert one.steps_per_epoch == ranks[0].steps_per_epoch == 6
    for epoch in (0, 1):
        for sampler in (one, *ranks):
            sampler.set_epoch(epoch)
        global_batches = [set(starts) for starts, _ in one]
        split = [[set(starts) for starts, _ in sampler] for sampler in ranks]
        assert [a | b for a, b in zip(*split)] == global_batches
    one.set_epoch(1)
    full = list(one)
    one.start_at(4)
    assert list(one) == full[4:]
    assert [n for _, n in full] == [1, 2, 2, 2, 2, 2]  # global steps 6..11, two targets from step 7
    with pytest.raises(MyriadError, match="fewer than the global batch"):
        WindowBatchSampler(5, 8, 0, 1, 0, lambda step: 1)


def test_loss_is_the_area_weighted_channel_weighted_mean_square() -> None:
    grid = Grid(9, 16)
    loss = SphericalMSE(grid, channel_weight_vector(["a", "b"], {"b": 3.0}))
    target = torch.zeros(2, 2, 9, 16)
    assert loss(target + 2.0, target).item() == pytest.approx(4.0)  # weights 0.5, 1.5: mean 1
    polar_row = target.clone()
    polar_row[:, :, 0] = 1.0
    q = grid.quadrature_weights()
    assert loss.per_channel(polar_row, target)[0, 0].item() == pytest.approx(q[0].sum(), rel=1e-6)
    only_b = target.clone()
    only_b[:, 1] = 1.0
    assert loss(only_b, target).item() == pytest.approx(1.5 / 2)
    with pytest.raises(MyriadError, match="training.channel_weights.*'z500'"):
        channel_weight_vector(["a"], {"z500": 1.0})


def band_limited(coefficients: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Fields of orthonormal SHT coefficients ``(..., L, L)`` (degree, order) on ``grid``."""
    lmax = coefficients.shape[-1]
    return InverseRealSHT(grid.nlat, grid.nlon, lmax=lmax, mmax=lmax, grid="equiangular", norm="ortho")(coefficients)


def test_the_adjusted_mse_scores_a_scale_at_its_true_amplitude_where_mse_damps_it() -> None:
    grid, lmax = Grid(33, 64), 17
    generator = torch.Generator().manual_seed(3)

    def coefficients() -> torch.Tensor:
        """Random (degree, order, re/im) coefficients of mean-free real fields: degree >= order >= 0, order 0 real."""
        parts = torch.view_as_real(torch.randn(2, 2, lmax, lmax, generator=generator, dtype=torch.complex128).tril())
        parts[..., 0, 1] = 0.0
        parts[..., 0, :, :] = 0.0
        return parts

    # a field with the target's power at every degree and none of its phase: per degree, the real vector of
    # (sqrt(c_m) Re, sqrt(c_m) Im) orthogonalised against the target's and rescaled to its length
    target = coefficients()
    weight = harmonic_factors(grid.nlon, lmax).sqrt()
    t, n = target * weight[:, None], coefficients() * weight[:, None]
    t, n = t.flatten(-2), n.flatten(-2)
    n = n - (n * t).sum(-1, keepdim=True) / (t * t).sum(-1, keepdim=True).clamp_min(1e-300) * t
    n = n * (t.norm(dim=-1, keepdim=True) / n.norm(dim=-1, keepdim=True).clamp_min(1e-300))
    unrelated = n.unflatten(-1, (lmax, 2)) / weight[:, None]
    y, z = (band_limited(torch.view_as_complex(c.contiguous()), grid).float() for c in (target, unrelated))

    amse, mse = SphericalAMSE(grid, np.ones(2)), SphericalMSE(grid, np.ones(2))
    power = mse(torch.zeros_like(y), y).item()
    scales = [0.0, 0.5, 1.0, 1.5]
    adjusted = [amse(s * z, y).item() for s in scales]
    squared = [mse(s * z, y).item() for s in scales]
    assert min(squared) == squared[0]  # MSE: damping an unplaceable scale to nothing is best
    assert min(adjusted) == adjusted[2] == pytest.approx(2 * power, rel=1e-3)  # AMSE: its true amplitude is
    assert adjusted[0] == pytest.approx(3 * power, rel=1e-3)
    assert all(a >= s * (1 - 1e-3) for a, s in zip(adjusted, squared))
    shifted = torch.roll(y, 7, dims=-1)  # same spectrum, other phases: AMSE is MSE
    assert amse(shifted, y).item() == pytest.approx(mse(shifted, y).item(), rel=1e-3)
    assert amse(y, y).item() == pytest.approx(0.0, abs=1e-6)
    prediction = torch.zeros_like(y, requires_grad=True)
    amse(prediction, y).backward()
    assert torch.isfinite(prediction.grad).all()
    # scale-free: a field of tiny power is scored as its scaled-up copy (a perfect forecast costs nothing)
    tiny = 1e-4
    assert amse(tiny * y, tiny * y).item() == pytest.approx(0.0, abs=1e-12)
    assert amse(tiny * z, tiny * y).item() / tiny**2 == pytest.approx(adjusted[2], rel=1e-4)
    # under bf16 autocast (the trainer's on GPU) the transform stays in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = amse(0.5 * z + 0.5 * y, y)
    torch.testing.assert_close(autocast, amse(0.5 * z + 0.5 * y, y), rtol=1e-6, atol=0.0)


def test_learning_rate_warms_up_then_decays_on_a_cosine_over_steps_or_time() -> None:
    values = [cosine_with_warmup(s, warmup=4, total=14, floor=0.1) for s in range(15)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0)
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert values[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))
    # a time budget half spent at step 5 of 14 is half way down the cosine
    assert cosine_with_warmup(5, warmup=4, total=14, floor=0.1, time_fraction=0.5) == pytest.approx(0.55)
    assert cosine_with_warmup(5, warmup=4, total=14, floor=0.1, time_fraction=0.0) == pytest.approx(values[5])


def test_the_weight_average_follows_the_warmed_up_exponential_recursion() -> None:
    model = torch.nn.Linear(2, 1)
    model.register_buffer("fixed", torch.tensor([7.0]))
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    average = WeightAverage(model, decay=0.2)
    expected = 1.0
    for n, live in enumerate([3.0, -1.0, 5.0, 2.0], start=1):
        with torch.no_grad():
            model.weight.fill_(live)
        average.update(model)
        beta = min(0.2, (1 + n) / (10 + n))  # 2/11, then the decay itself
        expected = beta * expected + (1 - beta) * live
    assert average.updates == 4
    state = average.state_dict(model)
    torch.testing.assert_close(state["weight"], torch.full((1, 2), expected))
    assert torch.equal(state["fixed"], model.fixed)  # buffers are the live network's
    with pytest.raises(RuntimeError, match="inside"), average.swapped_into(model):
        torch.testing.assert_close(model.weight, state["weight"])
        raise RuntimeError("inside")
    assert torch.equal(model.weight, torch.full((1, 2), 2.0))  # the live weights come back, even after an error
    restored = WeightAverage(model, decay=0.2)
    restored.load(state, average.updates)
    torch.testing.assert_close(restored.state_dict(model)["weight"], state["weight"])
    assert restored.decay_at(restored.updates + 1) == 0.2
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


# --------------------------------------------------------------------------- a training run


def test_training_writes_self_contained_checkpoints_and_calibration(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "full", training={"max_steps": 10, "rollout_steps": 2, "rollout_start_step": 6})
    trainer = Trainer(config, seed=0, ctx=SINGLE)
    result = trainer.fit()
    calibration = trainer.calibrate()
    assert (result.steps, result.stopped_by) == (10, "steps")
    directory = config.run_dir / "checkpoints" / "full" / "seed-0"
    assert result.directory == directory
    assert sorted(p.name for p in directory.iterdir()) == ["best.pt", "calibration.json", "last.pt"]

    payload = read_checkpoint(directory / LAST)
    assert payload["progress"]["step"] == 10 and payload["progress"]["complete"]
    assert payload["channels"] == CHANNELS and payload["static"] == ["lsm"]
    assert payload["grid"] == {"nlat": 9, "nlon": 16, "name": "equiangular-9x16"}
    assert payload["time_step_hours"] == 6 and payload["world_size"] == 1 and len(payload["rng"]) == 1
    stats = load_statistics(config.stats_path)
    np.testing.assert_allclose(payload["normalisation"]["std"], stats["std"].sel(channel=CHANNELS).values)
    assert json.loads(payload["config"])["model"]["name"] == "full"
    skill = payload["metrics"]
    assert skill["lead_hours"] == [6, 24] and set(skill["rmse"]) == {"model", "persistence", "climatology"}

    model, info = load_checkpoint(select_checkpoint(directory))
    assert info.channels == tuple(CHANNELS) and info.grid == GRID and not model.training
    assert torch.equal(model.static_fields, trainer.model.static_fields)

    loaded = load_calibration(directory)
    assert loaded == calibration
    assert loaded.lead_hours == 48 and loaded.checkpoint == BEST and loaded.step == 10
    assert set(loaded.rmse) == set(CHANNELS) and all(v > 0 and math.isfinite(v) for v in loaded.rmse.values())

    again = Trainer(config, seed=0, ctx=SINGLE)
    assert again.fit().stopped_by == "already complete"
    assert again.calibrate() == calibration


def test_with_ema_decay_checkpoints_and_validation_hold_the_averaged_weights(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "averaged", training={"max_steps": 6, "ema_decay": 0.5})
    trainer = Trainer(config, seed=0, ctx=SINGLE)
    trainer.fit()
    payload = read_checkpoint(config.run_dir / "checkpoints" / "averaged" / "seed-0" / LAST)
    assert payload["weight_average"] == {"decay": 0.5, "updates": 6}
    live, averaged = payload["training_weights"], payload["model"]["state_dict"]
    assert all(torch.equal(live[k], v) for k, v in trainer.model.state_dict().items())  # validation swapped them back
    assert torch.equal(averaged["static_fields"], live["static_fields"])
    assert max((averaged[k] - live[k]).abs().max().item() for k in live if k != "static_fields") > 1e-4
    model, _ = load_checkpoint(config.run_dir / "checkpoints" / "averaged" / "seed-0" / LAST)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in averaged.items())  # forecasts use the average
    assert trainer.validate().to_dict() == payload["metrics"]
    assert trainer._score().to_dict() != payload["metrics"]  # the live weights score otherwise

    # switched on for a fine-tune of a run trained without it: the average starts at the resumed weights
    plain = config_for(store, tmp_path, "plain", training={"max_steps": 4})
    Trainer(plain, seed=0, ctx=SINGLE).fit()
    before = read_checkpoint(plain.run_dir / "checkpoints" / "plain" / "seed-0" / LAST)["model"]["state_dict"]
    tuned = config_for(store, tmp_path, "plain", training={"max_steps": 5, "ema_decay": 0.999})
    Trainer(tuned, seed=0, ctx=SINGLE).fit()
    after = read_checkpoint(tuned.run_dir / "checkpoints" / "plain" / "seed-0" / LAST)
    assert after["weight_average"]["updates"] == 1
    # switched off again: the run resumes from the live weights, not the average
    off = config_for(store, tmp_path, "plain", training={"max_steps": 6})
    resumed = Trainer(off, seed=0, ctx=SINGLE)
    assert resumed.average is None
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in after["training_weights"].items())
    beta = 2 / 11  # the first update's warmed-up decay
    for name, value in after["model"]["state_dict"].items():
        if name != "static_fields":
            torch.testing.assert_close(value, beta * before[name] + (1 - beta) * after["training_weights"][name])


def test_a_run_resumed_with_another_training_loss_chooses_best_pt_afresh(
        store: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = config_for(store, tmp_path, "tuned", training={"max_steps": 4})
    Trainer(config, seed=0, ctx=SINGLE).fit()
    directory = config.run_dir / "checkpoints" / "tuned" / "seed-0"
    best_score = read_checkpoint(directory / BEST)["progress"]["best_score"]
    assert math.isfinite(best_score)
    longer = config_for(store, tmp_path, "tuned", training={"max_steps": 6, "lr": 1e-4})  # schedule only
    assert Trainer(longer, seed=0, ctx=SINGLE).progress.best_score == best_score
    noisy = config_for(store, tmp_path, "tuned", training={"max_steps": 6, "input_noise": 0.5})
    with caplog.at_level("INFO", logger="pipeline.training.trainer"):
        tuned = Trainer(noisy, seed=0, ctx=SINGLE)
    assert tuned.progress.best_score == math.inf
    assert "input_noise 0.0 -> 0.5" in caplog.text and "best.pt is chosen again" in caplog.text
    tuned.fit()
    assert read_checkpoint(directory / BEST)["progress"]["step"] == 6  # the fine-tune's own best, worse or not
    # settings an older checkpoint's config lacks take their defaults
    legacy = {"training": {"input_noise": 1.0}, "model": {"dyffusion": {"pushforward_chains": 8}}}
    assert training_objective(legacy, "forecaster") == {
        "input_noise": 1.0, "loss_units": "tendency", "channel_weights": {}, "wind_loss": "components",
        "divergent_wind_weight": 1.0, "polar_weight": 0.0, "polar_latitude": 60.0, "pushforward_chains": 8,
        "forecaster_loss": "l1", "interpolation_end": "truth"}


def test_a_warm_start_appends_forcings_to_a_trained_model_and_computes_its_function_first(
        store: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = config_for(store, tmp_path, "plain", training={"max_steps": 4})
    Trainer(plain, seed=0, ctx=SINGLE).fit()
    trained, _ = load_checkpoint(plain.run_dir / "checkpoints" / "plain" / "seed-0" / LAST)
    sunny = config_for(store, tmp_path, "sunny", model={"forcings": ["daily_insolation"]},
                       training={"max_steps": 2, "init_from": {"model": "plain", "checkpoint": "last"}})
    with caplog.at_level("INFO", logger="pipeline.training.trainer"):
        warm = Trainer(sunny, seed=0, ctx=SINGLE)
    assert "columns for the new forcings ['daily_insolation'] start at zero" in caplog.text
    x = torch.randn(2, len(CHANNELS), *trained.static_fields.shape[-2:])
    with torch.no_grad():
        torch.testing.assert_close(warm.model.eval()(x, time=np.datetime64("2000-06-21T12:00")), trained(x))
    assert warm.progress.step == 0
    warm.fit()
    path = sunny.run_dir / "checkpoints" / "sunny" / "seed-0" / LAST
    assert read_checkpoint(path)["progress"]["step"] == 2
    shutil.rmtree(plain.run_dir / "checkpoints" / "plain")  # a run with its own last.pt resumes; init_from is not read
    assert Trainer(sunny, seed=0, ctx=SINGLE).progress.step == 2

    # a new seed may start from the trained seed 0: same first weights, its own data order and dropout
    reseeded = config_for(store, tmp_path, "sunny-again", model={"forcings": ["daily_insolation"]},
                          training={"max_steps": 2, "init_from": {"model": "sunny", "checkpoint": "last", "seed": 0}})
    again = Trainer(reseeded, seed=3, ctx=SINGLE)
    first = Trainer(sunny, seed=0, ctx=SINGLE)
    for mine, theirs in zip(again.model.state_dict().values(), first.model.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs)
    assert again.directory.name == "seed-3"
    with pytest.raises(MyriadError, match=r"init_from: .*sunny/seed-1/last.pt does not exist .*seed 1"):
        Trainer(config_for(store, tmp_path, "unseeded", model={"forcings": ["daily_insolation"]}, training={
            "max_steps": 2, "init_from": {"model": "sunny", "checkpoint": "last", "seed": 1}}), seed=0, ctx=SINGLE)

    with pytest.raises(MyriadError, match=r"init_from: .*plain/seed-0/best.pt does not exist"):
        Trainer(config_for(store, tmp_path, "orphan", training={"max_steps": 2, "init_from": {"model": "plain"}}),
                seed=0, ctx=SINGLE)
    refused = config_for(store, tmp_path, "wider", model={"embed_dim": 24},
                         training={"max_steps": 2, "init_from": {"model": "sunny", "checkpoint": "last"}})
    with pytest.raises(MyriadError, match=r"its forcings \['daily_insolation'\] are not the first of this config's \[\].*"
                                          r"other model settings: embed_dim 16 \(config: 24\)"):
        Trainer(refused, seed=0, ctx=SINGLE)


def test_a_checkpoint_predicts_in_a_fresh_process_from_its_file_alone(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "fresh", training={"max_steps": 4})
    trainer = Trainer(config, seed=0, ctx=SINGLE)
    trainer.fit()
    path = config.run_dir / "checkpoints" / "fresh" / "seed-0" / LAST
    state = torch.from_numpy(np.stack([open_analysis(config.analysis_path)[c].isel(time=140).values for c in CHANNELS]))[None]
    np.save(tmp_path / "state.npy", state.numpy())
    expected = list(Forecaster.from_checkpoint(path).rollout(state, 3))[-1]
    moved = tmp_path / "elsewhere" / "model.pt"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    script = (
        "import sys, numpy as np, torch\n"
        "from pipeline.training.forecast import Forecaster\n"
        "f = Forecaster.from_checkpoint(sys.argv[1])\n"
        "x = torch.from_numpy(np.load(sys.argv[2]))\n"
        "out = list(f.rollout(x, 3))[-1]\n"
        "np.save(sys.argv[3], out.numpy())\n"
        "print(f.info.channels, f.info.time_step_hours)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(moved), str(tmp_path / "state.npy"), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "('t2m', 'msl', 'u10m') 6" in done.stdout
    predicted = np.load(tmp_path / "out.npy")
    assert predicted.shape == (1, 3, 9, 16) and np.isfinite(predicted).all()
    np.testing.assert_array_equal(predicted, expected.numpy())


def test_a_model_with_forcings_trains_and_forecasts_from_valid_times(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "forced", model={"forcings": ["year_progress", "day_progress"]},
                        training={"max_steps": 4, "rollout_steps": 2, "rollout_start_step": 2})
    Trainer(config, seed=0, ctx=SINGLE).fit()
    path = config.run_dir / "checkpoints" / "forced" / "seed-0" / LAST
    assert read_checkpoint(path)["model"]["hparams"]["forcings"] == ["year_progress", "day_progress"]
    forecaster = Forecaster.from_checkpoint(path)
    analysis = open_analysis(config.analysis_path)
    t0 = analysis["time"].values[140]
    state = torch.from_numpy(np.stack([analysis[c].isel(time=140).values for c in CHANNELS]))[None]
    with pytest.raises(ValueError, match="pass the valid time"):
        forecaster.step(state)
    states = list(forecaster.rollout(state, 3, time=t0))
    x = state
    for k in range(3):  # the rollout advances the valid time by the checkpoint's 6 h step
        x = forecaster.step(x, time=t0 + k * np.timedelta64(6, "h"))
        torch.testing.assert_close(states[k], x)
    half_a_year_later = list(forecaster.rollout(state, 3, time=t0 + np.timedelta64(182, "D")))
    assert not torch.allclose(half_a_year_later[-1], states[-1])


# --------------------------------------------------------------------------- bad input


def test_a_channel_missing_from_the_store_is_named(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "nochannel", channels=[*CHANNELS, "z500"])
    with pytest.raises(MyriadError, match=r"analysis store .*analysis.zarr: channel\(s\) \['z500'\] are missing"):
        Trainer(config, seed=0, ctx=SINGLE)


def test_a_grid_that_does_not_match_the_store_is_refused(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "badgrid", grid={"nlat": 17, "nlon": 32})
    with pytest.raises(MyriadError, match="grid equiangular-9x16 does not match the configured grid equiangular-17x32"):
        Trainer(config, seed=0, ctx=SINGLE)


def test_an_unreadable_stats_file_is_refused(store: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(Path(store["run_dir"]) / "analysis.zarr", run_dir / "analysis.zarr")
    (run_dir / "stats.nc").write_bytes(b"CDF\x01 this is not netCDF")
    config = config_for(store, tmp_path, "badstats", run_dir=str(run_dir))
    with pytest.raises(MyriadError, match=r"stats file .*stats.nc: unreadable"):
        Trainer(config, seed=0, ctx=SINGLE)
    xr.Dataset({"mean": ("channel", [1.0])}, coords={"channel": ["t2m"]}).to_netcdf(run_dir / "stats.nc")
    with pytest.raises(MyriadError, match="stats file .*stats.nc"):
        Trainer(config, seed=0, ctx=SINGLE)


def test_the_training_loss_can_score_the_polar_rows_more_than_their_area(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "polar", training={"max_steps": 2, "polar_weight": 3.0, "polar_latitude": 50.0})
    trainer = Trainer(config, seed=0, ctx=SINGLE)
    loss = trainer.objective.loss
    assert isinstance(loss, PolarEmphasis) and loss.weight == 3.0 and isinstance(loss.base, SphericalMSE)
    rows = loss.polar.quadrature.sum(dim=-1) > 0
    assert rows.tolist() == (np.abs(trainer.data.grid.latitudes) >= 50.0).tolist() and 0 < rows.sum() < len(rows)
    torch.testing.assert_close(loss.polar.channel_weights, loss.base.channel_weights)
    assert not isinstance(trainer.loss, PolarEmphasis)  # validation scores the sphere by area
    result = trainer.fit()
    saved = json.loads(read_checkpoint(result.directory / LAST)["config"])
    assert training_objective(saved, None)["polar_weight"] == 3.0
    for latitude in (0.0, 90.0):
        with pytest.raises(MyriadError, match="polar_latitude"):
            config_for(store, tmp_path, "badpolar", training={"polar_weight": 1.0, "polar_latitude": latitude})
    with pytest.raises(MyriadError, match="polar_weight"):
        config_for(store, tmp_path, "badpolar", training={"polar_weight": -1.0})


def test_a_wind_loss_split_without_a_wind_pair_is_refused(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "nopair", training={"wind_loss": "helmholtz"})  # u10m without v10m
    with pytest.raises(MyriadError, match=r"training.wind_loss: helmholtz scores wind pairs .* have none"):
        Trainer(config, seed=0, ctx=SINGLE)
    with pytest.raises(MyriadError, match="wind_loss"):
        config_for(store, tmp_path, "badsplit", training={"wind_loss": "vorticity"})


def test_a_period_outside_the_store_names_the_key(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "badperiod", training={"val_period": {"start": "2000-02-02T00:00", "end": "2000-03-01T00:00"}})
    with pytest.raises(MyriadError, match="training.val_period: .* is not inside the analysis store"):
        Trainer(config, seed=0, ctx=SINGLE)


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(store: dict, tmp_path: Path) -> None:
    config = config_for(store, tmp_path, "diverge", model={"normalization": "none"},
                        training={"lr": 1e6, "warmup_steps": 0, "grad_clip": None, "checkpoint_every": 1, "max_steps": 50})
    last = config.run_dir / "checkpoints" / "diverge" / "seed-0" / LAST
    with pytest.raises(MyriadError, match=r"training diverged at step \d+ \(seed 0\): .*lower training.lr .*last good checkpoint .*last.pt \(step \d+\) is kept") as caught:
        Trainer(config, seed=0, ctx=SINGLE).fit()
    kept = read_checkpoint(last)
    assert f"(step {kept['progress']['step']}) is kept" in str(caught.value)
    assert kept["progress"]["step"] < 50 and not kept["progress"]["complete"]
    assert all(torch.isfinite(t).all() for t in kept["model"]["state_dict"].values())
    digest = sha1(last)
    load_checkpoint(last)
    with pytest.raises(MyriadError, match="training diverged"):
        Trainer(config, seed=0, ctx=SINGLE).fit()  # resumes from the kept checkpoint and diverges again
    assert sha1(last) == digest


def test_the_entry_point_reports_user_errors_in_one_line(store: dict, tmp_path: Path) -> None:
    config_for(store, tmp_path, "entry", channels=[*CHANNELS, "z500"])
    done = subprocess.run(run_module_command(tmp_path / "entry.yaml"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and "['z500'] are missing" in errors[0]
    assert "Traceback" not in done.stderr


def test_a_corrupt_or_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    torch.save({"format": "myriad-checkpoint"}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(MyriadError, match="truncated.pt: unreadable"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(MyriadError, match="foreign.pt: not a Myriad checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(MyriadError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(MyriadError, match="no best.pt or last.pt"):
        select_checkpoint(tmp_path)
    with pytest.raises(MyriadError, match="calibration .*calibration.json: does not exist"):
        load_calibration(tmp_path)
