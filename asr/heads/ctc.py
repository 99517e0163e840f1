"""CTC head: a linear layer over the encoder output, blank at id 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CTCHead"]


class CTCHead(nn.Module):
    def __init__(self, input_dim: int, vocab_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(input_dim, vocab_size)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T, D) encoder output -> (B, T, V) log-probabilities."""
        return self.proj(self.dropout(enc)).log_softmax(dim=-1)

    @staticmethod
    def loss(log_probs: torch.Tensor, lens: torch.Tensor, targets: list[list[int]], blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-utterance CTC loss (B,) and a (B,) bool mask of utterances that cannot align.

        An utterance cannot align when it has fewer frames than its tokens need (one per token,
        plus one between each repeated pair). Its loss is 0 and it is reported in the mask.
        """
        device = log_probs.device
        tgt_lens = torch.tensor([len(t) for t in targets], dtype=torch.int64)
        need = torch.tensor([len(t) + sum(int(a == b) for a, b in zip(t, t[1:])) for t in targets], dtype=torch.int64)
        bad = need > lens.cpu()
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.int64)
        loss = F.ctc_loss(
            log_probs.transpose(0, 1).float(),
            flat.to(device),
            lens.to(device),
            tgt_lens.to(device),
            blank=blank,
            reduction="none",
            zero_infinity=True,
        )
        loss = torch.where(bad.to(device), torch.zeros_like(loss), loss)
        return loss, bad
