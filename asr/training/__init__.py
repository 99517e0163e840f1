"""Training: the trainer, LR schedules, checkpoints (DDP, AMP and exact resume are next)."""

from .trainer import DataConfig, OptimConfig, TrainConfig, Trainer, evaluate

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "Trainer", "evaluate"]
