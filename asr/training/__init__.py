"""Training: the trainer (exact resume, DDP under torchrun, mixed precision), LR schedules."""

from .schedules import lr_at
from .trainer import DataConfig, OptimConfig, TrainConfig, Trainer, evaluate

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "Trainer", "evaluate", "lr_at"]
