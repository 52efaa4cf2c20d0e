"""Callbacks that tests add to a train.py run from the command line (--trainer.callbacks+=...)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Sends its own process `signal_name` after training batch `batch` of epoch `epoch` (or its
    validation batch, `during="validation"`): SIGKILL, which nothing can catch, is a power cut or an
    OOM kill at a known place; SIGINT a Ctrl-C."""

    def __init__(self, epoch: int, batch: int, signal_name: str = "SIGKILL", during: str = "training") -> None:
        self.epoch, self.batch, self.signal, self.during = epoch, batch, signal.Signals[signal_name], during

    def _signal_if_due(self, trainer: L.Trainer, during: str, batch_idx: int) -> None:
        due = (trainer.current_epoch, batch_idx, during) == (self.epoch, self.batch, self.during)
        if due and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signal)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._signal_if_due(trainer, "training", batch_idx)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int, *args) -> None:
        self._signal_if_due(trainer, "validation", batch_idx)
