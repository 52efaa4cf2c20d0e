"""Pretrained weights, loaded into the network that exists (as timm's `load_pretrained` does),
through one path that checks what it loads.

Sources: a timm model's hub weights or a local file (timm's own loader); a local ImageNet file in
torchvision or timm key layout; smp's ImageNet encoder weights; the network of a classification
checkpoint of the encoder's architecture (an encoder pretrained on MRI). Classification heads
are dropped, wrapper prefixes stripped, the first convolution adapted when its input channels
differ, and anything else that does not fit is an error naming the source, so a wrong file never
half-loads. Called when a fit starts from scratch, never when a checkpoint is loaded."""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from common.errors import UserError
from lightning_modules.checkpoints import find_checkpoint, read_checkpoint, saved_class_name

HEAD_PREFIXES = ("fc.", "classifier.", "head.")
WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


class PretrainedWeightsError(UserError):
    """Pretrained weights that cannot be had: not downloadable (the message says how to use a
    local file instead), a file that is missing or does not fit the network."""


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local weights file (also one wrapped under "state_dict" or "model")."""
    if not Path(path).is_file():
        raise PretrainedWeightsError(f"{path}: pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise PretrainedWeightsError(f"{path}: not a readable weights file ({str(error).splitlines()[0]})") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def adapt_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A convolution kernel trained on images of other channels, for `channels`-channel input:
    grayscale kernels spread evenly over the channels, colour ones summed (timm's rule), so a
    grayscale image shown as identical R, G and B gives the features it gave before."""
    if weight.shape[1] == 1:
        return weight.repeat(1, channels, 1, 1) / channels
    return adapt_input_conv(channels, weight)


def load_weights(
    net: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    first_conv: str,
    optional: tuple[str, ...] = (),
    what: str = "network",
) -> None:
    """Load `state` into `net`: heads dropped, wrappers stripped, `first_conv` adapted to the
    network's input channels; weights of `net` under `optional` prefixes (its own head) may stay
    as they are. Anything else missing or unexpected is an error naming `source`."""
    expected = net.state_dict()
    cleaned = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith(HEAD_PREFIXES) and not key.startswith(optional):
            continue
        if key == first_conv and key in expected and value.shape[1] != expected[key].shape[1]:
            value = adapt_first_conv(value, expected[key].shape[1])
        cleaned[key] = value
    # nn.Module's own method: smp encoders override it and return nothing
    try:
        missing, unexpected = nn.Module.load_state_dict(net, cleaned, strict=False)
    except RuntimeError as error:  # same names, other shapes: another width or depth of the architecture
        raise PretrainedWeightsError(
            f"{source}: does not fit this {what} ({str(error).splitlines()[1].strip()})"
        ) from error
    missing = [key for key in missing if not key.startswith(optional)]
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{source}: does not fit this {what} ({len(missing)} weights missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )


def first_conv_of(net: nn.Module) -> str:
    """The first convolution's weight: the first 4-D weight a network registers (its stem)."""
    return next(key for key, value in net.state_dict().items() if value.ndim == 4)


def load_classifier_weights(net: nn.Module, name: str, pretrained: bool, weights_path: str | None) -> None:
    """Pretrained weights into the classifier `net` of architecture `name`: a timm model's hub
    weights (`pretrained`) or local file through timm's own `load_pretrained`, which adapts the
    first convolution and replaces the head; the project's own networks from a local file."""
    if not hasattr(net, "pretrained_cfg"):  # not a timm model
        load_weights(net, read_weights_file(weights_path), weights_path, first_conv_of(net), optional=("head.",))
        return
    config = dict(net.pretrained_cfg)
    if weights_path:
        if not Path(weights_path).is_file():
            raise PretrainedWeightsError(f"{weights_path}: pretrained weights file not found")
        config = {"file": str(weights_path), **{k: v for k, v in config.items() if k not in ("hf_hub_id", "url")}}
    try:
        timm.models.load_pretrained(
            net, pretrained_cfg=config, num_classes=net.num_classes, in_chans=in_channels_of(net)
        )
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        if weights_path:
            raise PretrainedWeightsError(f"{weights_path}: could not load it into '{name}' ({error})") from error
        raise PretrainedWeightsError(
            f"could not download pretrained weights for '{name}' ({type(error).__name__}); "
            "on an offline machine pass model.init_args.weights_path=/path/to/weights (.pth or .safetensors)"
        ) from error


def in_channels_of(net: nn.Module) -> int:
    return net.state_dict()[first_conv_of(net)].shape[1]


def classifier_backbone(path: str | Path, encoder_name: str) -> dict[str, torch.Tensor]:
    """The network weights of a classification checkpoint (a .ckpt file or a run folder's
    best.ckpt) whose classifier is the same architecture as the encoder `encoder_name`."""
    path = find_checkpoint(path)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    saved_class = saved_class_name(hparams)
    if saved_class != "ClassificationModule":
        raise PretrainedWeightsError(
            f"{path}: a {saved_class or 'foreign'} checkpoint; encoder weights come from a "
            "classification checkpoint (or an ImageNet weights file)"
        )
    if hparams.get("model") != encoder_name:
        raise PretrainedWeightsError(
            f"{path}: its classifier is '{hparams.get('model')}', which cannot initialise the '{encoder_name}' "
            f"encoder; train a classifier with model: {encoder_name} (configs/cls_resnet50.yaml) or change encoder_name"
        )
    return {
        key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")
    }


def pretraining_fingerprints(encoder_weights: str | None) -> dict[str, torch.Tensor] | None:
    """The training-image fingerprints of the classification checkpoint an encoder starts from
    (None for other sources): images its weights have seen, so evaluation can leave them out."""
    if encoder_weights in (None, "imagenet") or not (
        Path(encoder_weights).is_dir() or Path(encoder_weights).suffix == ".ckpt"
    ):
        return None
    checkpoint = read_checkpoint(find_checkpoint(encoder_weights))
    state = next((v for k, v in checkpoint.items() if k.endswith("DataModule") and isinstance(v, dict)), {})
    return state.get("training_fingerprints")


def smp_imagenet_weights(encoder_name: str) -> dict[str, torch.Tensor]:
    """smp's ImageNet weights of an encoder, from the Hugging Face hub (where smp keeps them)."""
    import segmentation_models_pytorch as smp
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    settings = smp.encoders.encoders[encoder_name]["pretrained_settings"].get("imagenet")
    if settings is None:
        raise PretrainedWeightsError(f"encoder '{encoder_name}' has no ImageNet weights in segmentation-models-pytorch")
    try:
        return load_file(
            hf_hub_download(settings["repo_id"], filename="model.safetensors", revision=settings["revision"])
        )
    except (OSError, RuntimeError, ConnectionError) as error:  # huggingface_hub's errors derive from these
        raise PretrainedWeightsError(
            f"could not download 'imagenet' weights for encoder '{encoder_name}' ({type(error).__name__}); on an "
            "offline machine set model.init_args.encoder_weights to a local checkpoint file (torchvision or timm "
            "layout), or to null to train from scratch"
        ) from error


def load_encoder_weights(encoder: nn.Module, encoder_name: str, encoder_weights: str) -> None:
    """Pretrained weights into an smp encoder: "imagenet" (smp's, downloaded), a local ImageNet
    checkpoint (torchvision or timm key layout), or a classification checkpoint or run folder whose
    classifier has the encoder's architecture."""
    if encoder_weights == "imagenet":
        state = smp_imagenet_weights(encoder_name)
    elif not Path(encoder_weights).exists():
        raise PretrainedWeightsError(f"{encoder_weights}: encoder weights file not found")
    elif Path(encoder_weights).is_dir() or Path(encoder_weights).suffix == ".ckpt":
        state = classifier_backbone(encoder_weights, encoder_name)
    else:
        state = read_weights_file(encoder_weights)
    load_weights(encoder, state, encoder_weights, first_conv_of(encoder), what="encoder")
