"""Ensemble generator in process: the store it writes, regenerating members and units, reruns, bad input.

Every test runs the real generator on the tiny planet run of
tests/ensemble_fixtures.py (two trained, calibrated SFNO checkpoints); the
shared run's ensemble (2 init times x 2 checkpoints x (control + 2 pairs x 2)
= 10 members in blocks of 4, 3 steps) is generated once per module.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from pipeline.config import load_config
from pipeline.data.channels import channel_attrs
from pipeline.data.store import open_analysis
from pipeline.ensemble.generator import EnsembleRunResult, generate_ensemble, regenerate_member
from pipeline.ensemble.inputs import resolve_checkpoint
from pipeline.ensemble.seeds import BRED_VECTOR, member_seed
from pipeline.errors import MyriadError
from pipeline.training.checkpoint import read_checkpoint, save_checkpoint
from pipeline.training.forecast import Forecaster
from tests.ensemble_fixtures import INIT_TIMES, NLAT, NLON, build_run, ensemble_config

torch.set_num_threads(1)
OUTPUTS = ["z500", "u500", "tp6h"]
DIMS = ("init_time", "member", "lead_time", "latitude", "longitude")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_run(tmp_path_factory.mktemp("ensemble-run"))


@pytest.fixture(scope="module")
def full(run: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EnsembleRunResult]:
    """The whole base ensemble, generated once: (config file, result)."""
    path = ensemble_config(run, tmp_path_factory.mktemp("full") / "full.yaml", name="full")
    return path, generate_ensemble(load_config(path), progress=False)


def open_store(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def test_the_store_opens_with_the_documented_dims_coords_and_attrs(run: dict, full: tuple[Path, EnsembleRunResult]) -> None:
    config_path, result = full
    assert result.store_path == Path(run["run_dir"]) / "ensembles" / "full.zarr"
    assert (len(result.units_written), result.units_skipped, result.member_steps) == (6, 0, 2 * 10 * 3)
    ds = open_store(result.store_path)
    assert set(ds.data_vars) == {*OUTPUTS, "unit_complete"}
    assert xr.open_zarr(result.store_path, consolidated=True).sizes == ds.sizes  # consolidated once complete
    for name in OUTPUTS:
        assert ds[name].dims == DIMS and ds[name].shape == (2, 10, 4, NLAT, NLON) and ds[name].dtype == np.float32
        assert ds[name].encoding["chunks"] == (1, 4, 1, NLAT, NLON)
        assert ds[name].attrs["units"] == channel_attrs(name)["units"]
        assert np.isfinite(ds[name].values).all()
    init = np.array(INIT_TIMES, dtype="datetime64[ns]")
    assert np.array_equal(ds["init_time"].values, init)
    assert np.array_equal(ds["lead_time"].values, np.arange(4) * np.timedelta64(6, "h").astype("timedelta64[ns]"))
    assert ds["valid_time"].dims == ("init_time", "lead_time")
    assert np.array_equal(ds["valid_time"].values, init[:, None] + ds["lead_time"].values[None, :])
    assert ds["checkpoint"].values.tolist() == [0] * 5 + [1] * 5
    assert ds["perturbation"].values.tolist() == [0, 1, -1, 1, -1] * 2
    assert ds["pair"].values.tolist() == [-1, 0, 0, 1, 1] * 2
    expected_seed = [[member_seed(t, c, p, BRED_VECTOR) for c, p in zip([0] * 5 + [1] * 5, [-1, 0, 0, 1, 1] * 2)] for t in INIT_TIMES]
    assert ds["seed"].dims == ("init_time", "member") and ds["seed"].values.tolist() == expected_seed
    assert int(ds["unit_complete"].sum()) == 6
    assert ds.attrs["title"] == "Myriad ensemble store" and ds.attrs["channels"] == OUTPUTS
    assert ds.attrs["checkpoint_seeds"] == [0, 1] and ds.attrs["time_step_hours"] == 6
    assert ds["checkpoint"].attrs["paths"] == run["ensemble"]["checkpoints"]

    analysis = open_analysis(Path(run["run_dir"]) / "analysis.zarr", chunks=None)
    x0 = analysis[OUTPUTS].sel(time=init[1])
    for name in OUTPUTS:  # lead 0 of each control is the analysis itself; the perturbed members are not
        for control in (0, 5):
            np.testing.assert_array_equal(ds[name].isel(init_time=1, member=control, lead_time=0).values, x0[name].values)
    assert not np.array_equal(ds["z500"].isel(init_time=1, member=1, lead_time=0).values, x0["z500"].values)
    # the control's first step is the model's step from the analysis at its valid time (the model has forcings)
    model = Forecaster.from_checkpoint(resolve_checkpoint(run["ensemble"]["checkpoints"][0]), bf16=False)
    state = torch.from_numpy(np.stack([analysis[c].sel(time=init[1]).values for c in model.info.channels]))[None]
    output = [model.info.channels.index(name) for name in OUTPUTS]
    stepped = model.step(state, time=init[1])[0, output].numpy()
    stored = np.stack([ds[name].isel(init_time=1, member=0, lead_time=1).values for name in OUTPUTS])
    np.testing.assert_allclose(stored, stepped, rtol=1e-5, atol=1e-3)
    off_by_twelve_hours = model.step(state, time=init[1] + np.timedelta64(12, "h"))[0, output].numpy()
    assert not np.allclose(stored, off_by_twelve_hours, rtol=1e-5, atol=1e-3)
    assert (ds["tp6h"].isel(lead_time=0).values >= 0).all()  # non-negative channel clipped


def test_a_member_regenerated_alone_equals_its_copy_in_the_full_run(full: tuple[Path, EnsembleRunResult]) -> None:
    config_path, result = full
    ds = open_store(result.store_path)
    config = load_config(config_path)
    # member 4 (checkpoint 0, pair 1, minus) shares block 1 with checkpoint 1's members; member 6 is a minus member of block 1
    for member in (4, 6):
        stored = np.stack([ds[name].isel(init_time=1, member=member).values for name in OUTPUTS], axis=1)
        np.testing.assert_array_equal(regenerate_member(config, INIT_TIMES[1], member), stored)
        alone = regenerate_member(config, INIT_TIMES[1], member, same_batch=False)  # a batch of one
        scale = np.abs(stored).max(axis=(0, 2, 3), keepdims=True)
        np.testing.assert_allclose(alone / scale, stored / scale, rtol=0, atol=1e-5)
    with pytest.raises(MyriadError, match=r"member 10: the ensemble has members 0\.\.9"):
        regenerate_member(config, INIT_TIMES[1], 10)


def test_one_init_time_generated_alone_equals_its_part_of_the_full_run(run: dict, full: tuple[Path, EnsembleRunResult], tmp_path: Path) -> None:
    path = ensemble_config(run, tmp_path / "alone.yaml", name="alone")
    result = generate_ensemble(load_config(path), init_times=[INIT_TIMES[1]], progress=False)
    assert result.units_written == [(1, 0), (1, 1), (1, 2)]
    alone, reference = open_store(result.store_path), open_store(full[1].store_path)
    assert alone["unit_complete"].values.tolist() == [[0, 0, 0], [1, 1, 1]]
    for name in OUTPUTS:
        np.testing.assert_array_equal(alone[name].isel(init_time=1).values, reference[name].isel(init_time=1).values)
        assert np.isnan(alone[name].isel(init_time=0).values).all()


def test_two_unit_threads_write_the_same_store_as_one(run: dict, full: tuple[Path, EnsembleRunResult], tmp_path: Path) -> None:
    path = ensemble_config(run, tmp_path / "threads.yaml", name="threads")
    torch.set_num_threads(2)  # a CPU process with 2 threads computes 2 units at a time, one intra-op thread each
    try:
        result = generate_ensemble(load_config(path), progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert result.units_written == sorted(full[1].units_written) and result.member_steps == full[1].member_steps
    threaded, reference = open_store(result.store_path), open_store(full[1].store_path)
    for name in [*OUTPUTS, "unit_complete"]:
        np.testing.assert_array_equal(threaded[name].values, reference[name].values, err_msg=name)


def test_compiled_models_on_two_unit_threads_match_the_eager_store(run: dict, full: tuple[Path, EnsembleRunResult], tmp_path: Path) -> None:
    """``ensemble.compile``: inductor graphs built lazily from two unit threads (dynamo serialises the compiles) give the eager values."""
    path = ensemble_config(run, tmp_path / "compiled.yaml", name="compiled", init_times=INIT_TIMES[:1], compile=True, bf16=False)
    torch.set_num_threads(2)
    try:
        result = generate_ensemble(load_config(path), progress=False)
    finally:
        torch.set_num_threads(1)
    compiled, reference = open_store(result.store_path), open_store(full[1].store_path)
    assert compiled["unit_complete"].values.tolist()[0] == [1, 1, 1]
    for name in OUTPUTS:
        expected = reference[name].isel(init_time=0).values
        np.testing.assert_allclose(compiled[name].isel(init_time=0).values, expected, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(expected).max()), err_msg=name)


def test_a_rerun_skips_complete_units_and_rewrites_a_partial_one(run: dict, tmp_path: Path) -> None:
    path = ensemble_config(run, tmp_path / "rerun.yaml", name="rerun", init_times=INIT_TIMES[:1])
    first = generate_ensemble(load_config(path), progress=False)
    reference = open_store(first.store_path).load()
    group = zarr.open_group(str(first.store_path), mode="r+", zarr_format=3, use_consolidated=False)
    group["unit_complete"][0, 1] = 0  # as if killed inside unit (0, 1) after some leads
    group["z500"][0, 4:8, 2:] = 0.0

    again = generate_ensemble(load_config(path), progress=False)
    assert (again.units_written, again.units_skipped) == ([(0, 1)], 2)
    xr.testing.assert_identical(open_store(first.store_path).load(), reference)
    assert generate_ensemble(load_config(path), progress=False).units_written == []


def crafted_checkpoint(run: dict, directory: Path, **changes: object) -> Path:
    """A copy of seed 0's checkpoint (and calibration) with payload entries replaced."""
    source = Path(run["ensemble"]["checkpoints"][0])
    payload = read_checkpoint(source / "best.pt")
    payload.update(changes)
    save_checkpoint(payload, directory / "best.pt")
    shutil.copy(source / "calibration.json", directory / "calibration.json")
    return directory


def bad_cases(run: dict, tmp: Path) -> list[tuple[dict, str]]:
    seed0, seed1 = run["ensemble"]["checkpoints"]
    store = Path(run["run_dir"]) / "analysis.zarr"
    other_channels = crafted_checkpoint(run, tmp / "channels", channels=["z500", "u500", "v500", "t850"])
    other_grid = crafted_checkpoint(run, tmp / "grid", grid={"nlat": 9, "nlon": 16, "name": "equiangular-9x16"})
    reordered = crafted_checkpoint(run, tmp / "order", channels=["u500", "z500", "v500", "tp6h"])
    twelve_hourly = crafted_checkpoint(run, tmp / "step", time_step_hours=12)
    uncalibrated = tmp / "uncalibrated"
    uncalibrated.mkdir()
    shutil.copy(Path(seed0) / "best.pt", uncalibrated / "best.pt")
    return [
        ({"init_times": ["2000-01-20T00:00"]},
         rf"ensemble.init_times: 2000-01-20T00:00 is not an analysis time of {store} \(record 2000-01-01T00:00 \.\. 2000-01-12T18:00, every 6 h\)"),
        ({"init_times": ["2000-01-01T12:00"]},
         r"ensemble.init_times: 2000-01-01T12:00 needs the 3 breeding analyses from 1999-12-31T18:00 on \(ensemble.perturbation.cycles\)"),
        ({"checkpoints": [seed0, str(Path(seed1).with_name("seed-7"))]}, r"ensemble.checkpoints: .*seed-7 does not exist"),
        ({"checkpoints": [str(other_channels)]}, r"needs channel\(s\) \['t850'\] that the analysis store .* lacks"),
        ({"checkpoints": [str(other_grid)]}, r"is for grid equiangular-9x16 but the analysis store .* is on equiangular-17x32"),
        ({"checkpoints": [seed0, str(reordered)]},
         r"order/best.pt has channels \['u500', 'z500', 'v500', 'tp6h'\] but .*seed-0/best.pt has \['z500', 'u500', 'v500', 'tp6h'\]; "
         r"all checkpoints of an ensemble must share channels, grid and time step"),
        ({"checkpoints": [seed0, str(other_grid)]},
         r"grid/best.pt has grid equiangular-9x16 but .*seed-0/best.pt has equiangular-17x32; all checkpoints of an ensemble"),
        ({"checkpoints": [seed0, str(twelve_hourly)]},
         r"step/best.pt has time step \(hours\) 12 but .*seed-0/best.pt has 6; all checkpoints of an ensemble"),
        ({"checkpoints": [str(uncalibrated)]}, r"calibration .*uncalibrated/calibration.json: does not exist"),
        ({"output_channels": ["z500", "t2m"]}, r"ensemble.output_channels: \['t2m'\] not among the model's channels"),
        ({"perturbation": {"seed_channels": ["msl"]}}, r"ensemble.perturbation.seed_channels: \['msl'\] not among"),
    ]


def forbid_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any breeding or model step fail the test: the checks must come before all compute."""

    def computed(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed before the inputs were refused")

    monkeypatch.setattr("pipeline.ensemble.generator.breed", computed)
    monkeypatch.setattr("pipeline.training.forecast.Forecaster.step_normalised", computed)
    monkeypatch.setattr("pipeline.training.forecast.Forecaster.rollout_normalised", computed)


def test_bad_input_is_refused_before_anything_is_written(
    run: dict, full: tuple[Path, EnsembleRunResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = full[1].store_path
    before = tree_digest(existing)
    forbid_compute(monkeypatch)
    for k, (change, message) in enumerate(bad_cases(run, tmp_path)):
        path = ensemble_config(run, tmp_path / f"bad-{k}.yaml", name=f"bad-{k}", **change)
        with pytest.raises(MyriadError, match=message):
            generate_ensemble(load_config(path), progress=False)
        assert not (Path(run["run_dir"]) / "ensembles" / f"bad-{k}.zarr").exists(), change
        # the same mistake aimed at an existing, complete store leaves it byte for byte as it was
        path = ensemble_config(run, tmp_path / f"bad-{k}-existing.yaml", name="full", **change)
        with pytest.raises(MyriadError, match=message):
            generate_ensemble(load_config(path), progress=False)
    assert tree_digest(existing) == before
    path = ensemble_config(run, tmp_path / "unknown-init.yaml", name="base")
    with pytest.raises(MyriadError, match=r"--init 2000-01-10T06:00:00: not in ensemble.init_times \(2000-01-10T00:00, 2000-01-11T06:00\)"):
        generate_ensemble(load_config(path), init_times=["2000-01-10T06:00"], progress=False)


def test_an_existing_store_of_another_layout_is_refused_and_left_intact(
    run: dict, full: tuple[Path, EnsembleRunResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = full[1].store_path
    before = tree_digest(store)
    forbid_compute(monkeypatch)
    for change in ({"n_steps": 5}, {"n_pairs": 3}, {"output_channels": ["z500"]}):
        path = ensemble_config(run, tmp_path / "other.yaml", name="full", **change)
        with pytest.raises(MyriadError, match=r"ensemble store .*full.zarr: was made for a different plan/config"):
            generate_ensemble(load_config(path), progress=False)
    assert tree_digest(store) == before
