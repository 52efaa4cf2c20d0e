"""Callbacks that tests add to a train.py run from the command line (--trainer.callbacks+=...)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Sends its own process `signal_name` after batch `batch` of epoch `epoch`: SIGKILL, which
    nothing can catch, is a power cut or an OOM kill at a known place; SIGINT a Ctrl-C."""

    def __init__(self, epoch: int, batch: int, signal_name: str = "SIGKILL") -> None:
        self.epoch, self.batch, self.signal = epoch, batch, signal.Signals[signal_name]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signal)
