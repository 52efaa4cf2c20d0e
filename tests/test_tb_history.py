"""scripts/tb_history.py: a run folder's scalars per step, with seconds from the given start."""

from __future__ import annotations

import json

import pytest
from conftest import script_module
from torch.utils.tensorboard import SummaryWriter


def test_history_lists_every_step_with_its_seconds(tmp_path, capsys):
    writer = SummaryWriter(str(tmp_path))
    for step, value in enumerate([0.5, 0.625, 0.75]):
        writer.add_scalar("val/dice_per_tumor_image", value, step, walltime=1000.0 + 10 * step)
    writer.add_scalar("val/loss", 2.0, 0, walltime=1000.0)
    writer.close()
    tb_history = script_module("scripts/tb_history.py")
    tb_history.main([str(tmp_path), "val/dice_per_tumor_image", "--start", "995"])
    assert json.loads(capsys.readouterr().out) == {
        "val/dice_per_tumor_image": [[0, 5.0, 0.5], [1, 15.0, 0.625], [2, 25.0, 0.75]]
    }
    with pytest.raises(SystemExit, match="no scalar val/iou logged .*it has val/dice_per_tumor_image, val/loss"):
        tb_history.main([str(tmp_path), "val/iou", "--start", "0"])
