"""Shared helpers for the kernels tests: small random batches with mixed lengths."""

from __future__ import annotations

import torch


def make_batch(B: int, T: int, U: int, C: int, V: int | None = None, dtype=torch.float64, seed: int = 0,
               T_lens=None, U_lens=None, blank: int = 0):
    """logits (B, T, U+1, C), targets (B, U) avoiding blank, lengths with the max at index 0."""
    g = torch.Generator().manual_seed(seed)
    V = C if V is None else V
    logits = torch.randn(B, T, U + 1, C, generator=g, dtype=torch.float64).to(dtype)
    targets = torch.randint(1, V, (B, U), generator=g)
    targets = torch.where(targets == blank, torch.zeros_like(targets) + (blank + 1) % V, targets)
    if T_lens is None:
        T_lens = [T] + torch.randint(1, T + 1, (B - 1,), generator=g).tolist()
    if U_lens is None:
        U_lens = [U] + torch.randint(0, U + 1, (B - 1,), generator=g).tolist()
    return logits.requires_grad_(), targets, torch.tensor(T_lens), torch.tensor(U_lens)



def make_stops(B: int, T: int, seed: int = 0, most: int = 3) -> torch.Tensor:
    """Random TDT blank stops (B, T) int64: a blank from frame t may land on t + 1 .. t + k,
    k drawn from 1..most (so some longer jumps are cut, a one-frame blank never is)."""
    g = torch.Generator().manual_seed(seed)
    return torch.arange(T)[None, :] + torch.randint(1, most + 1, (B, T), generator=g)
