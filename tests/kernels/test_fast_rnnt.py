"""Cross-check against k2's fast_rnnt (optional: skipped when it is not installed)."""

from __future__ import annotations

import pytest
import torch

import kernels

from .helpers import make_batch

fast_rnnt = pytest.importorskip("fast_rnnt", reason="fast_rnnt (k2's losses) is not installed")


def _boundary(tl: torch.Tensor, ul: torch.Tensor) -> torch.Tensor:
    b = torch.zeros(len(tl), 4, dtype=torch.int64)
    b[:, 2], b[:, 3] = ul, tl
    return b


def test_full_loss_matches_fast_rnnt() -> None:
    logits, y, tl, ul = make_batch(3, 6, 4, 7, dtype=torch.float32, seed=31)
    ours = kernels.rnnt_loss(logits, y, tl, ul, reduction="none")
    theirs = fast_rnnt.rnnt_loss(logits, y, 0, _boundary(tl, ul), reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (ga,) = torch.autograd.grad(ours.sum(), logits)
    (gb,) = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_pruned_loss_matches_fast_rnnt_on_the_same_ranges() -> None:
    B, T, U, V, R = 3, 8, 5, 7, 3
    g = torch.Generator().manual_seed(32)
    am, lm = torch.randn(B, T, V, generator=g), torch.randn(B, U + 1, V, generator=g)
    y = torch.randint(1, V, (B, U), generator=g)
    tl, ul = torch.tensor([8, 6, 5]), torch.tensor([5, 3, 4])
    _, occ = kernels.rnnt_loss_simple(am, lm, y, tl, ul)
    s_begin = kernels.get_prune_ranges(occ, tl, ul, R)
    ranges = s_begin[:, :, None] + torch.arange(R)
    logits = torch.randn(B, T, R, V, generator=g, requires_grad=True)
    ours = kernels.rnnt_loss_pruned(logits, y, s_begin, tl, ul, reduction="none")
    theirs = fast_rnnt.rnnt_loss_pruned(logits, y, ranges, 0, _boundary(tl, ul), reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (ga,) = torch.autograd.grad(ours.sum(), logits)
    (gb,) = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
