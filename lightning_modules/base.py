"""Training machinery every task module shares: optimizer, schedule, pretrained-weight
initialisation, start weights from trained models of the task (fine-tuning one, or an ensemble of
several), exact resume, image logging."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from matplotlib.figure import Figure

from common.errors import ConfigError, check_range
from datamodules.base import CachedDataModule
from datamodules.fingerprints import Fingerprints
from lightning_modules.callbacks import GracefulInterrupt, RandomStateCheckpoint
from lightning_modules.checkpoints import member_reference, run_folder_checkpoints
from lightning_modules.models import MeanOfLogits
from lightning_modules.optim import DecayName, OptimizerName, create_optimizer, create_warmup_decay_schedule
from lightning_modules.trained_model import TrainedModel


class TaskModule(L.LightningModule):
    """Base class holding the optimization options once, for every task, and what every run of
    one gets: its run folder's checkpoints, Ctrl-C handling and exact resume.

    Subclasses take their own arguments plus **kwargs passed on to this __init__;
    the hyperparameters saved here then include both (Lightning walks the init frames).

    Args:
        optimizer: "adam", "adamw" or "adopt".
        lr: base learning rate, reached at the end of the warmup.
        weight_decay: L2 (adam, adopt) or decoupled (adamw) weight decay.
        warmup_fraction: share of all optimizer steps spent warming up linearly from 0.
        lr_decay: shape of the decay from the base lr to 0 after the warmup.
        compile: run the network through `torch.compile` while training (its first steps then
            take longer; see BENCHMARKS.md). Checkpoints, export and resume are unaffected.
    """

    run_name = "task"  # the run folder's parent, <default_root_dir>/<run_name>/version_N, unless a config names it
    checkpoint_monitor = "val/loss"  # what best.ckpt is the best of (higher is better)
    fitted_buffers: tuple[str, ...] = ()  # buffers fitted on validation outputs, not trained (callbacks.WeightEMA)
    network_arguments: tuple[str, ...] = ()  # the hyperparameters that build the network (members' may differ)

    def __init__(
        self,
        optimizer: OptimizerName = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.25,
        lr_decay: DecayName = "cosine",
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_range("lr", lr, 0, low_open=True)
        check_range("weight_decay", weight_decay, 0)
        check_range("warmup_fraction", warmup_fraction, 0, 1, high_open=True)
        self.save_hyperparameters()
        # Fingerprints of the images that the models this one starts from saw (pretrained encoder, fine-tuned
        # model, ensemble members), which checkpoints keep so that evaluation counts them as seen.
        self.pretraining_fingerprints: dict[str, torch.Tensor] | None = None

    def fitted(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The fitted buffer `name` on the device of `like`, the outputs it post-processes: callers keep
        outputs where they like (evaluate.py gathers them on the CPU while the network runs on a GPU)."""
        return self.get_buffer(name).to(like.device)

    @staticmethod
    def network_of(hparams: Mapping) -> str:
        """The network these hyperparameters build, in words: trained weights fit it when the words match."""
        raise NotImplementedError

    def member_arguments(self) -> list[dict]:
        """The arguments that build each network of this module, one per ensemble member (or one): the
        module's `network_arguments`, with a member's own where `member_networks` records them."""
        hp = self.hparams
        count = len(hp.get("members") or [None])
        own = hp.get("member_networks") or [{} for _ in range(count)]
        if len(own) != count:
            raise ConfigError(f"member_networks: {len(own)} entries for {count} members")
        if unknown := sorted({name for entry in own for name in entry} - set(self.network_arguments)):
            raise ConfigError(
                f"member_networks: {', '.join(unknown)} do not build a network (a member's: {', '.join(self.network_arguments)})"
            )
        return [{**{name: hp[name] for name in self.network_arguments}, **entry} for entry in own]

    def load_pretrained_weights(self) -> None:
        """Copy pretrained weights named by the hyperparameters into the network (tasks override this).

        Called when a fit starts from scratch, never when a checkpoint is loaded or resumed: the
        checkpoint holds every weight, so it loads on machines without the pretrained files and
        without network access."""

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # set by now when resuming: the checkpoint is being restored
            self.load_pretrained_weights()

    def load_trained_weights(
        self,
        paths: list[str],
        datamodule: CachedDataModule | None,
        loaded: Mapping[str, TrainedModel] | None = None,
    ) -> None:
        """Every weight of the trained models of this task at `paths` (checkpoints, run folders or model files):
        one to fine-tune, or the members of the ensemble (models.MeanOfLogits) this module was built as; each
        checked against this run's `datamodule` (set up) when there is one. `loaded`: files the caller holds
        loaded already, by path (read again otherwise). The fitted buffers (temperature, thresholds) start from
        the first's where they fit; scripts/recalibrate.py fits an ensemble's own."""
        members = self.net.members if isinstance(self.net, MeanOfLogits) else [self.net]
        if len(paths) != len(members):
            raise ConfigError(f"{len(paths)} trained models to load into a module built for {len(members)}")
        sources = [
            self._checked_start(path, datamodule, arguments, loaded or {})
            for path, arguments in zip(paths, self.member_arguments())
        ]
        for (source, network), member in zip(sources, members):
            member.load_state_dict(network.state_dict())
            rank_zero_info(f"{type(self).__name__}: every weight from {source.checkpoint}")
        first = sources[0][0].module
        if all(self.get_buffer(name).shape == first.get_buffer(name).shape for name in self.fitted_buffers):
            for name in self.fitted_buffers:
                self.get_buffer(name).copy_(first.get_buffer(name))
        seen = [source.training_fingerprints for source, _ in sources if source.training_fingerprints is not None]
        self.pretraining_fingerprints = Fingerprints.union(seen).to_state() if seen else None

    def _checked_start(
        self, path: str, datamodule: CachedDataModule | None, arguments: Mapping, loaded: Mapping[str, TrainedModel]
    ) -> tuple[TrainedModel, torch.nn.Module]:
        """The trained model of this task at `path` and its network (`PATH#K`: member K of the ensemble at
        PATH), if it is the network `arguments` build here and, with a `datamodule`, it was trained on
        that data and split or on none of its images (else its validation images could be among this
        run's training images, or the reverse)."""
        path, index = member_reference(path)
        source = loaded.get(path) or TrainedModel.load(path, type(self), torch.device("cpu"))
        network = source.module.net
        if isinstance(network, MeanOfLogits) and index is None:
            count = len(network.members)
            raise ConfigError(
                f"{source.checkpoint}: an ensemble of {count} already; name its members ({path}#0 to {path}#{count - 1})"
            )
        theirs = self.network_of({**source.module.hparams, **source.module.member_arguments()[index or 0]})
        ours = self.network_of({**self.hparams, **arguments})
        if theirs != ours:
            raise ConfigError(f"{source.checkpoint}: {theirs}; this run builds {ours}")
        seen = source.training_fingerprints
        if datamodule is not None and (difference := source.split_difference(datamodule)):
            if seen is None or seen.shares_images_with(datamodule.training_fingerprints):
                raise ConfigError(
                    f"{source.checkpoint}: start weights {difference}, and some of this run's images among them "
                    "(or no record of them): train on the data and split it trained on, or on images it never saw"
                )
        return source, network if index is None else member_network(source, index)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.pretraining_fingerprints:
            checkpoint["pretraining_fingerprints"] = self.pretraining_fingerprints

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.pretraining_fingerprints = checkpoint.get("pretraining_fingerprints")

    def configure_callbacks(self) -> list[L.Callback]:
        # Part of the module, not of a config a user might edit: without them a run folder lacks its
        # checkpoints, Ctrl-C loses the epoch in progress, a resume is not exact. (They replace
        # callbacks of the same types given to the Trainer.)
        callbacks = [RandomStateCheckpoint(), GracefulInterrupt(), *run_folder_checkpoints(self.checkpoint_monitor)]
        if self._trainer is not None and self._trainer.loggers:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks

    def setup(self, stage: str) -> None:
        # NHWC convolutions run about 1.2x faster on CPU (oneDNN) and on tensor-core GPUs; the
        # parameters are converted in place, so optimizer references stay valid.
        self.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit":
            # In place (nn.Module.compile): parameter names, and so checkpoints, stay those of the network.
            self.net.compile()

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = create_optimizer(self, hp.optimizer, hp.lr, hp.weight_decay)
        schedule = create_warmup_decay_schedule(
            optimizer, self.trainer.estimated_stepping_batches, hp.warmup_fraction, hp.lr_decay
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def log_figure(self, tag: str, figure: Figure) -> None:
        """Write a matplotlib figure to TensorBoard (when it is a logger)."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, figure, self.current_epoch, close=False)


def member_network(source: TrainedModel, index: int) -> torch.nn.Module:
    """Member `index` (from 0) of the ensemble `source`; refused when it has no such member."""
    network = source.module.net
    count = len(network.members) if isinstance(network, MeanOfLogits) else None
    if count is None or index >= count:
        held = f"an ensemble of {count}" if count else "not an ensemble"
        raise ConfigError(f"{source.checkpoint}: has no member {index} ({held})")
    return network.members[index]
