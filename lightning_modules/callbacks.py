"""Trainer callbacks the configs add beside Lightning's own."""

from __future__ import annotations

import signal
import threading

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class GracefulInterrupt(L.Callback):
    """Makes the first Ctrl-C stop training at the next batch boundary; a second one stops at once.

    Python raises KeyboardInterrupt wherever the interpreter happens to be; when that is inside a
    weakref or `__del__` callback (frequent under autocast), the exception is printed, ignored,
    and training goes on. Raised from a batch hook instead, it takes Lightning's exception path,
    where `ModelCheckpoint(save_on_exception=True)` writes the checkpoint to resume from.
    """

    def __init__(self) -> None:
        self._requested = False
        self._previous_handler = None  # restored at teardown

    def _handle(self, signum, frame) -> None:
        self._stop_if_requested()
        self._requested = True
        rank_zero_info("Ctrl-C: stopping after this batch and saving a checkpoint (press again to stop now)")

    def _stop_if_requested(self, *args) -> None:
        if self._requested:
            raise KeyboardInterrupt

    on_train_batch_end = _stop_if_requested
    on_validation_batch_end = _stop_if_requested

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requested = False  # a Trainer fitted again starts with a clean slate
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous_handler = signal.signal(signal.SIGINT, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
