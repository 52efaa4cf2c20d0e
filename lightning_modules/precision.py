"""The training precision a machine computes fastest, for configs that leave `trainer.precision` unset.

bf16 autocast pays off only where the hardware computes bf16: CUDA GPUs of compute capability
8.0 and up (Ampere, Hopper, ...) and CPUs with AVX512-BF16 or AMX. Elsewhere it is emulated, and
on an AVX2-only CPU a training step of the default classifier took 12x as long as in fp32 (issue
11). Older tensor-core GPUs (compute capability 7.x: V100, T4) compute fp16 natively, with the
loss scaling Lightning's "16-mixed" adds; older GPUs and other CPUs train in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GPU_ACCELERATORS = ("auto", "gpu", "cuda")


@dataclass(frozen=True)
class Hardware:
    """What the precision choice depends on; `detect()` reads it off this machine."""

    cuda_capability: tuple[int, int] | None  # of the first CUDA device; None without one
    cpu_bf16: bool  # AVX512-BF16 or AMX

    @classmethod
    def detect(cls) -> Hardware:
        capability = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
        # torch has no public query for these (torch.backends.cpu.get_cpu_capability() says AVX512 with or
        # without bf16); these private ones are what its own oneDNN dispatch checks.
        cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return cls(capability, cpu_bf16)


def fastest_precision(accelerator: str, hardware: Hardware) -> tuple[str, str]:
    """Lightning's precision name for training on `accelerator`, and why."""
    if hardware.cuda_capability is not None and str(accelerator) in GPU_ACCELERATORS:
        major, minor = hardware.cuda_capability
        if (major, minor) >= (8, 0):
            return "bf16-mixed", f"the GPU (compute capability {major}.{minor}) computes bf16 natively"
        if major >= 7:
            return "16-mixed", f"the GPU (compute capability {major}.{minor}) computes fp16 but not bf16 natively"
        return "32-true", f"the GPU (compute capability {major}.{minor}) has no tensor cores"
    if hardware.cpu_bf16:
        return "bf16-mixed", "the CPU computes bf16 natively (AVX512-BF16 or AMX)"
    return "32-true", "the CPU has no native bf16 (AVX512-BF16 or AMX), and emulated bf16 is about 12x slower"
