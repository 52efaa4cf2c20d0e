"""Trainer callbacks beside Lightning's own: those every task module adds (TaskModule.configure_callbacks),
and an exponential moving average of the weights that a config may add."""

from __future__ import annotations

import os
import random
import signal
import threading

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
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
        self._trainer_pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        # A terminal's Ctrl-C reaches the whole process group, so DataLoader workers (forked with this
        # handler) get it too: only the trainer's process acts on it, and says so once.
        if os.getpid() != self._trainer_pid:
            return
        self._stop_if_requested()
        self._requested = True
        rank_zero_info("Ctrl-C: stopping after this batch and saving a checkpoint (press again to stop now)")

    def _stop_if_requested(self, *args) -> None:
        if self._requested:
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self._requested:
            # Lightning logs a step's metrics after this hook: log them first, or the last step
            # trained would be missing from TensorBoard (a resumed run goes on with the next one).
            # Lightning has no public call that flushes a step's logged metrics early; its loop calls these.
            trainer._logger_connector.on_batch_end()
            trainer._logger_connector.update_train_step_metrics()
        self._stop_if_requested()

    on_validation_batch_end = _stop_if_requested

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed after Lightning's signal connector has noted the handlers to restore when the fit ends,
        # also when it ends in an exception (when callbacks' `teardown` is not called): not this one then.
        self._requested = False  # a Trainer fitted again starts with a clean slate
        self._trainer_pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous_handler = signal.signal(signal.SIGINT, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


class RandomStateCheckpoint(L.Callback):
    """Stores the global random states (torch, CUDA, numpy, Python) in every checkpoint and restores
    them on resume, so that what draws from them (weight init aside: dropout, mixup) draws after a
    resume exactly what it would have drawn in an uninterrupted run.

    Kept as tensors and plain Python values, which `torch.load(weights_only=True)` accepts."""

    def state_dict(self) -> dict:
        _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "position": position,
                "has_gauss": has_gauss,
                "cached_gaussian": cached_gaussian,
            },
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        numpy_state = state_dict["numpy"]
        np.random.set_state(
            (
                "MT19937",
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        version, internal_state, gauss = state_dict["python"]
        random.setstate((version, tuple(internal_state), gauss))


class WeightEMA(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights (validated, checkpointed and exported in
    place of the trained ones), which leaves out what a task module fits on validation outputs.

    Those buffers (the module's `fitted_buffers`: temperature, thresholds, ...) are fitted on the
    averaged weights' outputs after Lightning has swapped the trained weights back in; averaging them
    with earlier fits would blur them (an infinite threshold would turn into NaN), so the average
    takes them as fitted, before it is saved and when training ends. Add it in a config:

        trainer:
          callbacks: [{class_path: lightning_modules.callbacks.WeightEMA, init_args: {decay: 0.999}}]
    """

    def _take_fitted_buffers(self, pl_module: L.LightningModule) -> None:
        if self._average_model is None:
            return
        average = self._average_model.module
        for name in getattr(pl_module, "fitted_buffers", ()):
            average.get_buffer(name).copy_(pl_module.get_buffer(name))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._take_fitted_buffers(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_fitted_buffers(pl_module)
        super().on_train_end(trainer, pl_module)
