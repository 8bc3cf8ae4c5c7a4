"""Training throughput: Myriad's trainer against a plain loop around torch-harmonics' example SFNO.

Both train a model of the same size (embedding width, blocks, scale factor,
MLP ratio, normalisation, input and output channels) with AdamW on the same
global batch, in the same process, alternating blocks of steps so that
machine load hits both alike:

- ``myriad``: :meth:`pipeline.training.trainer.Trainer.train_step` on batches
  from its real DataLoader over the run's analysis store (normalised windows,
  area-weighted loss, gradient clipping, LR schedule, divergence checks);
- ``baseline``: ``torch_harmonics.examples.models.SphericalFourierNeuralOperator``
  fed tensors already in memory, plain MSE, ``loss.backward(); opt.step()``.

The ratio is myriad / baseline samples per second (target >= 1.0 on CPU): the
median over repeats of the ratio of back-to-back blocks (the order alternates),
which a shared, busy machine disturbs least; the ratio of the two medians is
recorded too.
On CUDA it also measures bf16 autocast and ``torch.compile`` for both, and
the model FLOP utilisation (matmul/convolution FLOPs counted by
``torch.utils.flop_counter``, FFTs not counted, over the device's dense peak).

    python benchmarks/train.py                       # configs/quickstart.yaml, CPU
    python benchmarks/train.py --config configs/era5-1deg.yaml --steps 20

Needs the run's analysis store and stats.nc (``myriad ingest CONFIG``; the
script ingests the config if they are missing). Prints a table and writes
``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch_harmonics.examples.models import SphericalFourierNeuralOperator

from pipeline.config import MyriadConfig, load_config
from pipeline.data.ingest import ensure_analysis
from pipeline.training.distributed import DistributedContext
from pipeline.training.forecast import autocast_context
from pipeline.training.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0}, "A100": {"bf16": 312.0, "fp32": 19.5}}
"""Dense peak TFLOP/s by device family (bf16 tensor cores; fp32 without TF32)."""

logger = logging.getLogger("benchmarks.train")


def baseline_model(config: MyriadConfig, n_inputs: int) -> torch.nn.Module:
    """torch-harmonics' example SFNO with our model's size."""
    m = config.model
    return SphericalFourierNeuralOperator(
        img_size=(config.grid.nlat, config.grid.nlon),
        scale_factor=m.scale_factor,
        in_chans=n_inputs,
        out_chans=len(config.channels),
        embed_dim=m.embed_dim,
        num_layers=m.num_layers,
        mlp_ratio=m.mlp_ratio,
        drop_rate=m.drop_rate,
        normalization_layer="instance_norm" if m.normalization == "instance" else "none",
        hard_thresholding_fraction=m.hard_thresholding_fraction,
    )


class MyriadRunner:
    """Steps of our trainer, batches from its own loader (cycled over epochs)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._batches = self._forever()

    def _forever(self):
        epoch = 0
        while True:
            self.trainer.sampler.set_epoch(epoch)
            self.trainer.sampler.start_at(0)
            yield from self.trainer.loader
            epoch += 1

    def step(self) -> None:
        self.trainer.train_step(next(self._batches))


class BaselineRunner:
    """A plain training loop on in-memory tensors."""

    def __init__(self, model: torch.nn.Module, batch: int, n_inputs: int, n_outputs: int, shape: tuple[int, int],
                 lr: float, weight_decay: float, device: torch.device, bf16: bool) -> None:
        self.model = model.to(device).train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.x = torch.randn(batch, n_inputs, *shape, device=device)
        self.y = torch.randn(batch, n_outputs, *shape, device=device)
        self.device, self.bf16 = device, bf16

    def step(self) -> None:
        with autocast_context(self.device, self.bf16):
            loss = torch.nn.functional.mse_loss(self.model(self.x).float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rates(runners: dict[str, Callable[[], None]], batch: int, steps: int, repeats: int, warmup: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Samples/s of each runner over ``repeats`` alternating blocks of ``steps`` steps."""
    for step in runners.values():
        for _ in range(warmup):
            step()
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners.items())
    for repeat in range(repeats):
        # A B, B A, A B, ...: a drift in machine load hits both runners alike
        for name, step in order if repeat % 2 == 0 else order[::-1]:
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            rates[name].append(steps * batch / (time.perf_counter() - start))
    return rates


def flops_per_step(step: Callable[[], None]) -> int:
    """Matmul/convolution FLOPs of one training step (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=12, help="timed blocks per runner and variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)

    config = load_config(args.config, [*args.overrides, "model.name=benchmark-train", "training.checkpoint_every=1000000000",
                                        "training.log_every=1000000000", "training.max_minutes=null"])
    ensure_analysis(config)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0") if cuda else torch.device("cpu")
    ctx = DistributedContext(0, 1, 0, device, None)
    batch = config.training.batch_size
    shape = (config.grid.nlat, config.grid.nlon)
    variants = [("fp32", False, False)] + ([("bf16", True, False), ("bf16+compile", True, True)] if cuda else [])

    rows = []
    for label, bf16, compiled in variants:
        trainer = Trainer(config.model_copy(update={"training": config.training.model_copy(update={"bf16": bf16, "compile": compiled})}), 0, ctx)
        n_inputs = trainer.model.encoder.in_channels
        ours = MyriadRunner(trainer)
        base_model = baseline_model(config, n_inputs)
        if compiled:
            base_model = torch.compile(base_model)
        base = BaselineRunner(base_model, batch, n_inputs, len(config.channels), shape, config.training.lr,
                              config.training.weight_decay, device, bf16)
        rates = interleaved_rates({"myriad": ours.step, "baseline": base.step}, batch, args.steps, args.repeats, args.warmup, device)
        row = {
            "variant": label,
            "myriad_samples_per_s": statistics.median(rates["myriad"]),
            "baseline_samples_per_s": statistics.median(rates["baseline"]),
            "myriad_rates": rates["myriad"],
            "baseline_rates": rates["baseline"],
            "myriad_parameters": sum(p.numel() for p in trainer.model.parameters()),
            "baseline_parameters": sum(p.numel() * (2 if p.is_complex() else 1) for p in base.model.parameters()),
        }
        # Paired ratio: each repeat times the two runners back to back, so the median of the
        # per-repeat ratios is robust to load from other processes on a shared machine.
        paired = [a / b for a, b in zip(rates["myriad"], rates["baseline"])]
        row["paired_ratios"] = paired
        row["ratio"] = statistics.median(paired)
        row["ratio_of_medians"] = row["myriad_samples_per_s"] / row["baseline_samples_per_s"]
        if cuda:
            flops = {"myriad": flops_per_step(ours.step), "baseline": flops_per_step(base.step)}
            family = next((k for k in PEAK_TFLOPS if k in torch.cuda.get_device_name(device)), None)
            if family is not None:
                peak = PEAK_TFLOPS[family]["bf16" if bf16 else "fp32"] * 1e12
                for name in ("myriad", "baseline"):
                    row[f"{name}_mfu"] = flops[name] * row[f"{name}_samples_per_s"] / batch / peak
            row["flops_per_step"] = flops
        rows.append(row)

    model = config.model
    result = {
        "benchmark": "training samples/s, Myriad trainer vs plain loop around torch_harmonics.examples SFNO",
        "config": str(args.config),
        "grid": f"{shape[0]}x{shape[1]}",
        "channels": len(config.channels),
        "batch": batch,
        "model": {"embed_dim": model.embed_dim, "num_layers": model.num_layers, "scale_factor": model.scale_factor,
                  "mlp_ratio": model.mlp_ratio, "normalization": model.normalization},
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "threads": threads,
        "torch": str(torch.__version__),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))

    header = f"{'variant':<14} {'myriad samples/s':>17} {'baseline samples/s':>19} {'ratio':>7}"
    if cuda:
        header += f" {'myriad MFU':>11} {'baseline MFU':>13}"
    print(f"SFNO training on {result['grid']} x {result['channels']} channels, batch {batch}, "
          f"embed {model.embed_dim} x {model.num_layers} blocks, {result['device']}, {threads} thread(s)")
    print(header)
    for row in rows:
        line = f"{row['variant']:<14} {row['myriad_samples_per_s']:>17.1f} {row['baseline_samples_per_s']:>19.1f} {row['ratio']:>6.2f}x"
        if cuda and "myriad_mfu" in row:
            line += f" {row['myriad_mfu']:>10.1%} {row['baseline_mfu']:>12.1%}"
        print(line)
    for row in rows:
        print(f"{row['variant']}: ratio = median of {len(row['paired_ratios'])} paired blocks "
              f"(range {min(row['paired_ratios']):.2f}-{max(row['paired_ratios']):.2f}); ratio of medians {row['ratio_of_medians']:.2f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
