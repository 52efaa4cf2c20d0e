"""Scans through Lightning's predict loop: a dataset whose item is a scan, a module that predicts one scan a step
(its slices in batches, with the trained models), and a writer that writes each scan's outputs as soon as it is
predicted. `Trainer(devices=N, strategy="ddp")` or several nodes spread the scans over processes with no process
code of the project's own: Lightning's sampler for prediction gives each scan to one process exactly once.
Memory holds one scan per process, however many scans there are."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from common.errors import UserError
from datamodules.dicom_series import is_dicom_series
from datamodules.volumes import scan_stem
from inference.dicom_seg import tumour_segmentation
from inference.predictor import Prediction, TumorPredictor
from inference.scans import mask_volume, montage, scan_row, scan_slices

PARTS_FOLDER = ".scan_parts"  # each process's results, one JSON line a scan, merged by the first process


class ScanNames(Dataset):
    """The scans to predict, by name (a NIfTI file, a DICOM series folder or FOLDER#SERIES_UID)."""

    def __init__(self, scans: Sequence[str]) -> None:
        self.scans = [str(scan) for scan in scans]

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, index: int) -> str:
        return self.scans[index]


def scan_loader(scans: Sequence[str]) -> DataLoader:
    """One scan a batch, read in the step (a scan's slices are the step's own batches)."""
    return DataLoader(ScanNames(scans), batch_size=1, collate_fn=lambda batch: batch[0])


class ScanPredictor(L.LightningModule):
    """The trained models of a TumorPredictor, one scan a step: its slices in batches of `batch_size`, no Grad-CAM
    (the scan's montage shows where the tumour is). Lightning moves the models to the process's device."""

    def __init__(self, predictor: TumorPredictor, plane: str = "axial", batch_size: int = 16, tta: str | None = None):
        super().__init__()
        self.predictor, self.plane, self.batch_size, self.tta = predictor, plane, batch_size, tta
        trained = [model for model in (predictor.classifier, predictor.segmenter) if model is not None]
        self.models = torch.nn.ModuleList(model.module for model in trained)

    def predict_step(self, scan: str, batch_idx: int) -> tuple[str, list[Prediction]]:
        try:
            slices = scan_slices(scan, self.plane)
        except UserError as error:
            return scan, [Prediction(scan, error=str(error))]
        return scan, list(self.predictor.predict_files(slices, self.batch_size, gradcam=False, tta=self.tta))


def write_scan(scan: str, slices: list[Prediction], output_dir: Path, plane: str = "axial") -> dict | None:
    """A scan's outputs from its slices' predictions: with a segmenter its mask volume, SCAN_mask.nii.gz (and
    SCAN_seg.dcm, a DICOM-SEG, for a DICOM series) and its montage of the slices with tumour, SCAN_montage.png;
    and its row of numbers (scans.csv, scans.json). None when a slice could not be predicted."""
    if any(prediction.error for prediction in slices):
        return None
    stem, files = scan_stem(scan), {}
    slice_masks = [prediction.tumor_mask for prediction in slices]
    if slice_masks[0] is not None:
        mask = mask_volume(scan, slice_masks, plane)
        files = {"mask_file": f"{stem}_mask.nii.gz", "montage_file": f"{stem}_montage.png"}
        mask.to_filename(output_dir / files["mask_file"])
        if is_dicom_series(scan):
            files["dicom_seg_file"] = f"{stem}_seg.dcm"
            tumour_segmentation(scan, mask).save_as(output_dir / files["dicom_seg_file"])
        picture = montage([prediction.image for prediction in slices], slice_masks)
        cv2.imwrite(str(output_dir / files["montage_file"]), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return scan_row(scan, slices, plane) | files


class ScanWriter(BasePredictionWriter):
    """Writes each scan's files as soon as it is predicted, and its rows (the scan's, its slices') as one JSON
    line in this process's part file; `merged_results` reads the parts of every process back, in scan order."""

    def __init__(self, output_dir: str | Path, plane: str = "axial") -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.plane = Path(output_dir), plane

    def part_file(self, rank: int) -> Path:
        return self.output_dir / PARTS_FOLDER / f"process_{rank}.jsonl"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.part_file(trainer.global_rank).parent.mkdir(parents=True, exist_ok=True)
        self.part_file(trainer.global_rank).write_text("")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: tuple[str, list[Prediction]],
        batch_indices: Sequence[int] | None,
        batch: str,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        scan, slices = prediction
        errors = [p.error for p in slices if p.error]
        rows = [p.row() for p in slices if not (p.error and p.path == scan)]  # not a scan that could not be read
        doubted = sum(bool(row["warning"]) for row in rows)
        if doubted:  # one line a scan, not one a slice: the slices' rows say which and why
            print(f"warning: {scan}: {doubted} of its {len(slices)} slices with a doubt "
                  "(predictions.csv, column warning)", file=sys.stderr)  # fmt: skip
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        result = {
            "index": batch_indices[0] if batch_indices else batch_idx,
            "scan_row": write_scan(scan, slices, self.output_dir, self.plane),
            "slice_rows": rows,
            "errors": errors,
        }
        with self.part_file(trainer.global_rank).open("a") as handle:
            handle.write(json.dumps(result) + "\n")

    def merged_results(self, processes: int) -> list[dict]:
        """Every process's results, in the order of the scans given; the part files removed."""
        results = []
        for rank in range(processes):
            part = self.part_file(rank)
            if part.is_file():
                results += [json.loads(line) for line in part.read_text().splitlines() if line]
        for part in (self.output_dir / PARTS_FOLDER).glob("process_*.jsonl"):  # also a dead run's, of more processes
            part.unlink()
        (self.output_dir / PARTS_FOLDER).rmdir()
        return sorted(results, key=lambda result: result["index"])


def predict_scans(
    predictor: ScanPredictor, scans: Sequence[str], output_dir: str | Path, **trainer_options
) -> list[dict] | None:
    """Predict `scans` with Lightning's predict loop (`trainer_options`: accelerator, devices, strategy,
    num_nodes), writing each scan's files into `output_dir`. Returns every scan's result (merged_results) in the
    first process, None in the others."""
    writer = ScanWriter(output_dir, predictor.plane)
    trainer = L.Trainer(
        callbacks=[writer], logger=False, enable_checkpointing=False, enable_model_summary=False, **trainer_options
    )
    trainer.predict(predictor, scan_loader(scans), return_predictions=False)
    trainer.strategy.barrier()
    return writer.merged_results(trainer.world_size) if trainer.is_global_zero else None
