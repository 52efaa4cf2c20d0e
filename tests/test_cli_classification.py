"""train.py and evaluate.py as a user runs them, on a tiny generated dataset: run folders,
exact resume, determinism, one-line errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_warn

from common.errors import UserError
from lightning_modules.cli import run_with_clean_errors
from lightning_modules.optim import warmup_decay_factor
from lightning_modules.precision import Hardware, fastest_precision
from tests.conftest import CLS_CONFIG as CONFIG
from tests.conftest import (
    REPO,
    SARTAJ_FOLDERS,
    SEG_CONFIG,
    evaluate_report,
    make_classification_dataset,
    run_folder,
    run_process,
    run_script,
    script_env,
    tensorboard_scalars,
)
from tests.conftest import TINY_CLS as TINY


def train(root: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_script("train.py", "--config", CONFIG, "--data.root", str(root), *TINY, *extra, cwd=cwd)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_each_run_gets_its_own_folder_and_evaluate_reports_on_it(sartaj_root, tmp_path):
    result = train(sartaj_root, tmp_path, "--trainer.max_epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    precision, reason = fastest_precision("auto", Hardware.detect())  # the config leaves it to the machine
    assert f"Precision {precision}: {reason}" in result.stderr
    run = run_folder(tmp_path)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == precision
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] == 1  # the newest epoch, whether it improved or not

    # A second run (another seed) never replaces the first one's files.
    first_best = (run / "checkpoints" / "best.ckpt").read_bytes()
    assert train(sartaj_root, tmp_path, "--trainer.max_epochs", "1", "--seed_everything", "7").returncode == 0
    assert (run_folder(tmp_path, version=1) / "checkpoints" / "best.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == first_best

    result = run_script("evaluate.py", "--ckpt_path", str(run), "--bootstrap", "200", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())  # in the run folder by default
    assert metrics["checkpoint"] == str(run / "checkpoints" / "best.ckpt") and metrics["image_size"] == 32
    assert metrics["data"] == f"{sartaj_root}, test split"  # the model's own data, its Testing/ split
    report = metrics["all_images"]
    assert report["num_images"] == 4 * 2  # Testing/ holds 2 images per class
    confmat = torch.tensor(report["confusion_matrix"])
    assert confmat.sum() == 8
    accuracy = report["accuracy"]
    assert accuracy["value"] == pytest.approx(float(confmat.trace() / confmat.sum()))
    assert accuracy["ci95"][0] <= accuracy["value"] <= accuracy["ci95"][1]
    tumor = [0, 1, 3]  # no_tumor is class 2
    sensitivity = float(confmat[tumor][:, tumor].sum() / confmat[tumor].sum())
    assert report["tumor_sensitivity"]["value"] == pytest.approx(sensitivity)
    rows = metrics["per_image"]
    assert len(rows) == 8 and {Path(row["file"]).parent.parent.name for row in rows} == {"Testing"}
    assert sum(row["predicted"] == row["label"] for row in rows) == confmat.trace()
    assert all(sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4) for row in rows)
    # Probabilities are calibrated with the temperature fitted on the validation split in training.
    assert metrics["calibration"]["temperature"] == pytest.approx(
        float(load(run / "checkpoints" / "best.ckpt")["state_dict"]["temperature"])
    )
    for figure in ("confusion_matrix", "reliability", "roc_pr"):
        assert (run / "evaluation" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    assert "95% bootstrap intervals" in result.stdout


def test_a_short_run_learns(trained_classifier, tmp_path):
    report = evaluate_report(trained_classifier, tmp_path)["all_images"]
    assert report["num_images"] == 16
    assert report["accuracy"]["value"] >= 0.6  # chance is 0.25


def test_own_split_is_rebuilt_from_the_data_moved_and_refused_on_other_data(trained_classifier, tmp_path):
    data = trained_classifier.parents[4] / "data"  # the fixture's run: work/runs/cls/version_0/checkpoints
    shutil.copytree(data, tmp_path / "moved")
    moved = evaluate_report(trained_classifier, tmp_path, "--data_root", str(tmp_path / "moved"), "--own_split")
    assert moved["all_images"]["num_images"] == 16
    # Fewer training images make another split, whose validation images the model may have trained on.
    next((tmp_path / "moved" / "Training").rglob("*.jpg")).unlink()
    result = run_script(
        "evaluate.py",
        "--ckpt_path",
        str(trained_classifier),
        "--data_root",
        str(tmp_path / "moved"),
        "--own_split",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--own_split on" in result.stderr and "other images" in result.stderr and str(data) in result.stderr


def test_default_root_dir_moves_every_output(sartaj_root, tmp_path):
    result = train(
        sartaj_root,
        tmp_path,
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        "elsewhere",
        "--trainer.precision",
        "32-true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Precision " not in result.stderr  # an explicit precision is used as given
    run = tmp_path / "elsewhere" / "cls" / "version_0"
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()


RESUME_EPOCHS = ["--trainer.max_epochs", "4", "--trainer.log_every_n_steps", "1"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> tuple[Path, Path]:
    """Data and run folder of a 4-epoch run without workers."""
    work = tmp_path_factory.mktemp("uninterrupted")
    root = make_classification_dataset(work / "data", SARTAJ_FOLDERS)
    result = train(root, work, *RESUME_EPOCHS)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, run_folder(work)


def logged_history(run: Path) -> list[tuple[int, float]]:
    return [event for tag in ("train/loss_step", "val/loss", "val/acc") for event in tensorboard_scalars(run, tag)]


def assert_same_training(run: Path, reference: Path) -> None:
    assert logged_history(run) == logged_history(reference)  # exactly: same steps, same floats
    weights, expected = (load(r / "checkpoints" / "last.ckpt")["state_dict"] for r in (run, reference))
    assert all(torch.equal(weights[key], expected[key]) for key in expected)


def test_same_seed_trains_identically_with_any_number_of_workers(uninterrupted_run, tmp_path):
    root, reference = uninterrupted_run
    # Two worker processes (persistent): augmentations are seeded per image and epoch, not per process.
    result = train(root, tmp_path, *RESUME_EPOCHS, "--data.num_workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(run_folder(tmp_path), reference)


@pytest.mark.slow  # a process of its own
def test_resume_after_sigkill_continues_exactly(uninterrupted_run, tmp_path):
    root, reference = uninterrupted_run
    kill = [
        "--trainer.callbacks+=tests.helpers.SignalAt",
        "--trainer.callbacks.epoch",
        "2",
        "--trainer.callbacks.batch",
        "1",
    ]
    # A process of its own: SIGKILL ends it where it stands.
    killed = run_process(
        "train.py",
        "--config",
        CONFIG,
        "--data.root",
        str(root),
        *TINY,
        *RESUME_EPOCHS,
        "--data.num_workers",
        "2",
        *kill,
        cwd=tmp_path,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = run_folder(tmp_path)
    assert not (run / "checkpoints" / "last-interrupted.ckpt").exists()  # nothing could be caught
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] == 1  # the end of the last finished epoch

    result = train(root, tmp_path, *RESUME_EPOCHS, "--data.num_workers", "2", "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"Restored all states from the checkpoint at {Path('runs/cls/version_0/checkpoints/last.ckpt')}"
        in result.stderr
    )
    assert not run_folder(tmp_path, version=1).exists()  # the run went on in its own folder
    final = load(run / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (3, load(reference / "checkpoints" / "last.ckpt")["global_step"])
    epochs_logged = [step for step, _ in tensorboard_scalars(run, "val/acc")]
    assert len(epochs_logged) == len(set(epochs_logged)) == 4  # each epoch once
    steps_logged = [step for step, _ in tensorboard_scalars(run, "train/loss_step")]
    assert steps_logged == list(range(final["global_step"]))  # the killed run's steps after the checkpoint are gone
    assert_same_training(run, reference)


@pytest.mark.parametrize("during, batch, batches_trained", [("training", 1, 2), ("validation", 0, None)])
def test_resume_after_ctrl_c_mid_epoch_continues_exactly(uninterrupted_run, tmp_path, during, batch, batches_trained):
    # Ctrl-C in the middle of epoch 2 (or of its validation) saves a checkpoint there; the resumed run goes
    # on with the epoch's next batch (not its first), while two workers have fetched batches ahead.
    root, reference = uninterrupted_run
    ctrl_c = ["--trainer.callbacks+=tests.helpers.SignalAt", "--trainer.callbacks.epoch", "2"]
    ctrl_c += ["--trainer.callbacks.batch", str(batch), "--trainer.callbacks.signal_name", "SIGINT"]
    ctrl_c += ["--trainer.callbacks.during", during]
    ctrl_c_handler = signal.getsignal(signal.SIGINT)
    try:
        interrupted = train(root, tmp_path, *RESUME_EPOCHS, "--data.num_workers", "2", *ctrl_c)
    finally:  # Lightning ignores further Ctrl-Cs once it has caught one, in this process (pytest's) too
        signal.signal(signal.SIGINT, ctrl_c_handler)
    assert "Ctrl-C: stopping after this batch" in interrupted.stderr + interrupted.stdout, interrupted.stderr[-3000:]
    run = run_folder(tmp_path)
    saved = load(run / "checkpoints" / "last-interrupted.ckpt")
    batches_per_epoch = load(reference / "checkpoints" / "last.ckpt")["global_step"] // 4
    batches_trained = batches_per_epoch if batches_trained is None else batches_trained
    assert (saved["epoch"], saved["global_step"]) == (2, 2 * batches_per_epoch + batches_trained)

    result = train(root, tmp_path, *RESUME_EPOCHS, "--data.num_workers", "2", "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "last-interrupted.ckpt" in result.stderr
    if during == "training":
        assert_same_training(run, reference)
    else:  # Lightning does not run the interrupted validation again (README): the same training all the same
        assert tensorboard_scalars(run, "train/loss_step") == tensorboard_scalars(reference, "train/loss_step")
        weights, expected = (load(r / "checkpoints" / "last.ckpt")["state_dict"] for r in (run, reference))
        assert all(torch.equal(weights[key], expected[key]) for key in expected)


def test_a_larger_max_epochs_extends_a_finished_run_with_a_warm_restart(uninterrupted_run, tmp_path):
    # What BENCHMARKS.md's 60-epoch segmenter did: a finished 4-epoch run resumed with 8 epochs goes on
    # in its own folder, and its schedule is the one of an 8-epoch run, so the lr rises again.
    root, reference = uninterrupted_run
    shutil.copytree(reference, run_folder(tmp_path))
    result = train(
        root, tmp_path, "--trainer.max_epochs", "8", "--trainer.log_every_n_steps", "1", "--ckpt_path", "last"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run, steps_before = run_folder(tmp_path), load(reference / "checkpoints" / "last.ckpt")["global_step"]
    final = load(run / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (7, 2 * steps_before)
    assert not run_folder(tmp_path, version=1).exists()
    hp = final["hyper_parameters"]
    lr_logged = dict(tensorboard_scalars(run, "lr-Adam/pg1"))  # (pg2: the same lr, without weight decay)

    def lr_of(step: int, total_steps: int) -> float:
        return hp["lr"] * warmup_decay_factor(step, total_steps, hp["warmup_fraction"], hp["lr_decay"])

    # The first step after the resume still runs at the lr the 4-epoch schedule had set for it (LambdaLR
    # applies a new lambda from its next step on); every later step is on the 8-epoch schedule.
    expected = {step: lr_of(step, steps_before) for step in range(steps_before + 1)}
    expected |= {step: lr_of(step, 2 * steps_before) for step in range(steps_before + 1, 2 * steps_before)}
    assert lr_logged == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert lr_logged[steps_before + 1] > 0.5 * hp["lr"]  # back up from 0: a warm restart


def test_a_weight_ema_is_what_is_saved_with_the_calibration_fitted_on_it(sartaj_root, tmp_path):
    ema = ["--trainer.callbacks+=lightning_modules.callbacks.WeightEMA", "--trainer.callbacks.decay", "0.5"]
    result = train(sartaj_root, tmp_path, "--trainer.max_epochs", "2", *ema)
    assert result.returncode == 0, result.stderr[-3000:]
    run = run_folder(tmp_path)
    checkpoint = load(run / "checkpoints" / "last.ckpt")
    averaged, trained = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert not torch.equal(averaged["net.head.3.weight"], trained["net.head.3.weight"])
    # The temperature of the saved (averaged) weights is the one fitted on their validation outputs at
    # the last epoch, not an average of the fits of earlier weights.
    (_, fitted), *_ = reversed(tensorboard_scalars(run, "val/temperature"))
    assert averaged["temperature"].item() == pytest.approx(fitted, rel=1e-6)
    assert torch.equal(averaged["unfamiliar_threshold"], trained["unfamiliar_threshold"])
    assert averaged["unfamiliar_threshold"].isfinite()


def test_resume_without_any_run_is_one_line(sartaj_root, tmp_path):
    # As a process: what a user sees is its exit status and the last line of its stderr.
    result = run_process(
        "train.py", "--config", CONFIG, "--data.root", str(sartaj_root), *TINY, "--ckpt_path", "last", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --ckpt_path last: no run with a last.ckpt or last-interrupted.ckpt under runs/cls"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.root", "/no/such/folder"], "error: /no/such/folder: data root does not exist"),
        (["--model.learning_rate", "1"], "learning_rate"),
        (["--model.optimizer", "sgd"], "sgd"),
        (["--data.val_fraction", "2"], "error: val_fraction must be between 0 and 1, got 2.0"),
        (["--model.model", "resnet10t"], "do not fit timm model 'resnet10t'"),
        (["--model.weights_path", "missing.pth"], "model 'residual_cnn' is trained from scratch"),
        (["--data.image_size", "-5"], "error: image_size must be at least 8, got -5"),
        (["--data.batch_size", "0"], "error: batch_size must be at least 1, got 0"),
        (["--model.init_args.lr", "-1"], "error: lr must be above 0, got -1.0"),
        (["--model.warmup_fraction", "1"], "error: warmup_fraction must be in [0, 1), got 1.0"),
        (["--model.mix_prob", "1.5"], "error: mix_prob must be in [0, 1], got 1.5"),
        (["--model.label_smoothing", "-0.1"], "error: label_smoothing must be in [0, 1), got -0.1"),
        (["--trainer.max_epochs", "0"], "error: trainer.max_epochs must be at least 1, got 0"),
        (
            ["--config", SEG_CONFIG, "--data.image_size", "100"],
            "error: image_size must be a multiple of 32 for the UNet",
        ),
        (["--config", SEG_CONFIG, "--model.dice_weight", "0", "--model.bce_weight", "0"], "nothing to train on"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected, tmp_path):
    result = run_script("train.py", "--config", CONFIG, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.pretrained", "true"], "on an offline machine pass model.init_args.weights_path=/path/to/weights"),
        (["--model.weights_path", "missing.pth"], "error: missing.pth: pretrained weights file not found"),
    ],
)
def test_unavailable_pretrained_weights_are_one_line(args, expected, sartaj_root, tmp_path):
    result = train(
        sartaj_root,
        tmp_path,
        "--model.model",
        "resnet10t",
        "--model.model_kwargs",
        "{}",
        *args,
        "--trainer.max_epochs",
        "1",
    )
    assert result.returncode == 2
    assert expected in result.stderr.strip().splitlines()[-1]


def test_a_bug_keeps_its_traceback_and_a_user_mistake_is_one_line(capsys):
    def bug() -> None:
        raise ValueError("shapes do not match")

    with pytest.raises(ValueError, match="shapes do not match"):
        run_with_clean_errors(bug)

    def mistake() -> None:
        raise UserError("data/x.json: not valid JSON")

    with pytest.raises(SystemExit) as exit_info:
        run_with_clean_errors(mistake)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data/x.json: not valid JSON\n"


def test_warnings_are_one_line_without_the_source_line(capsys, monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    monkeypatch.setattr(
        warnings,
        "showwarning",
        lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        ),
    )

    def warns() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            rank_zero_warn("data/a.jpg: unreadable or corrupt image, skipped")

    run_with_clean_errors(warns)
    assert capsys.readouterr().err == "warning: data/a.jpg: unreadable or corrupt image, skipped\n"


@pytest.mark.parametrize(
    ("script", "truncated"),
    [("evaluate.py", False), ("train.py", True)],  # a text file to evaluate, a cut-off copy to resume from
)
def test_unreadable_checkpoint_is_one_line(script, truncated, trained_classifier, sartaj_root, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(trained_classifier.read_bytes()[:5000] if truncated else b"not a checkpoint\n")
    config = [] if script == "evaluate.py" else ["--config", CONFIG, "--data.root", str(sartaj_root), *TINY]
    result = run_script(script, *config, "--ckpt_path", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: not a PyTorch checkpoint (another kind of file, or a truncated copy)"
    )


def test_evaluate_without_checkpoint_is_a_clear_error(sartaj_root, tmp_path):
    result = run_script("evaluate.py", "--ckpt_path", "missing.ckpt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: missing.ckpt: checkpoint not found"


@pytest.mark.slow  # a process of its own
def test_ddp_with_two_cpu_processes(sartaj_root, tmp_path):
    result = run_process(
        "train.py",
        "--config",
        CONFIG,
        "--data.root",
        str(sartaj_root),
        *TINY,
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = run_folder(tmp_path) / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert not run_folder(tmp_path, version=1).exists()  # both processes wrote to the same run folder


@pytest.mark.slow  # a process of its own
def test_ctrl_c_leaves_a_checkpoint_that_resumes(sartaj_root, tmp_path):
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        CONFIG,
        "--data.root",
        str(sartaj_root),
        *TINY,
        "--trainer.max_epochs",
        "1000",
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    checkpoints = run_folder(tmp_path) / "checkpoints"
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
    saved = load(interrupted)
    assert saved["global_step"] > 0

    result = train(sartaj_root, tmp_path, "--trainer.max_epochs", str(saved["epoch"] + 2), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states from the checkpoint" in result.stderr + result.stdout
    assert not run_folder(tmp_path, version=1).exists()
