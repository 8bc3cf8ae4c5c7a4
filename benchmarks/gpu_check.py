"""The CUDA paths end to end on one GPU: training, resume, calibration, ensembles and throughput.

Runs Myriad's real entry points as separate processes on the short planet
record of ``configs/gpu-check.yaml`` (ingest it first, on any machine) and
records what each produced:

1. **SFNO** (``configs/gpu-check.yaml``): ``torchrun`` (NCCL, one rank)
   trains seed 0 with bf16 autocast and a weight average for
   ``training.max_minutes``, then resumes it for as long again (the
   checkpoint's CUDA RNG state, optimiser and average restored); the
   calibration of its 48 h RMSE follows each run.
2. **DYffusion** (``configs/gpu-check-dyffusion.yaml``): the interpolator
   stage, then the forecaster stage with the adjusted MSE, pushforward chains
   and a weight average (the frozen interpolator outside DDP).
3. **Ensembles** of both checkpoints on the GPU (bf16 autocast; the
   DYffusion one also compiled with ``ensemble.compile``), opened with
   xarray: member count, finiteness, spread at the last lead.
4. **Throughput**: ``benchmarks/train.py`` (ours against torch-harmonics'
   example SFNO: fp32, bf16, bf16 + ``torch.compile``, model FLOP
   utilisation) and, when time is left, ``benchmarks/ensemble.py``
   (our generator against the one-member-at-a-time loop on the device).

Each step has its own time limit, so one failure does not hide the rest.
For every trained checkpoint it records the steps, steps per second, the
validation RMSE, whether every weight is finite and the torch version that
wrote it. Writes ``OUTDIR/gpu_check.json`` and every step's output to
``OUTDIR/steps.log``.

    python benchmarks/gpu_check.py OUTDIR [--minutes 0.75]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipeline.ensemble.launch import ensemble_command
from pipeline.training.launch import torchrun_command

SFNO_CONFIG = "configs/gpu-check.yaml"
DYFFUSION_CONFIG = "configs/gpu-check-dyffusion.yaml"
RUN_DIR = Path("runs/gpu-check")
INIT_TIME = "2000-03-15T00:00"
"""The init time of both configs' ensembles."""


def run_step(name: str, command: list[str], out: Path, limit_s: float) -> dict:
    """Run ``command``, its output appended to ``out/steps.log``; its exit status and wall time."""
    start = time.perf_counter()
    with open(out / "steps.log", "a") as log:
        log.write(f"\n===== {name}: {' '.join(command)}\n")
        log.flush()
        try:
            rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - start
    print(f"[{name}] rc={rc} in {wall:.0f} s", flush=True)
    return {"rc": rc, "wall_s": round(wall, 1)}


def checkpoint_summary(directory: Path) -> dict:
    """Steps, rate, validation RMSE, finiteness and writer of ``directory/last.pt``."""
    path = directory / "last.pt"
    if not path.exists():
        return {"present": False}
    payload = torch.load(path, map_location="cpu", weights_only=False)
    progress = payload["progress"]
    weights = [v for v in payload["model"]["state_dict"].values() if v.is_floating_point()]
    live = payload.get("training_weights") or {}
    return {
        "present": True,
        "step": progress["step"],
        "elapsed_s": round(progress["elapsed_seconds"], 1),
        "steps_per_s": round(progress["step"] / max(progress["elapsed_seconds"], 1e-9), 2),
        "weights_finite": all(bool(torch.isfinite(w).all()) for w in weights),
        "live_weights_kept": bool(live),
        "weight_average": payload.get("weight_average"),
        "metrics": payload.get("metrics"),
        "torch_version": payload["torch_version"],
        "calibration": (directory / "calibration.json").exists(),
    }


def ensemble_summary(store: Path) -> dict:
    """Members, finiteness and last-lead spread of z500 in an ensemble store."""
    import xarray as xr

    if not store.exists():
        return {"present": False}
    ds = xr.open_zarr(store)
    z500 = ds["z500"].load()
    member_dim = next(d for d in z500.dims if "member" in d)
    lead_dim = next(d for d in z500.dims if "lead" in d or d == "step")
    last = z500.isel({lead_dim: -1})
    return {"present": True, "dims": {k: int(v) for k, v in z500.sizes.items()},
            "finite": bool(torch.isfinite(torch.from_numpy(z500.values)).all()),
            "z500_spread_last_lead": round(float(last.std(member_dim).mean()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--minutes", type=float, default=0.75, help="training.max_minutes of each run")
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds for the whole check")
    args = parser.parse_args()
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    report: dict = {
        "torch": torch.__version__, "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "steps": {},
    }
    minutes = args.minutes
    train_limit = 60 * minutes * 2 + 120
    first, resumed = [f"training.max_minutes={minutes}"], [f"training.max_minutes={2 * minutes}"]
    sfno_dir = RUN_DIR / "checkpoints" / "sfno" / "seed-0"
    steps = report["steps"]

    steps["sfno_train"] = run_step("sfno_train", torchrun_command(SFNO_CONFIG, 0, 1, first), out, train_limit)
    steps["sfno_train"]["checkpoint"] = checkpoint_summary(sfno_dir)
    steps["sfno_resume"] = run_step("sfno_resume", torchrun_command(SFNO_CONFIG, 0, 1, resumed), out, train_limit)
    steps["sfno_resume"]["checkpoint"] = checkpoint_summary(sfno_dir)

    for stage in ("interpolator", "forecaster"):
        name = f"dyffusion_{stage}"
        steps[name] = run_step(name, torchrun_command(DYFFUSION_CONFIG, 0, 1, first, stage=stage), out, train_limit)
        steps[name]["checkpoint"] = checkpoint_summary(RUN_DIR / "checkpoints" / f"dyffusion-{stage}" / "seed-0")

    steps["sfno_ensemble"] = run_step("sfno_ensemble", [*ensemble_command(SFNO_CONFIG, INIT_TIME), "--no-progress"],
                                      out, 180)
    steps["sfno_ensemble"]["store"] = ensemble_summary(RUN_DIR / "ensembles" / "gpu-check.zarr")
    steps["dyffusion_ensemble"] = run_step(
        "dyffusion_ensemble",
        [*ensemble_command(DYFFUSION_CONFIG, INIT_TIME, overrides=["ensemble.compile=true"]), "--no-progress"], out, 240)
    steps["dyffusion_ensemble"]["store"] = ensemble_summary(RUN_DIR / "ensembles" / "gpu-check-dyffusion.zarr")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    left = args.deadline - (time.perf_counter() - begin)
    if left > 60:
        steps["train_benchmark"] = run_step(
            "train_benchmark",
            [sys.executable, "benchmarks/train.py", "--config", SFNO_CONFIG, "--steps", "20", "--repeats", "4",
             "--output", str(out / "train_gpu.json")], out, left - 20)
    left = args.deadline - (time.perf_counter() - begin)
    if left > 60:
        steps["ensemble_benchmark"] = run_step(
            "ensemble_benchmark",
            [sys.executable, "benchmarks/ensemble.py", "--config", SFNO_CONFIG, "--skip-full", "--pairs", "16",
             "--threads", str(os.cpu_count()), "--repeats", "1", "--output", str(out / "ensemble_gpu.json")],
            out, left - 10)
    report["wall_s"] = round(time.perf_counter() - begin, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"{report['device']} (torch {report['torch']}), {report['wall_s']} s")
    for name, step in steps.items():
        found = step.get("checkpoint") or step.get("store") or {}
        brief = {k: found[k] for k in ("step", "steps_per_s", "weights_finite", "dims", "finite",
                                        "z500_spread_last_lead") if k in found}
        print(f"  {name:<20} rc={step['rc']} {step['wall_s']:>6} s {brief}")


if __name__ == "__main__":
    main()
