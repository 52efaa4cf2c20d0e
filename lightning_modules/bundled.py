"""The models that ship with the repository (models/), used when a tool is given none."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"  # model files that ship with the repository


def models_to_use(cls_ckpt: str | None, seg_ckpt: str | None) -> tuple[str | None, str | None]:
    """The models asked for; when none is, the bundled ones (models/classifier.safetensors and
    models/segmenter.safetensors, whichever exist)."""
    if cls_ckpt or seg_ckpt:
        return cls_ckpt, seg_ckpt
    bundled = [BUNDLED_MODELS / f"{name}.safetensors" for name in ("classifier", "segmenter")]
    return tuple(str(path) if path.is_file() else None for path in bundled)
