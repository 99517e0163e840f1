"""CTC head: a linear layer over the encoder output, blank at id 0."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CTCHead"]

_EDIT = None


def _edit_distances():
    """numba kernel (compiled on first use): Levenshtein distances of concatenated int64
    sequences, ``out[k]`` for the k-th (hyp, ref) pair."""
    global _EDIT
    if _EDIT is None:
        import numba

        @numba.njit(cache=False)
        def edit(hyp, hyp_lens, ref, ref_lens, out):
            h0 = r0 = 0
            for k in range(len(out)):
                n, m = hyp_lens[k], ref_lens[k]
                row = np.arange(m + 1)
                for i in range(1, n + 1):
                    diag, row[0] = row[0], i
                    for j in range(1, m + 1):
                        cur = min(row[j] + 1, row[j - 1] + 1, diag + (hyp[h0 + i - 1] != ref[r0 + j - 1]))
                        diag, row[j] = row[j], cur
                out[k] = row[m]
                h0 += n
                r0 += m

        _EDIT = edit
    return _EDIT



class CTCHead(nn.Module):
    def __init__(self, input_dim: int, vocab_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(input_dim, vocab_size)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T, D) encoder output -> (B, T, V) log-probabilities."""
        return self.proj(self.dropout(enc)).log_softmax(dim=-1)

    @staticmethod
    def token_errors(log_probs: torch.Tensor, lens: torch.Tensor, targets: list[list[int]], blank: int = 0) -> torch.Tensor:
        """(B,) edit distance between each utterance's greedy transcript (argmax per frame within
        ``lens``, repeats merged, blanks dropped) and its target tokens. A CTC model on its
        plateau (blanks and a few frequent tokens) gets almost every token wrong."""
        best = log_probs.detach().argmax(-1).cpu()
        keep = torch.ones_like(best, dtype=torch.bool)
        keep[:, 1:] = best[:, 1:] != best[:, :-1]
        keep &= (best != blank) & (torch.arange(best.shape[1])[None, :] < lens.cpu()[:, None])
        hyp_lens = keep.sum(1)
        hyp = best[keep].numpy().astype(np.int64)  # row-major: utterance by utterance
        ref = np.fromiter((t for tg in targets for t in tg), dtype=np.int64, count=sum(len(t) for t in targets))
        ref_lens = np.array([len(t) for t in targets], dtype=np.int64)
        out = np.zeros(len(targets), dtype=np.int64)
        _edit_distances()(hyp, hyp_lens.numpy().astype(np.int64), ref, ref_lens, out)
        return torch.from_numpy(out)

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
