"""CTC greedy decoding, batched, with token timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Hypothesis", "ctc_greedy"]


@dataclass
class Hypothesis:
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # encoder frame of each token's first emission
    score: float = 0.0


def ctc_greedy(log_probs: torch.Tensor, lens: torch.Tensor, blank: int = 0) -> list[Hypothesis]:
    """Best path: argmax per frame, repeats merged, blanks removed.

    Args:
        log_probs: (B, T, V)
        lens: (B,) valid frames
    """
    best, idx = log_probs.max(dim=-1)  # (B, T)
    T = idx.shape[1]
    valid = torch.arange(T, device=idx.device)[None, :] < lens[:, None].to(idx.device)
    prev = torch.nn.functional.pad(idx, (1, 0), value=blank)[:, :-1]
    emit = (idx != blank) & (idx != prev) & valid
    scores = (best * valid).sum(dim=1)
    hyps = []
    for b in range(idx.shape[0]):
        frames = emit[b].nonzero().flatten()
        hyps.append(Hypothesis(idx[b, frames].tolist(), frames.tolist(), float(scores[b])))
    return hyps
