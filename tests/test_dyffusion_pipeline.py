"""Spherical DYffusion through the pipeline: both training stages, stochastic ensembles, time-mean output.

Runs the real trainer, generator and CLI on the tiny planet run of
tests/ensemble_fixtures.py (whose SFNO checkpoints serve as the
deterministic counterpart); DYffusion networks of the same tiny size with
``h = 2`` are trained for a few steps per stage.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch_harmonics import InverseRealVectorSHT, RealVectorSHT

from models.dyffusion import DYffusion
from models.forcings import posix_seconds
from pipeline.config import load_config
from pipeline.diagnostics.run import open_inputs
from pipeline.data.store import open_analysis
from pipeline.ensemble.generator import generate_ensemble, regenerate_member
from pipeline.ensemble.inputs import resolve_checkpoint
from pipeline.ensemble.mass_budget import MassBudgetCorrection
from pipeline.errors import MyriadError
from pipeline.training.calibration import CALIBRATION_FILE
from pipeline.training.checkpoint import (
    LAST,
    load_checkpoint,
    read_checkpoint,
    select_checkpoint,
)
from pipeline.training.distributed import DistributedContext
from pipeline.training.forecast import Forecaster
from pipeline.training.launch import plan_training
from pipeline.training.config import training_objective
from pipeline.training.losses import SphericalAMSE, SphericalMSE
from pipeline.training.trainer import Trainer
from pipeline.training.wind_loss import HelmholtzWindLoss
from tests.conftest import REPO_ROOT, run_myriad
from tests.ensemble_fixtures import SEEDS, build_run
from tests.training_fixtures import merged, write_config

torch.set_num_threads(1)
SINGLE = DistributedContext(0, 1, 0, torch.device("cpu"), None)
DYFFUSION = {"kind": "dyffusion", "name": "dyf", "embed_dim": 16, "num_layers": 2, "scale_factor": 1,
             "dyffusion": {"horizon": 2, "interpolator_dropout": 0.2}}


def dyffusion_run(data: dict) -> dict:
    """The tiny run with the DYffusion model and an ensemble of its forecaster checkpoints."""
    run_dir = Path(data["run_dir"])
    ensemble = {**copy.deepcopy(data["ensemble"]), "name": "dyf",
                "checkpoints": [str(run_dir / "checkpoints" / "dyf-forecaster" / f"seed-{s}") for s in SEEDS],
                "n_pairs": 1, "samples": 2, "member_block": 6}
    return merged(data, model=DYFFUSION, ensemble=ensemble)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny planet run (SFNO checkpoints) plus both DYffusion stages of both seeds."""
    root = tmp_path_factory.mktemp("dyffusion-run")
    data = dyffusion_run(build_run(root))
    config = write_config(root / "dyf.yaml", data)
    for stage in ("interpolator", "forecaster"):
        for seed in SEEDS:
            trainer = Trainer(config, seed, SINGLE, stage)
            trainer.fit()
            if stage == "forecaster":
                trainer.calibrate()
    return data


def write(data: dict, path: Path, **sections: dict) -> Path:
    """Write ``data`` with ``sections`` merged in to ``path``; returns the path."""
    write_config(path, merged(data, **sections))
    return path


# ---------------------------------------------------------------------- training


def test_stages_train_into_their_own_directories_and_the_forecaster_carries_its_interpolator(run: dict) -> None:
    checkpoints = Path(run["run_dir"]) / "checkpoints"
    interpolator_dir, forecaster_dir = checkpoints / "dyf-interpolator" / "seed-0", checkpoints / "dyf-forecaster" / "seed-0"
    assert not (interpolator_dir / CALIBRATION_FILE).exists()  # the interpolator makes no forecasts
    assert (forecaster_dir / CALIBRATION_FILE).is_file()

    interpolator = read_checkpoint(interpolator_dir / LAST)
    assert interpolator["model"]["kind"] == "dyffusion_interpolator" and interpolator["model"]["hparams"]["horizon"] == 2
    assert set(interpolator["metrics"]["rmse"]) == {"model", "linear"}  # scored against linear interpolation in time
    assert interpolator["metrics"]["lead_hours"] == [6]

    forecaster = read_checkpoint(forecaster_dir / LAST)
    assert forecaster["model"]["kind"] == "dyffusion_forecaster"
    assert set(forecaster["metrics"]["rmse"]) == {"model", "persistence", "climatology"}
    frozen = forecaster["interpolator"]
    assert frozen["source"] == str(select_checkpoint(interpolator_dir))
    source = read_checkpoint(Path(frozen["source"]))
    for name, value in source["model"]["state_dict"].items():
        assert torch.equal(frozen["state_dict"][name], value), name

    # the forecaster's file alone rebuilds the whole sampler, and it forecasts
    model, info = load_checkpoint(forecaster_dir / LAST)
    assert isinstance(model, DYffusion) and model.horizon == 2 and model.passes_per_step == 2.0
    assert info.hparams["forcings"] == ["year_progress", "day_progress"]  # the tiny run's model has forcings
    x = torch.randn(3, len(info.channels), info.grid.nlat, info.grid.nlon)
    valid = posix_seconds(np.datetime64("2000-01-10T00:00"), batch=3)
    with torch.no_grad():
        states = list(model.rollout(x, 5, valid, 6 * 3600.0))
        assert torch.equal(model(x, valid), states[0])  # forward is the first emitted step, deterministic in eval mode
        # the second chain (steps 3-4) starts 2 steps later: restarting there by hand gives the same states
        again = list(model.rollout(states[1], 3, valid + 2 * 6 * 3600.0, 6 * 3600.0))
    torch.testing.assert_close(torch.stack(again), torch.stack(states[2:]))
    assert len(states) == 5 and all(torch.isfinite(s).all() for s in states)


def test_forecaster_stage_without_a_fitting_interpolator_is_refused_before_training(run: dict, tmp_path: Path) -> None:
    lonely = load_config(write(run, tmp_path / "lonely.yaml", model={**DYFFUSION, "name": "lonely"}))
    for attempt in (lambda: plan_training(lonely, tmp_path / "lonely.yaml", stage="forecaster"),
                    lambda: Trainer(lonely, 0, SINGLE, "forecaster")):
        with pytest.raises(MyriadError, match=r"lonely-interpolator/seed-0: does not exist; train it first"):
            attempt()
    assert not (Path(run["run_dir"]) / "checkpoints" / "lonely-forecaster").exists()

    other_horizon = {**DYFFUSION, "name": "h3", "dyffusion": {
        "horizon": 3, "interpolator_checkpoint": str(Path(run["run_dir"]) / "checkpoints" / "dyf-interpolator" / "seed-0")}}
    config = load_config(write(run, tmp_path / "h3.yaml", model=other_horizon))
    with pytest.raises(MyriadError, match=r"was trained with other horizon 2 \(config: 3\)"):
        Trainer(config, 0, SINGLE, "forecaster")
    with pytest.raises(MyriadError, match="pass --stage interpolator or --stage forecaster"):
        Trainer(config, 0, SINGLE)
    unforced = {**other_horizon, "name": "unforced", "forcings": [], "dyffusion": {**other_horizon["dyffusion"], "horizon": 2}}
    config = load_config(write(run, tmp_path / "unforced.yaml", model=unforced))
    with pytest.raises(MyriadError, match=r"other forcings \['year_progress', 'day_progress'\] \(config: \[\]\)"):
        Trainer(config, 0, SINGLE, "forecaster")
    sfno = write_config(tmp_path / "sfno.yaml", {**run, "model": {"name": "tiny", "embed_dim": 16, "num_layers": 2}})
    with pytest.raises(MyriadError, match="training stages are for model.kind dyffusion"):
        plan_training(sfno, tmp_path / "sfno.yaml", stage="interpolator")


def test_a_forecaster_trains_on_its_own_pushed_forward_states(run: dict, tmp_path: Path) -> None:
    interpolator = Path(run["run_dir"]) / "checkpoints" / "dyf-interpolator" / "seed-0"
    pushed = {**DYFFUSION, "name": "pushed", "dyffusion": {
        **DYFFUSION["dyffusion"], "pushforward_chains": 2, "interpolator_checkpoint": str(interpolator)}}
    config = load_config(write(run, tmp_path / "pushed.yaml", model=pushed))
    trainer = Trainer(config, 0, SINGLE, "forecaster")
    assert trainer.dataset.max_targets == 6  # (K + 1) h: windows reach the target of the second pushed chain
    assert trainer.objective.pushforward_chains == 2 and trainer.objective.step_seconds == 6 * 3600.0
    windows, _ = next(iter(trainer.loader))
    assert windows.shape[1] == 7
    result = trainer.fit()
    assert result.steps == run["training"]["max_steps"] and np.isfinite(np.asarray(result.skill.rmse["model"])).all()
    # pushforward is how the network was trained, not what it is: its checkpoint loads as any forecaster
    model, info = load_checkpoint(result.directory / LAST)
    assert isinstance(model, DYffusion) and "pushforward_chains" not in info.hparams
    interpolator_trainer = Trainer(config, 0, SINGLE, "interpolator")
    assert interpolator_trainer.dataset.max_targets == 2  # the interpolator stage ignores pushforward
    with pytest.raises(MyriadError, match="pushforward_chains"):
        load_config(write(run, tmp_path / "bad.yaml", model={**pushed, "dyffusion": {"pushforward_chains": -1}}))


def test_a_forecaster_trains_with_the_adjusted_mse_on_inputs_interpolated_towards_its_forecast(run: dict, tmp_path: Path) -> None:
    interpolator = Path(run["run_dir"]) / "checkpoints" / "dyf-interpolator" / "seed-0"
    adjusted = {**DYFFUSION, "name": "adjusted", "scale_factor": 2, "dyffusion": {
        **DYFFUSION["dyffusion"], "forecaster_loss": "amse", "interpolator_checkpoint": str(interpolator),
        "interpolation_end": "forecast"}}
    # on the data grid (scale_factor 1) the increments reach degrees the loss does not score
    full = load_config(write(run, tmp_path / "full.yaml", model={**adjusted, "scale_factor": 1}))
    with pytest.raises(MyriadError, match=r"forecaster_loss amse scores the spherical harmonic degrees below \d+"):
        Trainer(full, 0, SINGLE, "forecaster")
    config = load_config(write(run, tmp_path / "adjusted.yaml", model=adjusted))
    trainer = Trainer(config, 0, SINGLE, "forecaster")
    assert isinstance(trainer.objective.loss, SphericalAMSE) and trainer.objective.interpolation_end == "forecast"
    assert Trainer(config, 0, SINGLE, "interpolator").objective.interpolation_end == "truth"  # a forecaster setting
    result = trainer.fit()
    assert result.steps == run["training"]["max_steps"] and np.isfinite(np.asarray(result.skill.rmse["model"])).all()
    assert training_objective(json.loads(read_checkpoint(result.directory / LAST)["config"]), "forecaster")[
        "interpolation_end"] == "forecast"
    with pytest.raises(MyriadError, match="forecaster_loss"):
        load_config(write(run, tmp_path / "bad.yaml", model={**adjusted, "dyffusion": {"forecaster_loss": "l2"}}))


def test_both_stages_score_the_wind_as_its_rotational_and_divergent_parts(run: dict, tmp_path: Path) -> None:
    interpolator = Path(run["run_dir"]) / "checkpoints" / "dyf-interpolator" / "seed-0"
    helmholtz = {**DYFFUSION, "name": "helmholtz", "scale_factor": 2, "dyffusion": {
        **DYFFUSION["dyffusion"], "forecaster_loss": "amse", "interpolator_checkpoint": str(interpolator)}}
    config = load_config(write(run, tmp_path / "helmholtz.yaml", model=helmholtz,
                               training={**run["training"], "wind_loss": "helmholtz", "climatology_samples": 64}))
    assert isinstance(Trainer(config, 0, SINGLE, "interpolator").objective.loss.loss, SphericalMSE)
    trainer = Trainer(config, 0, SINGLE, "forecaster")
    loss = trainer.objective.loss
    assert isinstance(loss, HelmholtzWindLoss) and isinstance(loss.loss, SphericalAMSE)
    # each scale is its part's RMS 6-hour change, here from the parts' winds on the grid
    grid, frames = trainer.data.grid, trainer.train_frames
    u, v = run["channels"].index("u500"), run["channels"].index("v500")
    lmax = (grid.nlat + 1) // 2
    vsht = RealVectorSHT(grid.nlat, grid.nlon, lmax=lmax, mmax=lmax, grid="equiangular").double()
    ivsht = InverseRealVectorSHT(grid.nlat, grid.nlon, lmax=lmax, mmax=lmax, grid="equiangular").double()
    wind = trainer.data.normalisation.denormalise(frames.read(np.arange(len(frames))).double())[:, [u, v]]
    coefficients = vsht(torch.stack([-wind[:, 1], wind[:, 0]], dim=1))
    quadrature = torch.as_tensor(grid.quadrature_weights())
    expected, spread = [], []
    for kept in (1, 0):  # toroidal (rotational), spheroidal (divergent)
        part = ivsht(coefficients * (torch.arange(2) == kept)[:, None, None])
        change = (part[1:] - part[:-1]).square().sum(dim=1)
        expected.append(float((change * quadrature).sum(dim=(-2, -1)).mean().sqrt()))
        anomaly = (part - part.mean(dim=0)).square().sum(dim=1)
        spread.append(float((anomaly * quadrature).sum(dim=(-2, -1)).mean().sqrt()))
    assert len(frames) <= config.training.climatology_samples  # the trainer used every frame too
    np.testing.assert_allclose(loss.potentials.scales[0].numpy(), expected, rtol=0.02)
    assert expected[1] < expected[0]  # the divergent wind changes less than the rotational
    # with loss_units: normalised, each part's RMS about its time mean
    normalised = load_config(write(run, tmp_path / "normalised.yaml", model=helmholtz, training={
        **run["training"], "wind_loss": "helmholtz", "climatology_samples": 64, "loss_units": "normalised"}))
    np.testing.assert_allclose(Trainer(normalised, 0, SINGLE, "interpolator").wind_potentials.scales[0].numpy(), spread, rtol=0.02)
    result = trainer.fit()
    assert result.steps == run["training"]["max_steps"] and np.isfinite(np.asarray(result.skill.rmse["model"])).all()
    saved = json.loads(read_checkpoint(result.directory / LAST)["config"])
    assert training_objective(saved, "forecaster")["wind_loss"] == "helmholtz"


def test_both_stages_warm_start_from_the_trained_model_with_an_appended_forcing(run: dict, tmp_path: Path) -> None:
    forcings = [*run["model"].get("forcings", []), "daily_insolation"]  # the trained model's, then the sun
    sunny = {**DYFFUSION, "name": "dyf-sun", "forcings": forcings}
    training = {**run["training"], "max_steps": 2, "init_from": {"model": "dyf", "checkpoint": "last"}}
    config = load_config(write(run, tmp_path / "sun.yaml", model=sunny, training=training))
    Trainer(config, 0, SINGLE, "interpolator").fit()
    forecaster = Trainer(config, 0, SINGLE, "forecaster")  # its interpolator: the warm-started dyf-sun one
    trained, _ = load_checkpoint(Path(run["run_dir"]) / "checkpoints" / "dyf-forecaster" / "seed-0" / LAST)
    x = torch.randn(2, len(run["channels"]), *trained.forecaster.net.static_fields.shape[-2:])
    with torch.no_grad():
        torch.testing.assert_close(forecaster.model.eval()(x, 0.5, time=np.datetime64("2000-12-21T00:00")),
                                   trained.forecaster(x, 0.5, time=np.datetime64("2000-12-21T00:00")))
    result = forecaster.fit()
    model, info = load_checkpoint(result.directory / LAST)
    assert info.hparams["forcings"] == forcings and list(model.interpolator.net.forcings) == forcings
    assert result.steps == 2 and np.isfinite(np.asarray(result.skill.rmse["model"])).all()


def test_both_stages_warm_start_with_wind_vectors_and_their_polar_wind_increments_have_no_zonal_mean(
        run: dict, tmp_path: Path) -> None:
    windy = {**DYFFUSION, "name": "dyf-wind", "wind_vectors": True}
    training = {**run["training"], "max_steps": 2, "init_from": {"model": "dyf", "checkpoint": "last"}}
    config = load_config(write(run, tmp_path / "wind.yaml", model=windy, training=training))
    Trainer(config, 0, SINGLE, "interpolator").fit()
    result = Trainer(config, 0, SINGLE, "forecaster").fit()
    model, info = load_checkpoint(result.directory / LAST)
    u, v = info.channels.index("u500"), info.channels.index("v500")
    assert info.hparams["wind_pairs"] == [[u, v]]
    std = torch.as_tensor(info.normalisation.std, dtype=torch.float32)
    for network in (model.forecaster.net, model.interpolator.net):
        torch.testing.assert_close(network.output_std, std)  # set from the run's statistics, saved with the weights
    x = torch.randn(2, len(info.channels), info.grid.nlat, info.grid.nlon)
    with torch.no_grad():
        wind = (model.forecaster(x, 0.5, time=np.datetime64("2000-12-21T00:00")) - x)[:, [u, v]] * std[[u, v], None, None]  # m s-1
    assert float(wind.abs().max()) > 1e-3
    assert float(wind[:, :, [0, -1]].mean(dim=-1).abs().max()) < 1e-4 * float(wind.abs().max())
    assert result.steps == 2 and np.isfinite(np.asarray(result.skill.rmse["model"])).all()


def test_a_seasonal_forecaster_needs_a_year_of_training_data(run: dict, tmp_path: Path) -> None:
    interpolator = Path(run["run_dir"]) / "checkpoints" / "dyf-interpolator" / "seed-0"
    seasonal = {**DYFFUSION, "name": "dyf-seasons", "dyffusion": {
        **DYFFUSION["dyffusion"], "seasonal_harmonics": 2, "interpolator_checkpoint": str(interpolator)}}
    config = load_config(write(run, tmp_path / "seasons.yaml", model=seasonal))
    assert config.model.stage_model("interpolator", list(run["channels"]), 0, 8, 16)[1].get("seasonal_harmonics") is None
    with pytest.raises(MyriadError, match=r"seasonal_harmonics: a seasonal cycle needs at least a year of training data "
                                          r"\(the training period is 32 times of 6 h\)"):
        Trainer(config, 0, SINGLE, "forecaster")
    with pytest.raises(MyriadError, match="seasonal_harmonics"):
        load_config(write(run, tmp_path / "bad.yaml", model={**seasonal, "dyffusion": {"seasonal_harmonics": -1}}))


@pytest.mark.slow
def test_the_cli_trains_both_stages_in_order_on_two_gloo_ranks(run: dict, tmp_path: Path, cli_env: dict[str, str]) -> None:
    config = write(run, tmp_path / "cli.yaml", model={**DYFFUSION, "name": "cli"},
                   training={"max_steps": 2, "batch_size": 4, "seeds": [0]})
    result = run_myriad(["train", str(config), "--nproc", "2"], cli_env, REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout + result.stderr
    for stage in ("interpolator", "forecaster"):
        payload = read_checkpoint(Path(run["run_dir"]) / "checkpoints" / f"cli-{stage}" / "seed-0" / LAST)
        assert (payload["world_size"], payload["progress"]["step"]) == (2, 2)
    assert lines.index("interpolator-seed-0") < lines.index("forecaster-seed-0")
    dry = run_myriad(["train", str(config), "--stage", "forecaster", "--dry-run"], cli_env, REPO_ROOT)
    assert dry.returncode == 0 and dry.stdout.strip().endswith("--seed 0 --stage forecaster"), dry.stdout + dry.stderr


# ---------------------------------------------------------------------- ensembles


@pytest.fixture(scope="module")
def stochastic(run: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    path = write(run, tmp_path_factory.mktemp("dyf-ensemble") / "ensemble.yaml")
    result = generate_ensemble(load_config(path), progress=False)
    return path, xr.open_zarr(result.store_path, consolidated=False)


def test_each_bred_member_has_its_own_dropout_samples(stochastic: tuple[Path, xr.Dataset]) -> None:
    _, ds = stochastic
    # 2 checkpoints x (control + 1 pair x 2 signs) x 2 samples
    assert ds.sizes["member"] == 12 and int(ds["unit_complete"].sum()) == ds["unit_complete"].size
    assert ds["sample"].values.tolist() == [0, 1] * 6
    assert ds["perturbation"].values.tolist() == [0, 0, 1, 1, -1, -1] * 2
    assert ds.attrs["samples"] == 2
    z = ds["z500"].values  # (init, member, lead, lat, lon)
    assert np.isfinite(z).all()
    for first in range(0, 12, 2):  # the samples of one bred member: same start, different noise
        np.testing.assert_array_equal(z[:, first, 0], z[:, first + 1, 0])
        assert not np.allclose(z[:, first, 1:], z[:, first + 1, 1:])
    spread = z[:, :, 1:].std(axis=1).mean(axis=(0, 2, 3))
    assert (spread > 0).all()


def test_a_stochastic_member_regenerated_alone_equals_its_copy(stochastic: tuple[Path, xr.Dataset]) -> None:
    path, ds = stochastic
    config = load_config(path)
    init = ds["init_time"].values[1]
    for member in (3, 10):  # checkpoint 0 pair 0 sample 1; checkpoint 1 pair 0 (-) sample 0
        stored = np.stack([ds[c].sel(init_time=init, member=member).values for c in config.ensemble.output_channels], axis=1)
        np.testing.assert_array_equal(regenerate_member(config, init, member), stored)
        alone = regenerate_member(config, init, member, same_batch=False)  # its noise does not depend on the batch
        np.testing.assert_allclose(alone, stored, rtol=1e-4, atol=1e-3)


def test_samples_need_a_model_with_dropout(run: dict, tmp_path: Path) -> None:
    sfno = load_config(write(run, tmp_path / "sfno.yaml", ensemble={**run["ensemble"], "name": "sfno-samples",
                                                                      "checkpoints": [str(Path(run["run_dir"]) / "checkpoints" / "tiny" / "seed-0")]}))
    with pytest.raises(MyriadError, match=r"ensemble.samples is 2 but .*tiny/seed-0/best.pt has no Monte Carlo dropout"):
        generate_ensemble(sfno, progress=False)
    assert not (Path(run["run_dir"]) / "ensembles" / "sfno-samples.zarr").exists()


def test_jump_sampled_ensembles_end_each_chain_on_the_forecasters_jump(run: dict, tmp_path: Path) -> None:
    one = {**run["ensemble"], "samples": 1, "n_steps": 4, "init_times": run["ensemble"]["init_times"][:1]}
    cold = xr.open_zarr(generate_ensemble(load_config(write(run, tmp_path / "cold.yaml", ensemble={**one, "name": "cold"})),
                                          progress=False).store_path, consolidated=False)
    config = load_config(write(run, tmp_path / "jump.yaml", ensemble={**one, "name": "jump", "dyffusion_sampler": "jump"}))
    jump = xr.open_zarr(generate_ensemble(config, progress=False).store_path, consolidated=False)
    channels = config.ensemble.output_channels
    z_cold, z_jump = (np.stack([ds[c].values[0] for c in channels], axis=2) for ds in (cold, jump))  # (member, lead, C, ...)
    assert np.isfinite(z_jump).all()
    # both samplers start a chain with I(x_t, F(x_t, 0), 1/h) and the same member noise; h = 2 steps later they differ
    np.testing.assert_array_equal(z_jump[:, :2], z_cold[:, :2])
    assert not np.allclose(z_jump[:, 2:], z_cold[:, 2:])
    # the control member's chain ends are F(., 0) of the previous end, by hand from the analysis
    forecaster = Forecaster.from_checkpoint(resolve_checkpoint(config.ensemble.checkpoints[0]), bf16=False,
                                            dyffusion_sampler="jump")
    assert forecaster.model.passes_per_step == 1.0
    with pytest.raises(ValueError, match="unknown DYffusion sampler 'hop'"):
        forecaster.model.use_sampler("hop")
    info = forecaster.info
    analysis = open_analysis(config.analysis_path).sel(time=jump["init_time"].values[0])
    state = torch.from_numpy(np.stack([analysis[c].values for c in info.channels]).astype(np.float32))[None]
    shown = [channels.index(c) for c in ("z500", "u500")]  # the stored channels without a floor
    start = posix_seconds(jump["init_time"].values[0], 1)
    with torch.no_grad():
        end = info.normalisation.normalise(state)
        for lead in (2, 4):
            end = forecaster.model.forecaster(end, 0.0, time=start + (lead - 2) * forecaster.step_seconds)
            by_hand = info.normalisation.denormalise(end)[0, [info.channels.index(channels[k]) for k in shown]]
            np.testing.assert_allclose(z_jump[0, lead, shown], by_hand.numpy(), rtol=1e-4, atol=1e-2)
    # a jump-sampled ensemble does not reuse a cold-sampled store, and refuses stochastic samples
    same_store = load_config(write(run, tmp_path / "reuse.yaml", ensemble={**one, "name": "cold", "dyffusion_sampler": "jump"}))
    with pytest.raises(MyriadError, match="was made for a different plan/config"):
        generate_ensemble(same_store, progress=False)
    samples = load_config(write(run, tmp_path / "samples.yaml",
                                ensemble={**one, "name": "jump-samples", "samples": 2, "dyffusion_sampler": "jump"}))
    with pytest.raises(MyriadError, match="ensemble.samples is 2 but dyffusion_sampler is jump"):
        generate_ensemble(samples, progress=False)
    assert not (Path(run["run_dir"]) / "ensembles" / "jump-samples.zarr").exists()


# ---------------------------------------------------------------------- time-mean output


def test_long_runs_store_window_means_of_the_steps(run: dict, tmp_path: Path) -> None:
    every = {**run["ensemble"], "name": "every-step", "n_steps": 8, "init_times": run["ensemble"]["init_times"][:1]}
    steps = xr.open_zarr(generate_ensemble(load_config(write(run, tmp_path / "every.yaml", ensemble=every)),
                                           progress=False).store_path, consolidated=False)
    means_config = load_config(write(run, tmp_path / "means.yaml",
                                     ensemble={**every, "name": "daily", "time_mean_hours": 24}))
    result = generate_ensemble(means_config, progress=False)
    assert result.member_steps == 12 * 8  # every model step is still computed
    means = xr.open_zarr(result.store_path, consolidated=False)
    assert means["lead_time"].values.astype("timedelta64[h]").astype(int).tolist() == [0, 24, 48]
    assert means.attrs["time_mean_hours"] == 24 and "mean" in means.attrs["cell_methods"]
    z = steps["z500"].values
    np.testing.assert_array_equal(means["z500"].values[:, :, 0], z[:, :, 0])  # lead 0 stays the initial state
    np.testing.assert_allclose(means["z500"].values[:, :, 1], z[:, :, 1:5].mean(axis=2), rtol=1e-6, atol=1e-2)
    np.testing.assert_allclose(means["z500"].values[:, :, 2], z[:, :, 5:9].mean(axis=2), rtol=1e-6, atol=1e-2)
    with pytest.raises(MyriadError, match="daily.zarr holds 24-hour window means .*cannot be scored"):
        open_inputs(means_config)

    for window, message in ((9, "not a multiple of the model's 6 h time step"), (36, "do not divide the forecast")):
        bad = load_config(write(run, tmp_path / f"bad{window}.yaml",
                                ensemble={**every, "name": f"bad{window}", "time_mean_hours": window}))
        with pytest.raises(MyriadError, match=f"ensemble.time_mean_hours: {window} h .*{message}"):
            generate_ensemble(bad, progress=False)


# ---------------------------------------------------------------------- the planet's mass budget


def stored_budget_residual(store: xr.Dataset, correction: MassBudgetCorrection) -> float:
    """RMS over members, steps and latitudes of the budget's miss (m/s) in the stored z500 and v500 of init 0."""
    seconds = posix_seconds(store["init_time"].values[0] + store["lead_time"].values, store.sizes["lead_time"]).numpy()
    z, v = store["z500"].values[0].astype(np.float64), store["v500"].values[0].astype(np.float64)  # (member, lead, ...)
    assert np.isfinite(z).all() and np.isfinite(v).all()
    return float(np.sqrt(np.mean([correction.residual(z[m, :-1], z[m, 1:], v[m, 1:], seconds[1:]) ** 2
                                  for m in range(z.shape[0])])))


def test_a_budget_corrected_ensemble_closes_the_budget_at_every_stored_step(run: dict, tmp_path: Path) -> None:
    one = {**run["ensemble"], "samples": 1, "n_steps": 6, "init_times": run["ensemble"]["init_times"][:1],
           "output_channels": ["z500", "v500"]}
    sfno = {**one, "checkpoints": [str(Path(run["run_dir"]) / "checkpoints" / "tiny" / "seed-0")]}
    stores = {}
    for name, settings in (("plain", one), ("budget", {**one, "mass_budget_correction": True}),
                           ("sfno-plain", sfno), ("sfno-budget", {**sfno, "mass_budget_correction": True})):
        config = load_config(write(run, tmp_path / f"{name}.yaml", ensemble={**settings, "name": name}))
        stores[name] = xr.open_zarr(generate_ensemble(config, progress=False).store_path, consolidated=False)
    plain, budget = stores["plain"], stores["budget"]
    assert budget.attrs["mass_budget_correction"] == 1 and plain.attrs["mass_budget_correction"] == 0
    info = Forecaster.from_checkpoint(resolve_checkpoint(config.ensemble.checkpoints[0]), bf16=False).info
    correction = MassBudgetCorrection.for_checkpoint(config.source, info)
    assert correction.step_seconds == 6 * 3600.0 and correction.latitudes.tolist() == list(info.grid.latitudes)
    residuals = {name: stored_budget_residual(store, correction) for name, store in stores.items()}
    # stored as float32: the corrected states close it to rounding, the free ones miss it by far more
    assert max(residuals["budget"], residuals["sfno-budget"]) < 1e-3 < 0.1 * min(residuals["plain"], residuals["sfno-plain"]), residuals
    # v500 alone moves; the corrected end of DYffusion's first chain (h = 2) starts the second, and every
    # corrected SFNO step the next
    np.testing.assert_array_equal(budget["z500"].values[:, :, :3], plain["z500"].values[:, :, :3])
    assert not np.array_equal(budget["v500"].values[:, :, 1], plain["v500"].values[:, :, 1])
    assert not np.array_equal(budget["z500"].values[:, :, 3:], plain["z500"].values[:, :, 3:])
    np.testing.assert_array_equal(stores["sfno-budget"]["z500"].values[:, :, :2], stores["sfno-plain"]["z500"].values[:, :, :2])
    assert not np.array_equal(stores["sfno-budget"]["z500"].values[:, :, 2], stores["sfno-plain"]["z500"].values[:, :, 2])
    # a corrected ensemble does not reuse an uncorrected store
    with pytest.raises(MyriadError, match="was made for a different plan/config"):
        generate_ensemble(load_config(write(run, tmp_path / "reuse.yaml", ensemble={
            **one, "name": "plain", "mass_budget_correction": True})), progress=False)


def test_the_mass_budget_correction_is_refused_for_a_source_other_than_the_planet(run: dict, tmp_path: Path) -> None:
    era5 = {**merged(run, ensemble={**run["ensemble"], "name": "era5-budget", "mass_budget_correction": True}),
            "source": {"kind": "arco"}}
    with pytest.raises(MyriadError, match="ensemble.mass_budget_correction: the mass budget is the embedded planet's .*"
                                          "source is arco"):
        generate_ensemble(write_config(tmp_path / "era5.yaml", era5), progress=False)
    assert not (Path(run["run_dir"]) / "ensembles" / "era5-budget.zarr").exists()
