"""Fixtures: tiny generated datasets in both Kaggle layouts, never the real data."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FORMATWARNING = warnings.formatwarning  # run_with_clean_errors sets the scripts' own; each in-process run restores it

SARTAJ_FOLDERS = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
MRI_DATASET_FOLDERS = ("glioma", "meningioma", "notumor", "pituitary")


def synthetic_slice(rng: np.random.Generator, label: int, size: int = 48) -> np.ndarray:
    """Smooth random 'tissue' (so no two images share a perceptual hash) with a bright tumor
    somewhere near the centre whose shape gives the class: a small disc (0), a large disc (1),
    a ring (3); class 2 (no tumor) has none. Shape survives flips, shifts and pooling."""
    tissue = cv2.resize(rng.integers(20, 140, (6, 6)).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    if label != 2:
        centre = tuple(int(c) for c in rng.integers(size * 2 // 5, size * 3 // 5, 2))
        radius, thickness = {0: (size // 10, -1), 1: (size // 5, -1), 3: (size // 5, max(2, size // 16))}[label]
        cv2.circle(tissue, centre, radius, 230, thickness)
    return tissue


def make_classification_dataset(
    root: Path, folders: tuple[str, ...], per_class: int = 8, with_testing: bool = True, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    splits = {"Training": per_class} | ({"Testing": max(2, per_class // 4)} if with_testing else {})
    for split, count in splits.items():
        for label, folder in enumerate(folders):
            target = root / split / folder
            target.mkdir(parents=True)
            for i in range(count):
                image = synthetic_slice(rng, label, size=int(rng.choice([40, 48, 56])))
                if i % 2:  # half the files RGB JPEGs, half grayscale PNGs
                    cv2.imwrite(str(target / f"{split[:2]}{i}.jpg"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
                else:
                    cv2.imwrite(str(target / f"{split[:2]}{i}.png"), image)
    return root


@pytest.fixture
def sartaj_root(tmp_path: Path) -> Path:
    return make_classification_dataset(tmp_path / "sartaj", SARTAJ_FOLDERS)


@pytest.fixture
def mri_dataset_root(tmp_path: Path) -> Path:
    return make_classification_dataset(tmp_path / "mri", MRI_DATASET_FOLDERS, with_testing=False, seed=1)


def pytest_configure(config) -> None:
    # Offline, as the machines that run these tests are: a download fails at once instead of retrying.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def script_env() -> dict[str, str]:
    """The environment the repo's scripts run in when a test starts them as processes: offline, quiet."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def run_process(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts in a new Python process, for tests of the process itself
    (its exit status and stderr, a kill, a signal, several processes)."""
    return subprocess.run(
        [sys.executable, str(REPO / args[0]), *args[1:]],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_SCRIPTS: dict[str, types.ModuleType] = {}


def script_module(script: str) -> types.ModuleType:
    """A script of the repo (train.py, scripts/recalibrate.py, ...) imported as a module, once."""
    if script not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"_script_{Path(script).stem}", REPO / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, from `cwd`, but in this process: its `main`
    under the same error handling as from the command line, with what it prints (stdout; stderr
    with its log lines and warnings) and its exit status."""
    from lightning_modules.cli import run_with_clean_errors

    module = script_module(args[0])
    out, err = io.StringIO(), io.StringIO()
    log_handler = logging.StreamHandler(err)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    returncode = 0
    with (
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        for logger in loggers:
            logger.addHandler(log_handler)
        # As a process shows them: on stderr (pytest would record them instead).
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        try:
            run_with_clean_errors(lambda: sys.exit(module.main(list(args[1:]))))
        except SystemExit as exit_info:
            returncode = exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None)
        except Exception:  # a bug: a process would print its traceback and exit with 1
            err.write(traceback.format_exc())
            returncode = 1
        finally:
            for logger in loggers:
                logger.removeHandler(log_handler)
            warnings.formatwarning = FORMATWARNING
    return subprocess.CompletedProcess(list(args), returncode, out.getvalue(), err.getvalue())


TUMOR_POLYGONS = {  # image index -> polygon (x, y pairs) drawn into the image and annotated
    0: [10, 10, 40, 12, 30, 40],
    1: [20, 20, 50, 20, 50, 44, 20, 44],
    3: [5, 30, 25, 28, 28, 58, 8, 55],
}
CROWD_IMAGE, EMPTY_IMAGE = 2, 4
CROWD_BOX = (30, 8, 56, 30)  # x0, y0, x1, y1 of the RLE "crowd" tumor


def make_coco_split(folder: Path, seed: int = 0, count: int = 6, size: int = 64) -> dict:
    """Images with bright tumors, polygons for most, one RLE (iscrowd) and one with none.

    Categories follow Roboflow's export: a supercategory-only id 0 plus ids 1 and 2."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    coco = {
        "info": {"description": "generated"},
        "categories": [
            {"id": 0, "name": "Tumor", "supercategory": "none"},
            {"id": 1, "name": "0", "supercategory": "Tumor"},
            {"id": 2, "name": "1", "supercategory": "Tumor"},
        ],
        "images": [],
        "annotations": [],
    }
    for index in range(count):
        image = rng.integers(0, 60, (size, size), dtype=np.uint8)
        polygon = TUMOR_POLYGONS.get(index % 5 if index >= 5 else index)
        if index == CROWD_IMAGE:
            x0, y0, x1, y1 = CROWD_BOX
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y1, x0:x1] = 1
            image[mask > 0] = 230
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": index,
                    "category_id": 2,
                    "segmentation": rle,
                    "iscrowd": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                }
            )
        elif polygon is not None:
            cv2.fillPoly(image, [np.array(polygon).reshape(-1, 2)], 230)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": index,
                    "category_id": 1,
                    "segmentation": [polygon],
                    "iscrowd": 0,
                    "bbox": [0, 0, 1, 1],
                    "area": 1,
                }
            )
        name = f"{index}_jpg.rf.{index:04d}.jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        coco["images"].append({"id": index, "file_name": name, "height": size, "width": size})
    (folder / "_annotations.coco.json").write_text(json.dumps(coco))
    return coco


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "seg"
    make_coco_split(root / "train", seed=0, count=8)
    make_coco_split(root / "valid", seed=1, count=6)
    return root


CLS_CONFIG = str(REPO / "configs" / "cls.yaml")
SEG_CONFIG = str(REPO / "configs" / "seg.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY_CLS = [
    "--data.image_size",
    "32",
    "--data.batch_size",
    "8",
    "--data.num_workers",
    "0",
    "--model.model_kwargs",
    "{width: 8, depths: [1, 1]}",
    *QUIET,
]
TINY_SEG = [
    "--model.encoder_name",
    "resnet18",
    "--data.image_size",
    "64",
    "--data.batch_size",
    "4",
    "--data.num_workers",
    "0",
    *QUIET,
]


def run_folder(work: Path, task: str = "cls", version: int = 0) -> Path:
    """Where train.py run from `work` with a config's default root puts its run number `version`."""
    return work / "runs" / task / f"version_{version}"


def tensorboard_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every event of `tag` in a run folder, as TensorBoard shows them: events
    that a resumed run purged are gone."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as ordered:
        # TensorBoard reads a folder's event files in name order; runs started in one process within one
        # second (as these tests run them) differ only in the writer's counter, where ".10" sorts before ".9".
        for path in folder.glob("*tfevents*"):
            name = path.name.removeprefix("events.out.tfevents.")
            seconds, counter = name.split(".", 1)[0], name.rsplit(".", 1)[1]
            (Path(ordered) / f"events.out.tfevents.{seconds}.{int(counter):09d}").symlink_to(path.resolve())
        accumulator = EventAccumulator(ordered)
        accumulator.Reload()
        return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def evaluate_report(checkpoint: Path, cwd: Path, *extra: str) -> dict:
    """metrics.json of evaluate.py on `checkpoint` (by default on the data it was trained with)."""
    result = run_script(
        "evaluate.py", "--ckpt_path", str(checkpoint), "--output_dir", "report", "--bootstrap", "200", *extra, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((cwd / "report" / "metrics.json").read_text())


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory) -> Path:
    """best.ckpt of a short train.py run that learns the tiny SARTAJ-layout dataset (shared by tests)."""
    work = tmp_path_factory.mktemp("cls_run")
    root = make_classification_dataset(work / "data", SARTAJ_FOLDERS, per_class=16)
    result = run_script(
        "train.py",
        "--config",
        CLS_CONFIG,
        "--data.root",
        str(root),
        *TINY_CLS,
        "--trainer.max_epochs",
        "12",
        "--model.lr",
        "0.01",
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_folder(work) / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def trained_segmenter(tmp_path_factory) -> Path:
    """best.ckpt of a short train.py run on a tiny generated COCO export."""
    work = tmp_path_factory.mktemp("seg_run")
    make_coco_split(work / "data" / "train", seed=0, count=8)
    make_coco_split(work / "data" / "valid", seed=1, count=6)
    result = run_script(
        "train.py",
        "--config",
        SEG_CONFIG,
        "--data.root",
        str(work / "data"),
        *TINY_SEG,
        "--trainer.max_epochs",
        "6",
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_folder(work, "seg") / "checkpoints" / "best.ckpt"


def write_figshare_slice(path: Path, image: np.ndarray, mask: np.ndarray, label: int, patient_id: str) -> Path:
    """A .mat slice as the original figshare download has them: MATLAB v7.3, i.e. a 512-byte user
    block holding MATLAB's 128-byte header, then HDF5 with the arrays transposed (column-major)."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as handle:
        group = handle.create_group("cjdata")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        for name, value, matlab_class in (
            ("image", image.astype(np.int16).T, "int16"),
            ("tumorMask", mask.astype(np.uint8).T, "logical"),
            ("label", np.array([[float(label)]]), "double"),
            ("PID", np.array([[ord(c)] for c in patient_id], dtype=np.uint16).T, "char"),
        ):
            group.create_dataset(name, data=value).attrs["MATLAB_class"] = np.bytes_(matlab_class)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: generated by the tests HDF5 schema 1.00 ."
    with open(path, "r+b") as handle:
        handle.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    return path


def tumor_slice(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic slice (smooth tissue, so no two share a perceptual hash) with one bright
    irregular tumour, and its mask."""
    tissue = cv2.resize(rng.integers(20, 120, (6, 6)).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((size, size), np.uint8)
    centre = tuple(int(c) for c in rng.integers(size // 3, 2 * size // 3, 2))
    axes = tuple(int(a) for a in rng.integers(size // 10, size // 5, 2))
    cv2.ellipse(mask, centre, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    tissue[mask > 0] = 220
    return tissue, mask


def make_mask_folders(root: Path, patients: list[str], per_patient: int = 3, seed: int = 0) -> Path:
    """ROOT/images/N.png + ROOT/masks/N.png + ROOT/metadata.csv (image,mask,label,patient_id), the
    figshare dataset's Kaggle layout; labels cycle through the three tumour classes by patient."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image,mask,label,patient_id"]
    for p, patient in enumerate(patients):
        for s in range(per_patient):
            name = f"{p * per_patient + s}"
            image, mask = tumor_slice(rng)
            cv2.imwrite(str(root / "images" / f"{name}.png"), image)
            cv2.imwrite(str(root / "masks" / f"{name}.png"), mask * 255)
            rows.append(f"images/{name}.png,masks/{name}.png,{('meningioma', 'glioma', 'pituitary')[p % 3]},{patient}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root
