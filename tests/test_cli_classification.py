"""train.py and evaluate.py as a user runs them, on a tiny generated dataset."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import CLS_CONFIG as CONFIG
from tests.conftest import REPO, run_script, script_env
from tests.conftest import TINY_CLS as TINY


def train(root: Path, cwd: Path, *extra: str):
    return run_script("train.py", "--config", CONFIG, "--data.root", str(root), *TINY, *extra, cwd=cwd)


def test_train_writes_checkpoints_and_tensorboard_then_evaluate_writes_report(sartaj_root, tmp_path):
    result = train(sartaj_root, tmp_path, "--trainer.max_epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "cls" / "checkpoints"
    assert (checkpoints / "best.ckpt").is_file() and (checkpoints / "last.ckpt").is_file()
    events = list((tmp_path / "runs" / "cls").glob("version_*/events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0

    result = run_script(
        "evaluate.py", "--config", CONFIG, "--data.root", str(sartaj_root), *TINY,
        "--ckpt_path", str(checkpoints / "best.ckpt"), "--output_dir", "report", "--data.image_size", "48", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["image_size"] == 32  # the size it was trained at, not the mistyped 48
    assert report["split"] == "test"
    assert report["num_images"] == 4 * 2  # Testing/ holds 2 images per class
    assert set(report["per_class"]) == {"glioma", "meningioma", "no_tumor", "pituitary"}
    assert 0 <= report["accuracy"] <= 1 and 0 <= report["tumor_sensitivity"] <= 1
    assert sum(map(sum, report["confusion_matrix"])) == 8
    assert (tmp_path / "report" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "tumor vs no tumor: sensitivity" in result.stdout


def test_resume_from_last_checkpoint_continues_the_epoch_count(sartaj_root, tmp_path):
    last = tmp_path / "runs/cls/checkpoints/last.ckpt"
    assert train(sartaj_root, tmp_path, "--trainer.max_epochs", "1").returncode == 0
    first = torch.load(last, map_location="cpu", weights_only=False)
    result = train(sartaj_root, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states from the checkpoint" in result.stderr + result.stdout
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 2 * first["global_step"]  # one more epoch on top, not two from scratch


def test_print_config_shows_the_resolved_overrides(tmp_path):
    result = run_script("train.py", "--config", CONFIG, "--trainer.max_epochs", "3", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max_epochs: 3" in result.stdout and "warmup_fraction: 0.25" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.root", "/no/such/folder"], "error: /no/such/folder: data root does not exist"),
        (["--model.learning_rate", "1"], "learning_rate"),
        (["--model.optimizer", "sgd"], "sgd"),
        (["--model.model", "resnet10t"], "do not fit timm model 'resnet10t'"),
        (["--model.model", "resnet10t", "--model.model_kwargs", "{}", "--model.pretrained", "true"],
         "weights_path=/path/to/weights"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected, tmp_path):
    result = run_script("train.py", "--config", CONFIG, *args, cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_without_checkpoint_is_a_clear_error(sartaj_root, tmp_path):
    result = run_script("evaluate.py", "--config", CONFIG, "--data.root", str(sartaj_root), "--ckpt_path",
                        "missing.ckpt", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: missing.ckpt: checkpoint not found"


def test_ddp_with_two_cpu_processes(sartaj_root, tmp_path):
    result = train(
        sartaj_root, tmp_path, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs/cls/checkpoints/last.ckpt").is_file()


def test_ctrl_c_leaves_a_checkpoint_that_resumes(sartaj_root, tmp_path):
    command = [sys.executable, str(REPO / "train.py"), "--config", CONFIG, "--data.root", str(sartaj_root), *TINY,
               "--trainer.max_epochs", "1000"]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = tmp_path / "runs/cls/checkpoints"
    deadline = time.time() + 300  # generous: a loaded CI machine starts Python slowly
    while not (checkpoints / "last.ckpt").is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    # A signal sent before Lightning's loop runs would kill the import, not the training.
    assert process.poll() is None and (checkpoints / "last.ckpt").is_file(), "no epoch finished before the deadline"
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode()
    interrupted = checkpoints / "last-interrupted.ckpt"
    assert interrupted.is_file(), output[-3000:]
    assert "Ctrl-C: stopping after this batch" in output  # GracefulInterrupt, not a stray KeyboardInterrupt
    # The signal can land just before or just after the epoch counter moves on, so the
    # checkpoint's epoch may be 0 or more; its step count shows training had run.
    saved = torch.load(interrupted, map_location="cpu", weights_only=False)
    assert saved["global_step"] > 0

    result = train(sartaj_root, tmp_path, "--trainer.max_epochs", str(saved["epoch"] + 2), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states from the checkpoint" in result.stderr + result.stdout
