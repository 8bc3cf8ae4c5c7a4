"""Training as real processes: DDP equivalence under torchrun, exact resume after SIGKILL, launcher, CLI, flow.

Every run trains the tiny SFNO of tests/training_fixtures.py on a real store,
one thread per process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from models.registry import build_model
from pipeline.cli import app
from pipeline.config import load_config
from pipeline.errors import MyriadError
from pipeline.training.checkpoint import LAST, read_checkpoint
from pipeline.training.launch import LaunchPlan, plan_training, run_launch, torchrun_command
from tests.analysis_files import CHANNELS
from tests.training_fixtures import build_store, merged, run_module_command, write_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_store(tmp_path_factory.mktemp("ddp-store"))


def config_file(store: dict, tmp_path: Path, name: str, **sections) -> Path:
    model = {"name": name, **sections.pop("model", {})}
    path = tmp_path / f"{name}.yaml"
    write_config(path, merged(store, model=model, **sections))
    return path


def last_of(store: dict, name: str, seed: int = 0) -> dict:
    return read_checkpoint(Path(store["run_dir"]) / "checkpoints" / name / f"seed-{seed}" / LAST)


def run_to_end(command: list[str]) -> None:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_two_gloo_ranks_take_the_same_steps_as_one_process_with_the_whole_batch(store: dict, tmp_path: Path) -> None:
    training = {"batch_size": 4, "max_steps": 6, "rollout_steps": 2, "rollout_start_step": 3, "checkpoint_every": 100,
                "ema_decay": 0.9}
    one = config_file(store, tmp_path, "one-rank", training=training)
    two = config_file(store, tmp_path, "two-ranks", training=training)
    run_to_end(run_module_command(one))
    lines: list[str] = []
    plan = LaunchPlan(0, None, torchrun_command(two, 0, nproc_per_node=2), {"OMP_NUM_THREADS": "1"}, Path())
    run_launch(plan, lines.append)
    assert any("[rank 0/2]" in line and "step 6/6" in line for line in lines)

    single, ddp = last_of(store, "one-rank"), last_of(store, "two-ranks")
    assert (single["world_size"], ddp["world_size"]) == (1, 2) and len(ddp["rng"]) == 2
    assert single["progress"]["step"] == ddp["progress"]["step"] == 6
    for weights in ("model", "training_weights"):  # the average (what forecasts use) and the live weights
        single_weights = single["model"]["state_dict"] if weights == "model" else single[weights]
        ddp_weights = ddp["model"]["state_dict"] if weights == "model" else ddp[weights]
        for name, value in single_weights.items():
            torch.testing.assert_close(ddp_weights[name], value, rtol=1e-5, atol=1e-6, msg=f"{weights} {name}")
    torch.manual_seed(0)
    initial = build_model("sfno", **single["model"]["hparams"]).state_dict()
    change = max((single["training_weights"][k] - v).abs().max().item() for k, v in initial.items() if k != "static_fields")
    assert change > 1e-3  # the six steps moved the weights far beyond the tolerance above


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_resumes_bitwise_identically(store: dict, tmp_path: Path) -> None:
    # 63 steps per epoch: the first checkpoint (step 10) lies well inside the first epoch
    training = {"batch_size": 2, "max_steps": 150, "checkpoint_every": 10, "deterministic": True, "log_every": 1000,
                "rollout_steps": 2, "rollout_start_step": 80, "input_noise": 0.5, "ema_decay": 0.99}
    model = {"drop_rate": 0.1}
    straight = config_file(store, tmp_path, "straight", model=model, training=training)
    killed = config_file(store, tmp_path, "killed", model=model, training=training)
    run_to_end(run_module_command(straight))

    last = Path(store["run_dir"]) / "checkpoints" / "killed" / "seed-0" / LAST
    process = subprocess.Popen(run_module_command(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    interrupted = read_checkpoint(last)["progress"]
    assert 0 < interrupted["step"] < 150 and interrupted["batch_in_epoch"] > 0  # mid-epoch, before the end

    run_to_end(run_module_command(killed))
    reference, resumed = last_of(store, "straight"), last_of(store, "killed")
    assert resumed["progress"]["step"] == reference["progress"]["step"] == 150
    for name, value in reference["model"]["state_dict"].items():  # the weight average
        assert torch.equal(resumed["model"]["state_dict"][name], value), name
    for name, value in reference["training_weights"].items():
        assert torch.equal(resumed["training_weights"][name], value), name
    assert resumed["weight_average"] == reference["weight_average"] == {"decay": 0.99, "updates": 150}
    for key, state in reference["optimizer"]["state"].items():
        for field, value in state.items():
            assert torch.equal(torch.as_tensor(resumed["optimizer"]["state"][key][field]), torch.as_tensor(value))
    assert resumed["metrics"] == reference["metrics"]
    assert torch.equal(resumed["rng"][0]["torch"], reference["rng"][0]["torch"])


@pytest.mark.slow
def test_the_launcher_reports_the_jobs_own_error(store: dict, tmp_path: Path) -> None:
    bad = config_file(store, tmp_path, "bad", channels=[*CHANNELS, "z500"])
    (plan,) = plan_training(load_config(bad), bad, nproc_per_node=1)
    lines: list[str] = []
    with pytest.raises(MyriadError) as caught:
        run_launch(plan, lines.append)
    assert re.fullmatch(r"analysis store .*analysis.zarr: channel\(s\) \['z500'\] are missing .*", str(caught.value))
    assert any("['z500'] are missing" in line for line in lines)


def test_cli_dry_run_prints_the_torchrun_command_lines(store: dict, tmp_path: Path) -> None:
    path = config_file(store, tmp_path, "dry", training={"seeds": [0, 7], "batch_size": 4})
    result = CliRunner().invoke(app, ["train", str(path), "--nproc", "2", "--dry-run", "--set", "training.lr=0.002"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    for line, seed in zip(lines, (0, 7)):
        assert "-m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 --max_restarts=0" in line
        assert line.endswith(f"-m pipeline.training.run {path} --seed {seed} --set training.lr=0.002")
    refused = CliRunner().invoke(app, ["train", str(path), "--nproc", "3", "--dry-run"])
    assert refused.exit_code == 1 and "batch_size (4) must be divisible by --nproc (3)" in refused.output


def test_slurm_script_is_valid_bash_and_launches_the_same_entry_point() -> None:
    script = REPO / "deploy" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    multi_node = torchrun_command("CONFIG", 0, 4, nnodes=2, rdzv_endpoint="head:29500")
    flags = [arg.split("=")[0] for arg in multi_node if arg.startswith("--")]
    for flag in flags:
        if flag not in ("--seed",):
            assert flag in text, flag
    assert "srun" in text and "-m pipeline.training.run" in text and "--seed-index" in text


@pytest.mark.slow
def test_train_flow_trains_every_seed_in_parallel_and_calibrates(store: dict, tmp_path: Path, prefect_api_url: str) -> None:
    from flows.train import train_flow

    path = config_file(store, tmp_path, "flow", training={"seeds": [0, 1], "parallel_seeds": 2, "max_steps": 4})
    outputs = train_flow(str(path), [], 1, None)
    assert sorted(outputs) == ["seed-0", "seed-1"]
    for seed in (0, 1):
        directory = Path(outputs[f"seed-{seed}"])
        assert (directory / "calibration.json").is_file()
        assert last_of(store, "flow", seed)["seed"] == seed
    weights = [last_of(store, "flow", s)["model"]["state_dict"]["encoder.weight"] for s in (0, 1)]
    assert not torch.equal(*weights)
