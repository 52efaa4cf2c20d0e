"""The classes both tasks speak of, and what a label may leave unknown.

A classification label is an index into `LABELS`: one of the four classes, or `TUMOR_UNKNOWN_TYPE`
for a slice known to hold a tumour whose type its source does not say (Br35H). Such a label allows
several classes; the classifier learns it with the partial-label loss (lightning_modules.losses),
which moves probability off "no tumour" without choosing among the tumour types."""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("glioma", "meningioma", "no_tumor", "pituitary")
NO_TUMOR_CLASS = CLASS_NAMES.index("no_tumor")
NO_TUMOR = CLASS_NAMES[NO_TUMOR_CLASS]  # also the class of a healthy segmentation slice
TUMOR = "tumor"  # a tumour slice whose type the source does not say
LABELS = (*CLASS_NAMES, TUMOR)  # every label a slice may carry, in label-index order
TUMOR_UNKNOWN_TYPE = LABELS.index(TUMOR)
FOLDER_TO_CLASS = {
    "glioma": 0,
    "glioma_tumor": 0,
    "meningioma": 1,
    "meningioma_tumor": 1,
    "notumor": 2,
    "no_tumor": 2,
    "pituitary": 3,
    "pituitary_tumor": 3,
    TUMOR: TUMOR_UNKNOWN_TYPE,
}


def allowed_classes() -> np.ndarray:
    """(len(LABELS), len(CLASS_NAMES)) booleans: row `label` marks the classes that label allows."""
    allowed = np.eye(len(LABELS), len(CLASS_NAMES), dtype=bool)
    allowed[TUMOR_UNKNOWN_TYPE] = [name != NO_TUMOR for name in CLASS_NAMES]
    return allowed
