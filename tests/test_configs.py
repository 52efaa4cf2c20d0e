"""Every config in configs/ resolves, prints and re-parses; and resolves to what it did before
the trainer defaults moved into the code (issue 18), run folder checkpoints included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

import train
from lightning_modules.callbacks import GracefulInterrupt, RandomStateCheckpoint
from lightning_modules.checkpoints import class_at
from tests.conftest import REPO

CONFIGS = sorted(path.name for path in (REPO / "configs").glob("*.yaml"))
BEFORE = REPO / "tests" / "data" / "configs_before_issue_18"  # `--print_config` of each config before the move
CONFIGS_BEFORE = sorted(path.name for path in BEFORE.glob("*.yaml"))
# Arguments added since (issues 19 and 45), at the defaults that keep the old behaviour: a COCO export has
# its own split, so the seeded split's options do not apply to it; `sequences` reads only LGG slices.
ADDED_SINCE = {
    "datamodules.SegmentationDataModule": {
        "negatives": None,
        "boxes": None,
        "crop_size": None,
        "healthy_share": None,
        "val_fraction": 0.15,
        "max_phash_distance": 2,
        "sequences": ["t1", "flair", "t1c"],
        "head_gray": None,
        "near_copies_join_patients": False,  # a changed rule: saved models keep True (SPLIT_SETTINGS_OF_OLDER_FILES)
    },
    "datamodules.ClassificationDataModule": {
        "sequences": ["t1", "flair", "t1c"],
        "near_copies_join_patients": False,
        "head_gray": None,
    },
    "lightning_modules.SegmentationModule": {
        "arch": "unet",
        "weights_path": None,
        "members": None,
        "member_networks": None,
        "lovasz_weight": 0.0,
        "tversky_weight": 0.0,
        "focal_weight": 0.0,
        "box_weight": 1.0,
        "tta": "none",
    },
    "lightning_modules.ClassificationModule": {
        "members": None,
        "member_networks": None,
        "teachers": None,
        "distillation_weight": 0.9,
        "distillation_temperature": 4.0,
    },
}


def printed_config(capsys, *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def settings(checkpoint: ModelCheckpoint) -> dict:
    """What a ModelCheckpoint was built with (its state before any run), tensors as numbers."""
    return {key: float(value) if isinstance(value, torch.Tensor) else value for key, value in vars(checkpoint).items()}


@pytest.mark.parametrize("config", CONFIGS)
def test_printed_config_is_a_complete_config_of_the_same_run(config, capsys, tmp_path):
    printed = printed_config(capsys, "--config", str(REPO / "configs" / config), "--trainer.max_epochs", "3")
    assert yaml.safe_load(printed)["trainer"]["max_epochs"] == 3
    (tmp_path / "printed.yaml").write_text(printed)
    assert printed_config(capsys, "--config", str(tmp_path / "printed.yaml")) == printed


@pytest.mark.parametrize("config", CONFIGS_BEFORE)
def test_each_config_resolves_to_what_it_did_before_the_defaults_moved_into_code(config, capsys):
    now = yaml.safe_load(printed_config(capsys, "--config", str(REPO / "configs" / config)))
    before = yaml.safe_load((BEFORE / config).read_text())
    module_class = class_at(now["model"]["class_path"])

    # The run folder's name: the config's, else the task's.
    assert (now["trainer"]["logger"]["init_args"]["name"] or module_class.run_name) == before["trainer"]["logger"][
        "init_args"
    ]["name"]
    # The callbacks the configs listed are now the task module's own.
    callbacks = before["trainer"].pop("callbacks")
    assert now["trainer"].pop("callbacks") is None
    for logger in (now, before):
        logger["trainer"]["logger"]["init_args"].pop("name")
    for section in ("model", "data"):
        for name, default in ADDED_SINCE.get(now[section]["class_path"], {}).items():
            assert now[section]["init_args"].pop(name) == default
    assert now == before  # every other value, resolved

    module = module_class.__new__(module_class)  # configure_callbacks reads class attributes only
    module._trainer = None
    given = module.configure_callbacks()
    checkpoints = [callback for callback in given if isinstance(callback, ModelCheckpoint)]
    listed = [
        ModelCheckpoint(**entry["init_args"]) for entry in callbacks if entry["class_path"].endswith("ModelCheckpoint")
    ]
    assert [settings(callback) for callback in checkpoints] == [settings(callback) for callback in listed]
    assert {type(callback) for callback in given} == {RandomStateCheckpoint, GracefulInterrupt, ModelCheckpoint}
    (monitor,) = [entry for entry in callbacks if entry["class_path"].endswith("LearningRateMonitor")]
    assert monitor["init_args"]["logging_interval"] == "step"  # what configure_callbacks adds when there is a logger


def test_a_config_holds_only_what_its_recipe_changes():
    for config in CONFIGS:
        text = (REPO / "configs" / config).read_text()
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(lines) <= 22, f"{config}: {len(lines)} lines"
        assert "callbacks" not in text and "default_root_dir" not in text, config


def test_a_module_with_a_logger_also_logs_its_learning_rate():
    from lightning_modules import ClassificationModule

    module = ClassificationModule(model_kwargs={"width": 8, "depths": [1]})
    module._trainer = type("TrainerStub", (), {"loggers": [object()]})()
    (monitor,) = [callback for callback in module.configure_callbacks() if isinstance(callback, LearningRateMonitor)]
    assert monitor.logging_interval == "step"
    module._trainer = None
    assert not any(isinstance(callback, LearningRateMonitor) for callback in module.configure_callbacks())


def test_every_config_of_before_the_move_is_still_there():
    assert len(CONFIGS_BEFORE) == 5 and set(CONFIGS_BEFORE) <= set(CONFIGS)
    assert all(isinstance(yaml.safe_load(Path(BEFORE / name).read_text()), dict) for name in CONFIGS_BEFORE)
