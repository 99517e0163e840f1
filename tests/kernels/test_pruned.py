"""Pruned RNN-T: the simple loss, the prune ranges and the pruned exact loss."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.reference import tdt_loss_reference

from .helpers import make_stops


def _inputs(B=3, T=7, U=4, V=9, H=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()  # noqa: E731
    enc, pred, w, b = mk(B, T, H), mk(B, U + 1, H), mk(V, H), mk(V)
    am, lm = mk(B, T, V), mk(B, U + 1, V)
    y = torch.randint(1, V, (B, U), generator=g)
    return enc, pred, w, b, am, lm, y, torch.tensor([T, 5, 3])[:B], torch.tensor([U, 0, 2])[:B]


def test_simple_loss_equals_rnnt_of_linear_joint() -> None:
    _, _, _, _, am, lm, y, tl, ul = _inputs()
    simple, occ = kernels.rnnt_loss_simple(am, lm, y, tl, ul, reduction="none")
    full = kernels.rnnt_loss(am[:, :, None] + lm[:, None], y, tl, ul, reduction="none")
    torch.testing.assert_close(simple, full)
    ga = torch.autograd.grad(simple.sum(), [am, lm])
    gb = torch.autograd.grad(full.sum(), [am, lm])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    assert occ.shape == (3, 7, 5) and (occ[1, 5:] == 0).all() and (occ[2, :, 3:] == 0).all()


def test_prune_ranges_are_reachable() -> None:
    _, _, _, _, am, lm, y, tl, ul = _inputs(B=3, T=7, U=6, seed=1)
    ul = torch.tensor([6, 2, 5])
    _, occ = kernels.rnnt_loss_simple(am, lm, y, tl, ul)
    for R in (2, 3, 4):
        s = kernels.get_prune_ranges(occ, tl, ul, R)
        feasible = (tl - 1) * (R - 1) >= ul - R + 1
        assert (s[feasible, 0] == 0).all()
        for b in range(3):
            assert int(s[b, tl[b] - 1]) == max(int(ul[b]) - R + 1, 0) or not feasible[b]
        assert (s[:, 1:] >= s[:, :-1]).all() and (s[:, 1:] - s[:, :-1] <= R - 1).all()
    with pytest.raises(ValueError, match="s_range = 1"):
        kernels.get_prune_ranges(occ, tl, ul, 1)


def test_full_window_equals_exact_loss_and_narrow_window_is_an_upper_bound() -> None:
    enc, pred, w, b, am, lm, y, tl, ul = _inputs()
    full = kernels.fused_transducer_loss(enc, pred, w, b, y, tl, ul, reduction="none")
    wide = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w, b), s_range=5, reduction="none")
    torch.testing.assert_close(wide.pruned_loss, full)
    gw = torch.autograd.grad(wide.pruned_loss.sum(), [enc, pred, w, b])
    gf = torch.autograd.grad(full.sum(), [enc, pred, w, b])
    for a, c in zip(gw, gf):
        torch.testing.assert_close(a, c)
    narrow = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w, b), s_range=2, reduction="none")
    assert (narrow.pruned_loss >= full - 1e-9).all()  # fewer paths, larger -log p
    torch.testing.assert_close(narrow.loss, 0.5 * narrow.simple_loss + narrow.pruned_loss)


def test_pruned_loss_gradcheck_and_callable_joint() -> None:
    enc, pred, w, b, am, lm, y, tl, ul = _inputs(seed=2)
    _, occ = kernels.rnnt_loss_simple(am, lm, y, tl, ul)
    s_begin = kernels.get_prune_ranges(occ, tl, ul, 3)
    logits = torch.randn(3, 7, 3, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: kernels.rnnt_loss_pruned(x, y, s_begin, tl, ul, reduction="sum", fastemit_lambda=0.0), (logits,)
    )
    out = kernels.pruned_rnnt_loss(
        enc, pred, am, lm, y, tl, ul, lambda e, p: torch.tanh(e + p) @ w.T + b, s_range=3, reduction="mean"
    )
    ref = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w, b), s_range=3, reduction="mean")
    torch.testing.assert_close(out.loss, ref.loss)
    grads = torch.autograd.grad(out.loss, [enc, pred, w, b, am, lm])
    assert all(torch.isfinite(g).all() for g in grads)


def test_pruned_float32_long_targets() -> None:
    enc, pred, w, b, am, lm, y, tl, ul = _inputs(B=1, T=30, U=120, V=5, H=4, dtype=torch.float32, seed=3)
    out = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, torch.tensor([30]), torch.tensor([120]), (w, b), s_range=6)
    assert torch.isfinite(out.loss)
    g = torch.autograd.grad(out.loss, [enc, pred, w, b, am, lm])
    assert all(torch.isfinite(x).all() for x in g)


DURS = [0, 1, 2, 3]


def test_pruned_tdt_full_window_equals_tdt_and_narrow_window_is_an_upper_bound() -> None:
    enc, pred, _, _, am, lm, y, tl, ul = _inputs(seed=4)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(9 + len(DURS), 8, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9 + len(DURS), generator=g, dtype=torch.float64, requires_grad=True)
    full = kernels.fused_transducer_loss(enc, pred, w, b, y, tl, ul, durations=DURS, sigma=0.05, reduction="none")
    wide = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w, b), s_range=5, reduction="none",
                                    durations=DURS, sigma=0.05)
    torch.testing.assert_close(wide.pruned_loss, full)
    gw = torch.autograd.grad(wide.pruned_loss.sum(), [enc, pred, w, b])
    gf = torch.autograd.grad(full.sum(), [enc, pred, w, b])
    for a, c in zip(gw, gf):
        torch.testing.assert_close(a, c)
    narrow = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w, b), s_range=2, reduction="none",
                                      durations=DURS, sigma=0.05)
    assert torch.isfinite(narrow.pruned_loss).all()
    assert (narrow.pruned_loss > full + 1e-6).any() and (narrow.pruned_loss >= full - 1e-9).all()
    with pytest.raises(ValueError, match="only supported for RNN-T"):
        kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w, b), durations=DURS, fastemit_lambda=0.1)
    with pytest.raises(ValueError, match="blank_stops limits TDT"):
        kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w[:9], b[:9]), blank_stops=make_stops(*enc.shape[:2]))


@pytest.mark.parametrize("with_stops", [False, True])
def test_pruned_tdt_equals_the_reference_on_a_lattice_dead_outside_the_windows(with_stops: bool) -> None:
    """The pruned TDT loss is the exact TDT loss of a full lattice whose states outside the
    windows emit neither blank nor their label (all token mass on a third token): duration
    jumps that land outside a window end their path. With blank stops, those of the full
    lattice."""
    B, T, U, V, R = 3, 9, 5, 7, 3
    g = torch.Generator().manual_seed(6)
    y = torch.randint(1, V, (B, U), generator=g)
    tl, ul = torch.tensor([9, 7, 4]), torch.tensor([5, 3, 0])
    am, lm = torch.randn(B, T, V, generator=g, dtype=torch.float64), torch.randn(B, U + 1, V, generator=g, dtype=torch.float64)
    _, occ = kernels.rnnt_loss_simple(am, lm, y, tl, ul)
    s_begin = kernels.get_prune_ranges(occ, tl, ul, R)
    logits = torch.randn(B, T, R, V + len(DURS), generator=g, dtype=torch.float64)
    full = torch.randn(B, T, U + R + 1, V + len(DURS), generator=g, dtype=torch.float64)
    yy = torch.cat([y, torch.zeros(B, R + 1, dtype=torch.long)], 1)
    for bb in range(B):
        for t in range(T):
            for u in range(U + R + 1):
                r = u - int(s_begin[bb, t])
                if 0 <= r < R:
                    full[bb, t, u] = logits[bb, t, r]
                else:  # dead state: all token mass on a token that is neither blank nor y[u]
                    full[bb, t, u, :V] = -1e4
                    full[bb, t, u, next(k for k in range(1, V) if k != int(yy[bb, u]))] = 0.0
    stops = make_stops(B, T, seed=6) if with_stops else None
    ref = tdt_loss_reference(full[:, :, : U + 1], y, tl, ul, DURS, sigma=0.03, reduction="none", blank_stops=stops)
    got = kernels.tdt_loss_pruned(logits, y, s_begin, tl, ul, DURS, sigma=0.03, reduction="none", blank_stops=stops)
    torch.testing.assert_close(got, ref)
    assert torch.isfinite(got).all()
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: kernels.tdt_loss_pruned(z, y, s_begin, tl, ul, DURS, sigma=0.03, reduction="sum", blank_stops=stops),
        (x,)
    )
    with pytest.raises(ValueError, match="no token channels"):
        kernels.tdt_loss_pruned(logits[..., :3], y, s_begin, tl, ul, DURS)


def test_simple_loss_ignores_autocast() -> None:
    """The simple loss's normalizer (a batched matmul of exponentials) stays in float32 under
    bf16 autocast: rounded to 8 bits it would move the loss and the prune windows."""
    _, _, _, _, am, lm, y, tl, ul = _inputs(T=9, V=33, dtype=torch.float32, seed=4)
    ref, occ_ref = kernels.rnnt_loss_simple(am, lm, y, tl, ul, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, occ = kernels.rnnt_loss_simple(am, lm, y, tl, ul, reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(occ, occ_ref)


def test_windows_that_cannot_reach_u_give_inf_not_memory_errors() -> None:
    """Too many labels for the frames at this window width (T = 2, U = 6, s_range = 3: the
    windows reach label 4 at most): no path, so inf (0 with zero_infinity) and a zero gradient;
    the lattice is as wide as U, not as the windows (it was written past its end)."""
    g = torch.Generator().manual_seed(3)
    B, T, U, V, H = 2, 2, 6, 5, 4
    enc, pred = torch.randn(B, T, H, generator=g), torch.randn(B, U + 1, H, generator=g)
    am, lm = torch.randn(B, T, V, generator=g), torch.randn(B, U + 1, V, generator=g)
    w = torch.randn(V, H, generator=g, requires_grad=True)
    y = torch.tensor([[1, 2, 3, 4, 1, 2], [1, 2, 0, 0, 0, 0]])
    for _ in range(3):  # memory errors showed on some runs only
        out = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, torch.tensor([2, 2]), torch.tensor([6, 2]), (w, None),
                                       s_range=3, reduction="none")
        assert math.isinf(float(out.pruned_loss[0])) and math.isfinite(float(out.pruned_loss[1]))
        z = kernels.pruned_rnnt_loss(enc, pred, am, lm, y, torch.tensor([2, 2]), torch.tensor([6, 2]), (w, None),
                                     s_range=3, zero_infinity=True)
        (gw,) = torch.autograd.grad(z.pruned_loss, w)
        assert torch.isfinite(gw).all()
        logits = torch.randn(B, T, 3, V, generator=g)
        lab = kernels.rnnt_loss_pruned(logits, y, torch.zeros(B, T, dtype=torch.long), torch.tensor([2, 2]),
                                       torch.tensor([6, 2]), reduction="none")
        assert math.isinf(float(lab[0]))


def test_pruned_inputs_are_checked() -> None:
    enc, pred, w, b, am, lm, y, tl, ul = _inputs(B=2)
    with pytest.raises(ValueError, match=r"am_logits.shape = \(3, 7, 9\) does not match enc's batch size 2"):
        kernels.pruned_rnnt_loss(enc, pred, torch.cat([am, am[:1]]), lm, y, tl, ul, (w, b))
    with pytest.raises(ValueError, match="s_range must be an int"):
        kernels.pruned_rnnt_loss(enc, pred, am, lm, y, tl, ul, (w, b), s_range=4.0)
    logits = torch.randn(2, 7, 3, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match="s_begin holds -1"):
        kernels.rnnt_loss_pruned(logits, y, torch.full((2, 7), -1), tl, ul)
    with pytest.raises(ValueError, match="s_begin holds -1"):
        kernels.prune_pred(pred, torch.full((2, 7), -1), 3)


@pytest.mark.parametrize("scale", [30.0, 60.0, 100.0])
def test_simple_loss_of_far_apart_float32_logits(scale: float) -> None:
    """Acoustic and label sides peaking on different tokens, far apart: the float32 simple
    loss equals the float64 reference (its normalizer's sums underflowed: NaN at 60)."""
    am = torch.tensor([[[scale, -scale, 0.0]] * 2])
    lm = torch.tensor([[[-scale, scale, 0.0]] * 2])
    y, tl, ul = torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1])
    simple, occ = kernels.rnnt_loss_simple(am, lm, y, tl, ul, reduction="none")
    ref = kernels.rnnt_loss((am[:, :, None] + lm[:, None]).double(), y, tl, ul, reduction="none")
    assert torch.isfinite(occ).all()
    torch.testing.assert_close(simple.double(), ref, rtol=1e-5, atol=1e-5)
