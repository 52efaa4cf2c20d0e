"""The models that ship with the repository (models/), used when a tool is given none."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import UserError

# models/ of the checkout this package runs from (an editable install, or the scripts run from a clone);
# BRAIN_TUMOR_MODELS points elsewhere, e.g. after a non-editable install, which does not carry models/.
BUNDLED_MODELS = Path(os.environ.get("BRAIN_TUMOR_MODELS") or Path(__file__).resolve().parents[1] / "models")


def models_to_use(cls_ckpt: str | None, seg_ckpt: str | None) -> tuple[str | None, str | None]:
    """The models asked for; when none is, the bundled ones (models/classifier.safetensors and
    models/segmenter.safetensors, whichever exist)."""
    if cls_ckpt or seg_ckpt:
        return cls_ckpt, seg_ckpt
    bundled = [BUNDLED_MODELS / f"{name}.safetensors" for name in ("classifier", "segmenter")]
    if not any(path.is_file() for path in bundled):
        raise UserError(
            f"{BUNDLED_MODELS}: no bundled models there (an install that is not a clone does not carry models/); "
            "give a model with --cls_ckpt / --seg_ckpt, or set BRAIN_TUMOR_MODELS to a folder holding them"
        )
    return tuple(str(path) if path.is_file() else None for path in bundled)
