"""Model factory, optimizer names, the warmup-then-decay schedule and Ctrl-C handling."""

from __future__ import annotations

import os
import signal

import lightning as L
import numpy as np
import pytest
import timm
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from common.errors import UserError
from lightning_modules.callbacks import GracefulInterrupt
from lightning_modules.classification import ClassificationModule
from lightning_modules.models import ResidualCNN, create_classifier
from lightning_modules.optim import create_optimizer, create_warmup_decay_schedule
from lightning_modules.precision import Hardware, fastest_precision
from lightning_modules.pretrained import PretrainedWeightsError


@pytest.mark.parametrize("channels", [1, 3])
def test_residual_cnn_takes_one_or_three_channels(channels):
    model = create_classifier("residual_cnn", num_classes=4, in_chans=channels, width=8, depths=(1, 1))
    assert isinstance(model, ResidualCNN)
    assert model(torch.randn(2, channels, 64, 64)).shape == (2, 4)


def test_any_timm_model_by_name():
    model = create_classifier("resnet10t", num_classes=4, in_chans=1)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 4)


def test_timm_model_loads_a_local_weights_file(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    model = create_classifier("resnet10t", num_classes=4, in_chans=3, weights_path=str(path))
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)  # the file's values, not a fresh init
    assert model.get_classifier().out_features == 4  # the ImageNet head is replaced


def test_pretrained_without_network_says_how_to_use_a_local_file(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    with pytest.raises(PretrainedWeightsError, match="weights_path"):
        create_classifier("resnet10t", pretrained=True)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(UserError, match="unknown model 'resnet_9000'"):
        create_classifier("resnet_9000")


def test_pretrained_weights_are_read_when_training_starts_not_when_built(tmp_path):
    path = tmp_path / "resnet10t.pth"
    module = ClassificationModule(
        model="resnet10t", model_kwargs={}, in_channels=3, weights_path=str(path)
    )  # no file yet
    source = timm.create_model("resnet10t", num_classes=1000)
    torch.save(source.state_dict(), path)
    assert not torch.equal(module.net.conv1[0].weight, source.conv1[0].weight)
    module.load_pretrained_weights()  # what on_fit_start does when a fit starts from scratch
    assert torch.equal(module.net.conv1[0].weight, source.conv1[0].weight)


@pytest.mark.parametrize("name", ["adam", "adamw", "adopt"])
def test_each_optimizer_name_builds_and_steps(name):
    model = torch.nn.Linear(3, 1)
    optimizer = create_optimizer(model, name, lr=1e-2)
    before = model.weight.detach().clone()
    for _ in range(2):  # ADOPT's first step only initialises its second moment
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert not torch.equal(before, model.weight)
    assert type(optimizer).__name__.lower() == name


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_warms_up_linearly_then_decays_to_zero(decay):
    base_lr, total, warmup_fraction = 1e-3, 200, 0.25
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    schedule = create_warmup_decay_schedule(optimizer, total, warmup_fraction, decay)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = lrs.index(max(lrs))
    assert peak == 49  # the 50th step (25% of 200) is the first at the base lr
    assert max(lrs) == pytest.approx(base_lr)
    rise = torch.tensor(lrs[: peak + 1])
    assert torch.allclose(rise.diff(), torch.full((peak,), base_lr / 50), rtol=1e-6)  # linear
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))  # then never rises
    assert lrs[-1] < base_lr * 0.01
    assert lrs[peak + (total - peak) // 2] == pytest.approx(0.5 * base_lr, rel=0.05)  # both shapes halve midway
    quarter = lrs[peak + (total - peak) // 4] / base_lr
    assert quarter == pytest.approx(0.854 if decay == "cosine" else 0.75, abs=0.02)


@pytest.mark.parametrize("mixup_alpha", [0.0, 0.4])
def test_mixup_blends_each_image_with_its_batch_partner(mixup_alpha):
    np.random.seed(0)  # timm's Mixup draws lam with numpy
    module = ClassificationModule(model_kwargs={"width": 8, "depths": [1, 1]}, mixup_alpha=mixup_alpha)
    module.log = lambda *args, **kwargs: None  # no Trainer to log to
    seen = []
    module.net.register_forward_pre_hook(lambda net, inputs: seen.append(inputs[0].clone()))
    images, labels = torch.randn(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = module.training_step((images.clone(), labels), 0)
    loss.backward()
    assert torch.isfinite(loss)
    # batch-mode mixup: x * lam + x.flip(0) * (1 - lam), one lam for the batch
    lam = 1.0 if mixup_alpha == 0 else ((seen[0] - images.flip(0)) / (images - images.flip(0)))[0, 0, 0, 0].item()
    assert torch.allclose(seen[0], images * lam + images.flip(0) * (1 - lam), atol=1e-5)
    assert (lam < 1.0) == (mixup_alpha > 0)


def test_odd_sized_batch_trains_unmixed():
    module = ClassificationModule(model_kwargs={"width": 8, "depths": [1, 1]}, mixup_alpha=0.4, cutmix_alpha=1.0)
    module.log = lambda *args, **kwargs: None
    assert torch.isfinite(module.training_step((torch.randn(5, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0])), 0))


@pytest.mark.parametrize(("mix_prob", "logs_accuracy"), [(1.0, False), (0.0, True)])
def test_training_accuracy_is_logged_only_on_unblended_batches(mix_prob, logs_accuracy):
    module = ClassificationModule(model_kwargs={"width": 8, "depths": [1, 1]}, mixup_alpha=0.4, mix_prob=mix_prob)
    logged = []
    module.log = lambda name, *args, **kwargs: logged.append(name)
    module.training_step((torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])), 0)
    assert ("train/acc" in logged) == logs_accuracy and "train/loss" in logged


@pytest.mark.parametrize(
    ("accelerator", "hardware", "expected"),
    [
        ("auto", Hardware(cuda_capability=(9, 0), cpu_bf16=False), "bf16-mixed"),  # H100/H200
        ("gpu", Hardware(cuda_capability=(8, 0), cpu_bf16=False), "bf16-mixed"),  # A100
        ("auto", Hardware(cuda_capability=(7, 5), cpu_bf16=True), "16-mixed"),  # T4: fp16 tensor cores, no bf16
        ("auto", Hardware(cuda_capability=(6, 1), cpu_bf16=True), "32-true"),  # no tensor cores
        ("cpu", Hardware(cuda_capability=(9, 0), cpu_bf16=False), "32-true"),  # a GPU there, but training on the CPU
        ("auto", Hardware(cuda_capability=None, cpu_bf16=True), "bf16-mixed"),  # AVX512-BF16 / AMX
        ("auto", Hardware(cuda_capability=None, cpu_bf16=False), "32-true"),  # AVX2 only: bf16 would be emulated
        ("mps", Hardware(cuda_capability=None, cpu_bf16=False), "32-true"),
    ],
)
def test_precision_is_the_fastest_the_hardware_computes_natively(accelerator, hardware, expected):
    precision, reason = fastest_precision(accelerator, hardware)
    assert precision == expected and reason


def test_compile_option_compiles_in_place_and_keeps_checkpoint_names():
    torch.manual_seed(0)
    module = ClassificationModule(model_kwargs={"width": 8, "depths": [1, 1]}, compile=True).eval()
    eager = ClassificationModule(model_kwargs={"width": 8, "depths": [1, 1]}).eval()
    eager.load_state_dict(module.state_dict())
    names = list(module.state_dict())
    module.setup("fit")  # what Trainer.fit calls
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(module(images), eager(images), atol=1e-5)
    assert module.net._compiled_call_impl is not None  # the compiled forward is in use
    assert list(module.state_dict()) == names  # no "_orig_mod." prefix: checkpoints, export and resume as before


def test_mobilenet_v2_classifier_starts_from_a_torchvision_features_file(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    source = mobilenet_v2(weights=None)  # stands in for the ImageNet file in ../shared/data/weights
    torch.save({k: v for k, v in source.state_dict().items() if k.startswith("features.")}, tmp_path / "mnv2.pth")
    model = create_classifier("mobilenet_v2", num_classes=4, in_chans=1, weights_path=str(tmp_path / "mnv2.pth"))
    first = source.features[0][0].weight
    assert torch.allclose(model.features[0][0].weight, first.sum(dim=1, keepdim=True))  # RGB filters summed for gray
    assert torch.equal(model.features[7].conv[1][0].weight, source.features[7].conv[1][0].weight)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)
    assert model.forward_features(torch.randn(1, 1, 64, 64)).shape == (1, 1280, 2, 2)  # a map for Grad-CAM


def test_ctrl_c_is_acted_on_by_the_trainer_process_not_its_forked_dataloader_workers(monkeypatch):
    interrupt, before = GracefulInterrupt(), signal.getsignal(signal.SIGINT)
    interrupt.on_train_start(None, None)  # installs its SIGINT handler
    try:
        trainer_pid = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: trainer_pid + 1)  # as in a worker forked from the trainer
        try:
            signal.raise_signal(signal.SIGINT)
            interrupt.on_validation_batch_end()
        except KeyboardInterrupt:  # failed here, not as an interrupted test session
            pytest.fail("a DataLoader worker's Ctrl-C stopped training")
        monkeypatch.setattr(os, "getpid", lambda: trainer_pid)
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            interrupt.on_validation_batch_end()  # stops at the batch's end
    finally:
        interrupt.teardown(None, None, "fit")
    assert signal.getsignal(signal.SIGINT) == before  # restored


def test_a_fit_that_fails_gives_ctrl_c_back_to_the_handler_it_found(tmp_path):
    class Failing(BoringModel):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("failed")

    before = signal.getsignal(signal.SIGINT)
    trainer = L.Trainer(
        default_root_dir=tmp_path, callbacks=[GracefulInterrupt()], max_steps=1, logger=False, enable_progress_bar=False
    )
    with pytest.raises(RuntimeError, match="failed"):
        trainer.fit(Failing())
    assert signal.getsignal(signal.SIGINT) == before
