"""Callbacks that tests add to a train.py run from the command line (--trainer.callbacks+=...)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SigkillAt(L.Callback):
    """Kills its own process with SIGKILL, which nothing can catch, after batch `batch` of epoch
    `epoch`: a power cut or an OOM kill at a known place."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
