"""Fit a checkpoint's post-processing anew on its own validation split, as training fits it after
every validation epoch: a classifier's temperature and "unlike the training data" model, a
segmenter's mask threshold and tumour decision. For checkpoints trained before these existed (or
changed); the weights are untouched.

    python scripts/recalibrate.py --ckpt_path runs/cls/version_0 --output recalibrated.ckpt [--data_root DATASET]
    python scripts/recalibrate.py --ckpt_path runs/seg/version_0 --output recalibrated.ckpt [--tta hflip]
    python scripts/recalibrate.py --ckpt_path runs/seg/version_0 runs/seg/version_1 --output ensemble.ckpt
    python scripts/recalibrate.py --ckpt_path models/segmenter.safetensors --head_gray 70 --output refitted.ckpt

Several models of one task trained on the same data and split make an ensemble: one checkpoint whose
logits are the mean of theirs (the task module's `members`), its post-processing fitted on that mean
(export.py writes it as one model file). An ensemble among them takes part as its members (`FILE#K`
names member K), so a model joins an ensemble as one more member.

--data_root, --data_negatives: where the training data lives now, if it moved (the split is recomputed
from the files). --tta: the views a segmenter's masks average from now on (stored in it; the threshold
and tumour decision are fitted on their mean). --head_gray: the gray level every slice's head is brought to from
now on (the datamodule setting `head_gray`, stored in it; the post-processing is fitted with it).
The fit runs in the precision the tools serve the model in (inference/batches.py: float32 on any CPU), so the
fitted threshold and decision hold as served; `--precision` fits in another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch

from common.errors import UserError
from inference.arguments import parse_arguments
from inference.batches import serving_precision
from lightning_modules.base import member_network
from lightning_modules.checkpoints import (
    member_reference,
    read_checkpoint,
    saved_arguments,
    saved_class_name,
)
from lightning_modules.classification import ClassificationModule
from lightning_modules.cli import run_with_clean_errors
from lightning_modules.model_file import is_model_file, read_model_file
from lightning_modules.segmentation import SegmentationModule
from lightning_modules.trained_model import TrainedModel, resolve_device
from lightning_modules.tta import TTA_VIEWS


def refit(trained: TrainedModel, datamodule: L.LightningDataModule, precision: str | None = None) -> str:
    """Run one validation epoch, at whose end the module fits its post-processing, on the device the tools pick,
    in `precision` (None: the one they serve in there)."""
    device_type = resolve_device("auto").type
    trainer = L.Trainer(
        accelerator=device_type,
        precision=precision or serving_precision(device_type),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.validate(trained.module, datamodule=datamodule, verbose=False)
    module, count = trained.module, len(datamodule.datasets["val"])
    if isinstance(module, ClassificationModule):
        return f"temperature {float(module.temperature):.3f}, fitted on {count} validation images"
    return (
        f"views '{module.hparams.tta}', threshold {float(module.threshold):.2f}, a tumour where at least {float(module.tumor_area_threshold):.0f} px "
        f"reach {float(module.detection_threshold):.2f}, fitted on {count} validation slices"
    )


def members_of(path: str, task: type[L.LightningModule], loaded: dict[str, TrainedModel]) -> list[tuple[str, dict]]:
    """The model of `task` at `path` as ensemble members, each with the arguments that build its network:
    itself, or `path#K` for each member K of an ensemble. Its file is read into `loaded` (by path) unless
    there already, so that the weights load from it later without a second read."""
    file, index = member_reference(path)
    if file not in loaded:
        loaded[file] = TrainedModel.load(file, task, torch.device("cpu"))
    arguments = loaded[file].module.member_arguments()
    if index is not None:
        member_network(loaded[file], index)  # a member it lacks is refused here, before any data is read
        return [(path, arguments[index])]
    return (
        [(f"{path}#{k}", member) for k, member in enumerate(arguments)]
        if len(arguments) > 1
        else [(path, arguments[0])]
    )


def ensemble(
    first: TrainedModel,
    members: list[tuple[str, dict]],
    datamodule: L.LightningDataModule,
    loaded: dict[str, TrainedModel],
) -> tuple[TrainedModel, dict]:
    """The `members` (paths and network arguments; `first` loaded from the first, `loaded` their files) as one
    module of the mean of their logits, with the first's other settings, each member checked against
    `datamodule`, the first's data and split; and its checkpoint."""
    datamodule.setup("fit")
    paths, arguments = [str(path) for path, _ in members], [network for _, network in members]
    hparams = saved_arguments(first.module.hparams)
    own_networks = arguments if any(network != arguments[0] for network in arguments) else None
    module_class = type(first.module)
    module = module_class(
        **{**hparams, **arguments[0], "weights_path": None, "members": paths, "member_networks": own_networks}
    )
    module.load_trained_weights(module.hparams.members, datamodule, loaded)
    trained = TrainedModel(
        module, first.image_size, first.channels, first.checkpoint, first.data_hparams, first.data_state
    )
    data_class = saved_class_name(first.data_hparams, "DataModule")
    checkpoint = {
        "hyper_parameters": {"_class_path": f"lightning_modules.{module_class.__name__}", **module.hparams},
        "datamodule_hyper_parameters": first.data_hparams,
        data_class: first.data_state,
        "pretraining_fingerprints": module.pretraining_fingerprints,
        "state_dict": module.state_dict(),
    }
    return trained, in_lightning_layout(checkpoint)


def in_lightning_layout(checkpoint: dict) -> dict:
    """`checkpoint` with what the layout LightningCLI saves has and a model file or a new ensemble lacks, so that
    load_from_checkpoint builds its module."""
    return {
        **checkpoint,
        "pytorch-lightning_version": checkpoint.get("pytorch-lightning_version", L.__version__),
        "hyper_parameters": {
            **checkpoint["hyper_parameters"],
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ckpt_path",
        required=True,
        nargs="+",
        help="a classification or segmentation .ckpt file or run folder; several of one task (also model files): their ensemble",
    )
    parser.add_argument("--output", required=True, help="the recalibrated checkpoint to write")
    parser.add_argument("--data_root", nargs="+", help="the training data, if it moved")
    parser.add_argument("--data_negatives", nargs="+", help="a segmenter's healthy slices")
    parser.add_argument("--precision", help="default: the tools' own (float32 on a CPU; training's on a GPU)")
    parser.add_argument("--tta", choices=list(TTA_VIEWS), help="a segmenter's views from now on (default: its own)")
    parser.add_argument("--head_gray", type=int, help="slices' head median gray from now on (default: its own)")
    args = parse_arguments(parser, argv)
    first_file, first_member = member_reference(args.ckpt_path[0])
    trained = TrainedModel.load(first_file, None, torch.device("cpu"))
    if args.head_gray is not None:  # before the datamodule: its validation slices are brought to it too
        trained.data_hparams["head_gray"] = args.head_gray
    datamodule = trained.datamodule(args.data_root, negatives=args.data_negatives)
    task = type(trained.module)
    loaded = {first_file: trained}
    members = [member for path in args.ckpt_path for member in members_of(path, task, loaded)]
    several = len(members) > 1
    if len(args.ckpt_path) > 1 or first_member is not None:  # an ensemble, or one member of one on its own
        trained, checkpoint = ensemble(trained, members, datamodule, loaded)
    else:
        from_model_file = is_model_file(trained.checkpoint)
        read = read_model_file if from_model_file else read_checkpoint
        checkpoint = dict(read(trained.checkpoint))  # a copy: the memory-mapped file may be the output
        checkpoint["datamodule_hyper_parameters"] = trained.data_hparams
        if from_model_file:
            checkpoint = in_lightning_layout(checkpoint)
    if args.tta:
        if not isinstance(trained.module, SegmentationModule):
            raise UserError(f"{trained.checkpoint}: --tta is a segmenter's option, and this is a classifier")
        trained.module.hparams.tta = args.tta
        checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "tta": args.tta}
    message = refit(trained, datamodule, args.precision)
    if several:
        task = "classifiers" if isinstance(trained.module, ClassificationModule) else "segmenters"
        message = f"the mean of {len(members)} {task}' logits, {message}"
    refitted = {name: trained.module.get_buffer(name).detach().clone() for name in trained.module.fitted_buffers}
    checkpoint["state_dict"] = {**checkpoint["state_dict"], **refitted}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.output)
    print(f"wrote {args.output}: {message}")


if __name__ == "__main__":
    run_with_clean_errors(main)
