"""Single-image inference latency of a config's model or a trained one, in PyTorch and in onnxruntime.

Run from the repository root with `python -m`: it imports a script of the root (export.py, app.py).

    python -m scripts.latency --config configs/cls.yaml [--config configs/seg.yaml] [--runs 100] [--threads N]
    python -m scripts.latency --model models/classifier.safetensors --model models/segmenter.safetensors

A config's model is built exactly as train.py builds it (weights do not change the cost, so none
are loaded); a --model (checkpoint, run folder or model file) is loaded as the tools load it. Each
is exported with export.py's code and timed on one preprocessed image of its size: the median of
--runs calls after --warmup calls. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch

# The scripts at the top of the checkout are not installed: import them from there.
from export import export_model
from lightning_modules.cli import BrainTumorCLI
from lightning_modules.trained_model import TrainedModel


def median_ms(call: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def model_from_config(config: str) -> TrainedModel:
    """The config's LightningModule (untrained) with the datamodule's input size and channels."""
    cli = BrainTumorCLI(["--config", config, "--data.root", "unused"])
    data = cli.datamodule.hparams
    return TrainedModel(cli.model.eval(), int(data.image_size), int(data.channels), checkpoint=f"{config} (untrained)")


def measure(model: TrainedModel, name: str, runs: int, warmup: int, threads: int) -> dict:
    image = torch.rand(1, model.channels, model.image_size, model.image_size)
    with torch.inference_mode():
        # A segmenter's own test-time views (`tta`) are part of its cost, as they are of its ONNX graph.
        forward = getattr(model.module, "predict_logits", model.module)
        torch_ms = median_ms(lambda: forward(image), runs, warmup)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_model(model, torch.nn.Identity(), Path(folder) / "model.onnx", {})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        inputs = {"images": image.numpy()}
        onnx_ms = median_ms(lambda: session.run(None, inputs), runs, warmup)
    names = [arguments.get("model") or arguments.get("encoder_name") for arguments in model.module.member_arguments()]
    network = f"{len(names)} x {names[0]}" if len(names) > 1 and len(set(names)) == 1 else " + ".join(names)
    if model.module.hparams.get("tta", "none") != "none":
        network += f", views: {model.module.hparams.tta}"
    return {
        "model": name,
        "network": network,
        "input": f"{model.channels}x{model.image_size}x{model.image_size}",
        "torch_ms": torch_ms,
        "onnx_ms": onnx_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="a train.py config; repeat for several")
    parser.add_argument("--model", action="append", default=[], help="a trained model; repeat for several")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both runtimes")
    args = parser.parse_args()
    if not args.config and not args.model:
        parser.error("give at least one --config or --model")
    torch.set_num_threads(args.threads)
    models = [(model_from_config(config), config) for config in args.config]
    models += [(TrainedModel.load(path, None, torch.device("cpu")), path) for path in args.model]
    rows = [measure(model, name, args.runs, args.warmup, args.threads) for model, name in models]
    print(
        f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}; median of {args.runs} runs after {args.warmup} warm-up, batch 1"
    )
    print("| model | network | input | PyTorch (ms) | onnxruntime (ms) |\n|---|---|---|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['network']} | {row['input']} | {row['torch_ms']:.1f} | {row['onnx_ms']:.1f} |")


if __name__ == "__main__":
    main()
