"""Learning-rate schedules: a pure function of the optimizer step (and, for Eden, the epoch).

Nothing here has state of its own, so a resumed run recomputes the same learning rate from the
restored step and epoch.

    constant  linear warmup to ``lr``, then flat
    noam      linear warmup to ``lr``, then ``lr * sqrt(warmup / step)``
    cosine    linear warmup to ``lr``, then half a cosine down to ``min_lr`` at ``total_steps``
    eden      icefall's Eden: ``lr * ((s² + B²) / B²)^-0.25 * ((e² + E²) / E²)^-0.25`` times a
              linear warmup ``min(1, s / warmup_steps)``; s = step, e = completed epochs,
              B = ``lr_batches``, E = ``lr_epochs``. Roughly flat while s << B and e << E, then
              falling as s^-0.5 and e^-0.5.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trainer import OptimConfig

__all__ = ["eden_factor", "lr_at"]


def eden_factor(step: float, epoch: float, lr_batches: float, lr_epochs: float) -> float:
    """Eden's decay (without warmup); ``epoch`` counts completed epochs (0 in the first)."""
    b, e = float(lr_batches), float(lr_epochs)
    return ((step * step + b * b) / (b * b)) ** -0.25 * ((epoch * epoch + e * e) / (e * e)) ** -0.25


def lr_at(step: int, cfg: OptimConfig, epoch: int = 1) -> float:
    """Learning rate for optimizer step ``step`` (1-based) taken in epoch ``epoch`` (1-based)."""
    step = max(1, step)
    warm = max(1, cfg.warmup_steps)
    if cfg.schedule == "constant":
        return cfg.lr * min(1.0, step / warm)
    if cfg.schedule == "noam":  # linear warmup, then inverse square root, peak = lr
        return cfg.lr * min(step / warm, math.sqrt(warm / step))
    if cfg.schedule == "eden":
        if cfg.lr_batches <= 0 or cfg.lr_epochs <= 0:
            raise ValueError("optim.lr_batches and optim.lr_epochs must be > 0 for the eden schedule")
        return cfg.lr * min(1.0, step / warm) * eden_factor(step, max(0, epoch - 1), cfg.lr_batches, cfg.lr_epochs)
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown optim.schedule {cfg.schedule!r}")
    total = max(cfg.total_steps, warm + 1)
    if step <= warm:
        return cfg.lr * step / warm
    frac = min(1.0, (step - warm) / (total - warm))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))
