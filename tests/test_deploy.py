"""What ships in deploy/: SLURM scripts (syntax and dry-run command lines),
the Prefect deployments file, and the dask-jobqueue defaults."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import dask
import pytest
import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def _dry_run(script: str, *args: str, **env: str) -> str:
    environment = dict(os.environ, MYRIAD_DRY_RUN="1", HEAD_NODE="node001", SLURM_JOB_ID="4242", **env)
    result = subprocess.run(["bash", str(DEPLOY / "slurm" / script), *args], env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("script", sorted(p.name for p in (DEPLOY / "slurm").glob("*.sbatch")))
def test_sbatch_scripts_are_valid_bash(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / script)]).returncode == 0


def test_train_sbatch_dry_run_is_srun_torchrun_with_c10d_rendezvous_on_the_head_node() -> None:
    line = _dry_run("train.sbatch", "configs/era5-1deg.yaml", "--set", "training.lr=0.001",
                    SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="32", SLURM_ARRAY_TASK_ID="3")
    assert line.split() == [
        "srun", "--kill-on-bad-exit=1", "python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=4",
        "--rdzv_backend=c10d", "--rdzv_endpoint=node001:29500", "--rdzv_id=myriad-4242-3", "--max_restarts=0",
        "-m", "pipeline.training.run", "configs/era5-1deg.yaml", "--seed-index", "3", "--set", "training.lr=0.001",
    ]


def test_ensemble_sbatch_dry_run_selects_the_array_tasks_init_time() -> None:
    line = _dry_run("ensemble.sbatch", "configs/era5-hens.yaml", SLURM_NNODES="1", SLURM_GPUS_ON_NODE="4",
                    SLURM_CPUS_PER_TASK="32", SLURM_ARRAY_TASK_ID="2")
    words = line.split()
    assert words[:5] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in words and "--rdzv_endpoint=node001:29502" in words
    tail = words[words.index("pipeline.ensemble.run"):]
    assert tail == ["pipeline.ensemble.run", "configs/era5-hens.yaml", "--init-index", "2", "--no-progress"]


def test_prefect_yaml_declares_the_deployments_with_their_schedules_and_real_flows() -> None:
    spec = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert {"daily-ensemble", "monthly-ingest", "train", "diagnostics", "end-to-end"} <= set(deployments)
    assert deployments["daily-ensemble"]["schedules"] == [{"cron": "30 6 * * *", "timezone": "UTC"}]
    assert deployments["monthly-ingest"]["schedules"] == [{"cron": "0 3 5 * *", "timezone": "UTC"}]
    assert "schedules" not in deployments["train"]
    for deployment in deployments.values():
        assert deployment["work_pool"]["name"] == "myriad"
        module_path, function = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module_path.removesuffix(".py").replace("/", ".")), function)
        assert hasattr(flow, "fn") and callable(flow.fn), deployment["entrypoint"]  # a Prefect flow object
        assert (REPO_ROOT / deployment["parameters"]["config_path"]).is_file()


def test_slurm_cluster_job_script_carries_the_deploy_defaults_and_run_overrides() -> None:
    from dask_jobqueue import SLURMCluster

    defaults = yaml.safe_load((DEPLOY / "dask" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    with dask.config.set({f"jobqueue.slurm.{key}": value for key, value in defaults.items()}):
        cluster = SLURMCluster(account="climate", queue="cpu", walltime="00:30:00")
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "#SBATCH -J myriad-dask" in script
    assert "#SBATCH -n 1" in script and "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=32G" in script
    assert "#SBATCH -t 00:30:00" in script and "#SBATCH -A climate" in script and "#SBATCH -p cpu" in script
    assert "--nworkers 4" in script and "--nthreads 2" in script and "--memory-limit 8.00GiB" in script


def test_containers_install_the_project_without_cpu_pins() -> None:
    for name in ("Dockerfile", "myriad.def"):
        text = (DEPLOY / "container" / name).read_text()
        assert "pip install" in text and "-e ." in text and "constraints-cpu" not in text
        for package in ("pipeline", "models", "flows", "configs"):
            assert package in text
    assert Path(REPO_ROOT / "pyproject.toml").is_file()
