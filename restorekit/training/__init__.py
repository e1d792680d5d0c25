"""Shared training infrastructure: configs, SR pair data, optimizers, and a resumable DDP loop.

Nothing here is specific to a model; plugins subclass :class:`Trainer` and :class:`TrainConfig`
and register a ``restorekit train NAME`` subcommand (see ``restorekit.commands.train``).
"""

from .config import Betas, ConfigError, DataConfig, TrainConfig, apply_overrides, load_config, read_config_file
from .data import DataError, Split, SRPairDataset, degrade_lr, list_images, make_lr, split_files, sr_datasets
from .optim import Lookahead, build_optimizer, ranger
from .trainer import (RunStopped, StopFlag, Trainer, TrainingDiverged, TrainingError, image_grid,
                      latest_checkpoint, list_checkpoints, load_checkpoint, load_optimizer_state, psnr)

__all__ = ["Betas", "ConfigError", "DataConfig", "DataError", "Lookahead", "RunStopped", "Split", "SRPairDataset",
           "StopFlag", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingError", "apply_overrides",
           "build_optimizer", "degrade_lr", "image_grid", "latest_checkpoint", "list_checkpoints", "list_images",
           "load_checkpoint", "load_config", "load_optimizer_state", "make_lr", "psnr", "ranger", "read_config_file",
           "split_files", "sr_datasets"]
