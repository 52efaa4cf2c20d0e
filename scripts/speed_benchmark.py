"""Training speed side by side, in one process: a minimal hand-written PyTorch loop, the same
module trained by Lightning the way train.py does it, and the DataLoader alone.

    python scripts/speed_benchmark.py --config configs/cls.yaml --data.root DATA [--steps 30] [--warmup 5] \\
        [--output speed.json] [any train.py override, e.g. --trainer.precision 32-true]

All three use the config's model, batch size, precision, images and augmentation. The hand loop
runs the module's own `training_step` (so mixup and losses are the same work) with
`optimizer.step()`, the warmup/decay schedule and autocast written out; the Lightning run is
`Trainer.fit` with the config's callbacks and logger, validation off. Each is timed over
`--steps` steps after `--warmup` steps. The training step's FLOPs are counted with
torch.utils.flop_counter (convolutions and matrix products) and set against an estimate of the
machine's peak (printed with its formula; CPU only, or --peak_tflops).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.cli import BrainTumorCLI
from lightning_modules.optim import create_optimizer, create_warmup_decay_schedule

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch, device: torch.device):
    return [item.to(device, non_blocking=True) for item in batch]


def time_loader(loader, warmup: int, steps: int) -> float:
    """Seconds per batch of the DataLoader alone (decoding is cached; augmentation and collation run)."""
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return (time.perf_counter() - start) / steps


def time_hand_loop(
    module: L.LightningModule, loader, precision: str, device: torch.device, total_steps: int, warmup: int, steps: int
) -> tuple[float, float]:
    """Seconds of the first `warmup` steps and per step after them, of a plain loop over the
    module's training_step."""
    hp = module.hparams
    module.log = lambda *args, **kwargs: None  # Lightning's logging is part of what (b) pays for
    module.to(device).setup("fit")  # channels-last, compiled if the config says so, as in training
    module.train()
    optimizer = create_optimizer(module, hp.optimizer, hp.lr, hp.weight_decay)
    schedule = create_warmup_decay_schedule(optimizer, total_steps, hp.warmup_fraction, hp.lr_decay)
    dtype = AUTOCAST_DTYPES.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    batches = iter(loader)
    times = [time.perf_counter()]
    for step in range(warmup + steps):
        batch = to_device(next(batches), device)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = module.training_step(batch, step)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        synchronize(device)
        times.append(time.perf_counter())
    return times[warmup] - times[0], (times[-1] - times[warmup]) / steps


class StepTimer(L.Callback):
    """Wall-clock time when training starts and at the end of every training batch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.times.append(time.perf_counter())


def step_flops(module: L.LightningModule, batch, device: torch.device) -> int:
    """FLOPs of one forward and backward pass of the module on `batch`."""
    module = copy.deepcopy(module).to(device).train()
    images, targets = to_device(batch, device)
    with FlopCounterMode(display=False) as counter:
        module.loss(module(images), targets).backward()
    return counter.get_total_flops()


def cpu_peak_flops(precision: str) -> tuple[float, str]:
    """Peak FLOP/s of the cores torch computes on: threads x clock x FLOPs per cycle and core."""
    threads = torch.get_num_threads()
    try:
        ghz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except OSError:
        lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("cpu MHz")]
        ghz = float(lines[0].split(":")[1]) / 1000
    # torch has no public query of these units (lightning_modules/precision.py says why it uses the same ones)
    if precision == "bf16-mixed" and torch.cpu._is_amx_tile_supported():
        per_cycle, unit = 1024, "AMX bf16 tile multiply: 16x16x32 multiply-adds per 16 cycles"
    elif precision == "bf16-mixed" and torch.cpu._is_avx512_bf16_supported():
        per_cycle, unit = 128, "AVX512-BF16 dot products: 2 units x 32 bf16 pairs x 2"
    elif torch.cpu._is_avx512_supported():
        per_cycle, unit = 64, "AVX-512 fp32 FMA: 2 units x 16 lanes x 2"
    else:
        per_cycle, unit = 32, "AVX2 fp32 FMA: 2 units x 8 lanes x 2"
    peak = threads * ghz * 1e9 * per_cycle
    return peak, f"{threads} threads x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({unit})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="timed steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--peak_tflops", type=float, help="the machine's peak, where the CPU estimate does not apply")
    parser.add_argument("--output", type=Path, help="also write the results here as JSON")
    args, cli_args = parser.parse_known_args()
    total = args.warmup + args.steps
    root = tempfile.mkdtemp(prefix="speed_")
    cli = BrainTumorCLI(
        [
            *cli_args,
            "--trainer.max_steps",
            str(total),
            "--trainer.limit_val_batches",
            "0",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.default_root_dir",
            root,
        ]
    )
    precision, device = str(cli.config.trainer.precision), cli.trainer.strategy.root_device
    datamodule, module = cli.datamodule, cli.model
    datamodule.setup("fit")
    batch_size = datamodule.hparams.batch_size
    hand_module = copy.deepcopy(module)  # same initial weights for both loops

    loader_s = time_loader(datamodule.train_dataloader(), args.warmup, args.steps)

    def hand_loop() -> tuple[float, float]:
        return time_hand_loop(
            hand_module, datamodule.train_dataloader(), precision, device, total, args.warmup, args.steps
        )

    # The hand loop runs before and after Lightning, so that neither side gets the warmer machine.
    hand_warmup_s, hand_before_s = hand_loop()
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(module, datamodule=datamodule)
    lightning_warmup_s = timer.times[args.warmup] - timer.times[0]
    lightning_s = (timer.times[-1] - timer.times[args.warmup]) / args.steps
    hand_after_s = hand_loop()[1]
    hand_s = (hand_before_s + hand_after_s) / 2
    flops = step_flops(hand_module, next(iter(datamodule.train_dataloader())), device)
    if args.peak_tflops:
        peak, peak_how = args.peak_tflops * 1e12, "given with --peak_tflops"
    elif device.type == "cpu":
        peak, peak_how = cpu_peak_flops(precision)
    else:
        peak, peak_how = None, "not estimated for GPUs: pass --peak_tflops"

    results = {
        "config": cli_args,
        "device": str(device),
        "precision": precision,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "dataloader_workers": datamodule.num_workers,
        "seconds_per_step": {"hand_loop": hand_s, "lightning": lightning_s, "dataloader": loader_s},
        "hand_loop_runs": [hand_before_s, hand_after_s],
        "warmup_seconds": {"hand_loop": hand_warmup_s, "lightning": lightning_warmup_s},
        "lightning_vs_hand_loop": hand_s / lightning_s,
        "dataloader_headroom": lightning_s / loader_s,
        "flops_per_step": flops,
        "achieved_tflops": flops / lightning_s / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_how": peak_how,
        "share_of_peak": flops / lightning_s / peak if peak else None,
    }
    print(
        f"{precision} on {device}, batch {batch_size}, {results['threads']} threads, "
        f"{datamodule.num_workers} DataLoader workers; {args.steps} timed steps after {args.warmup}"
    )
    print(f"{'':<22}{'steps/s':>10}{'images/s':>10}")
    for name, seconds in results["seconds_per_step"].items():
        print(f"{name:<22}{1 / seconds:>10.2f}{batch_size / seconds:>10.1f}")
    print(
        f"first {args.warmup} steps (warm-up, compilation): hand loop {hand_warmup_s:.1f} s, "
        f"Lightning {lightning_warmup_s:.1f} s"
    )
    print(
        f"Lightning / hand loop speed: {results['lightning_vs_hand_loop']:.3f}x (target >= 0.95; hand loop "
        f"{hand_before_s:.3f} s/step before Lightning, {hand_after_s:.3f} after)"
    )
    print(f"DataLoader headroom: {results['dataloader_headroom']:.1f}x the step rate (target >= 3)")
    print(
        f"training step: {flops / 1e9:.1f} GFLOP, {results['achieved_tflops'] * 1e3:.1f} GFLOP/s achieved; "
        f"peak {peak / 1e9 if peak else float('nan'):.0f} GFLOP/s = {peak_how}"
        + (f"; {results['share_of_peak']:.1%} of peak" if peak else "")
    )
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
