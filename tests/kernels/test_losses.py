"""rnnt_loss / tdt_loss (numba on CPU) against the float64 reference, warprnnt-numba and autograd."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.reference import rnnt_loss_reference, tdt_loss_reference

from .helpers import make_batch, make_stops

DURS = [0, 1, 2, 3]


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("fastemit", [0.0, 0.3])
def test_rnnt_matches_reference(reduction: str, fastemit: float) -> None:
    logits, y, tl, ul = make_batch(4, 6, 4, 7, seed=1)
    out = kernels.rnnt_loss(logits, y, tl, ul, blank=0, reduction=reduction, fastemit_lambda=fastemit)
    ref = rnnt_loss_reference(logits, y, tl, ul, blank=0, reduction=reduction, fastemit_lambda=fastemit)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_grad(out, logits), _grad(ref, logits), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("blank", [0, 6])
def test_rnnt_float32_and_nonzero_blank(blank: int) -> None:
    logits, y, tl, ul = make_batch(3, 5, 3, 7, dtype=torch.float32, seed=2, blank=blank)
    y = torch.where(y == blank, torch.ones_like(y), y)
    out = kernels.rnnt_loss(logits, y, tl, ul, blank=blank, reduction="none")
    assert out.dtype == torch.float32
    ref = rnnt_loss_reference(logits, y, tl, ul, blank=blank, reduction="none")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grad(out, logits).double(), _grad(ref, logits).double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("durations", [DURS, [1, 2], [0, 2, 4]])
def test_tdt_matches_reference(reduction: str, durations: list[int]) -> None:
    D = len(durations)
    logits, y, tl, ul = make_batch(4, 6, 3, 6 + D, V=6, seed=3)
    out = kernels.tdt_loss(logits, y, tl, ul, durations, sigma=0.05, reduction=reduction)
    ref = tdt_loss_reference(logits, y, tl, ul, durations, sigma=0.05, reduction=reduction)
    finite = torch.isfinite(ref)
    torch.testing.assert_close(out, ref)
    if bool(finite.all()):
        torch.testing.assert_close(_grad(out, logits), _grad(ref, logits), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("durations", [DURS, [1, 2, 4]])
def test_tdt_blank_stops_match_reference(durations: list[int]) -> None:
    D = len(durations)
    logits, y, tl, ul = make_batch(4, 7, 3, 6 + D, V=6, seed=8, T_lens=[7, 6, 3, 5], U_lens=[3, 2, 1, 0])
    stops = make_stops(4, 7, seed=8)
    out = kernels.tdt_loss(logits, y, tl, ul, durations, sigma=0.05, reduction="none", blank_stops=stops)
    ref = tdt_loss_reference(logits, y, tl, ul, durations, sigma=0.05, reduction="none", blank_stops=stops)
    torch.testing.assert_close(out, ref)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(_grad(out, logits), _grad(ref, logits), rtol=1e-9, atol=1e-10)
    free = kernels.tdt_loss(logits, y, tl, ul, durations, sigma=0.05, reduction="none")
    assert (out > free + 1e-6).any() and (out >= free - 1e-12).all()


def test_tdt_blank_stops_are_checked() -> None:
    logits, y, tl, ul = make_batch(2, 4, 2, 4 + 3, V=4, seed=9)
    with pytest.raises(ValueError, match=r"blank_stops.shape = \(2, 3\); expected \(2, 4\)"):
        kernels.tdt_loss(logits, y, tl, ul, [0, 1, 2], blank_stops=make_stops(2, 3))
    with pytest.raises(ValueError, match="blank_stops.dtype"):
        kernels.tdt_loss(logits, y, tl, ul, [0, 1, 2], blank_stops=make_stops(2, 4).float())


def test_gradcheck_float64() -> None:
    logits, y, tl, ul = make_batch(2, 3, 2, 4, seed=4)
    assert torch.autograd.gradcheck(lambda x: kernels.rnnt_loss(x, y, tl, ul, reduction="sum"), (logits,))
    tdt_logits, y2, tl2, ul2 = make_batch(2, 4, 2, 4 + 3, V=4, seed=5)
    assert torch.autograd.gradcheck(
        lambda x: kernels.tdt_loss(x, y2, tl2, ul2, [0, 1, 2], sigma=0.1, reduction="mean"), (tdt_logits,)
    )


def test_fastemit_keeps_value_and_scales_label_gradient() -> None:
    logits, y, tl, ul = make_batch(2, 4, 3, 5, seed=6)
    a = kernels.rnnt_loss(logits, y, tl, ul, reduction="sum")
    b = kernels.rnnt_loss(logits, y, tl, ul, reduction="sum", fastemit_lambda=0.5)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(_grad(a, logits), _grad(b, logits))


def test_against_warprnnt_numba() -> None:
    warp = pytest.importorskip("warprnnt_numba", reason="warprnnt-numba is not installed")
    logits, y, tl, ul = make_batch(3, 6, 4, 8, dtype=torch.float32, seed=7)
    for lam in (0.0, 0.2):
        ours = kernels.rnnt_loss(logits, y, tl, ul, reduction="none", fastemit_lambda=lam)
        lp = torch.log_softmax(logits, -1)
        theirs = warp.RNNTLossNumba(blank=0, reduction="none", fastemit_lambda=lam)(
            lp, y.int().contiguous(), tl.int(), ul.int()
        )
        # NeMo's CPU kernel reports (1 + lambda) * loss; we keep the value unchanged (FastEmit
        # only changes gradients), so values are compared at lambda = 0 only.
        if lam == 0.0:
            torch.testing.assert_close(ours, theirs.view(-1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_grad(ours, logits), _grad(theirs, logits), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("T,U", [(1, 0), (1, 3), (4, 0), (2, 6)])
def test_edge_shapes(T: int, U: int) -> None:
    logits, y, tl, ul = make_batch(2, T, U, 5, seed=8, T_lens=[T, T], U_lens=[U, U // 2])
    out = kernels.rnnt_loss(logits, y, tl, ul, reduction="none")
    ref = rnnt_loss_reference(logits, y, tl, ul, reduction="none")
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(_grad(out, logits), _grad(ref, logits))
    tdt_logits, y2, tl2, ul2 = make_batch(2, T, U, 5 + 3, V=5, seed=9, T_lens=[T, T], U_lens=[U, U // 2])
    out = kernels.tdt_loss(tdt_logits, y2, tl2, ul2, [0, 1, 2])
    ref = tdt_loss_reference(tdt_logits, y2, tl2, ul2, [0, 1, 2])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(_grad(out, tdt_logits), _grad(ref, tdt_logits))


def test_very_long_targets() -> None:
    # U = 2000 labels on 3 frames: the lattice is 3 x 2001, cheap with V = 3.
    T, U, V = 3, 2000, 3
    logits, y, tl, ul = make_batch(1, T, U, V, dtype=torch.float32, seed=10)
    out = kernels.rnnt_loss(logits, y, tl, ul, reduction="none")
    ref = rnnt_loss_reference(logits, y, tl, ul, reduction="none")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-3)
    g = _grad(out, logits)
    assert torch.isfinite(g).all()
    tdt_logits, y2, tl2, ul2 = make_batch(1, T, U, V + 2, V=V, dtype=torch.float32, seed=11)
    out = kernels.tdt_loss(tdt_logits, y2, tl2, ul2, [0, 1])
    assert torch.isfinite(out).all() and torch.isfinite(_grad(out, tdt_logits)).all()


def test_padding_never_leaks() -> None:
    logits, y, tl, ul = make_batch(3, 5, 4, 6, seed=12, T_lens=[5, 3, 2], U_lens=[4, 2, 0])
    out = kernels.rnnt_loss(logits, y, tl, ul, reduction="none")
    g = _grad(out, logits)
    poisoned = logits.detach().clone()
    y2 = y.clone()
    for b in range(3):
        poisoned[b, tl[b]:] = float("nan")
        poisoned[b, :, ul[b] + 1:] = float("nan")
        y2[b, ul[b]:] = -7  # padded targets may hold anything
    poisoned.requires_grad_()
    out2 = kernels.rnnt_loss(poisoned, y2, tl, ul, reduction="none")
    g2 = _grad(out2, poisoned)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(g, g2)
    for b in range(3):
        assert (g2[b, tl[b]:] == 0).all() and (g2[b, :, ul[b] + 1:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype: torch.dtype) -> None:
    logits, y, tl, ul = make_batch(2, 5, 3, 6, dtype=dtype, seed=13)
    out = kernels.rnnt_loss(logits, y, tl, ul, reduction="none")
    assert out.dtype == torch.float32
    ref = rnnt_loss_reference(logits, y, tl, ul, reduction="none")  # float64 of the same half values
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = _grad(out, logits)
    assert g.dtype == dtype
    torch.testing.assert_close(g.double(), _grad(ref, logits).double(), rtol=1e-2, atol=1e-3)


def test_impossible_alignment_and_zero_infinity() -> None:
    # TDT with durations [2] and T = 3: no blank lands exactly on t = 3.
    logits, y, tl, ul = make_batch(2, 3, 1, 4 + 1, V=4, seed=14, T_lens=[3, 2], U_lens=[0, 0])
    out = kernels.tdt_loss(logits, y, tl, ul, [2], reduction="none")
    out_v = out.detach()
    assert math.isinf(float(out_v[0])) and math.isfinite(float(out_v[1]))
    assert (_grad(out, logits)[0] == 0).all()
    z = kernels.tdt_loss(logits, y, tl, ul, [2], reduction="none", zero_infinity=True)
    assert float(z.detach()[0]) == 0.0 and float(z.detach()[1]) == float(out_v[1])
    g = _grad(z, logits)
    assert (g[0] == 0).all() and torch.isfinite(g).all()
    zm = kernels.tdt_loss(logits, y, tl, ul, [2], reduction="mean", zero_infinity=True)
    assert math.isclose(float(zm.detach()), float(out_v[1]) / 2)


def test_validation_errors() -> None:
    logits, y, tl, ul = make_batch(2, 4, 3, 5, seed=15)
    with pytest.raises(ValueError, match=r"logit_lengths\[0\] = 9"):
        kernels.rnnt_loss(logits, y, torch.tensor([9, 2]), ul)
    with pytest.raises(ValueError, match=r"target_lengths\[1\] = 4"):
        kernels.rnnt_loss(logits, y, tl, torch.tensor([3, 4]))
    bad = y.clone()
    bad[0, 1] = 0
    with pytest.raises(ValueError, match=r"targets\[0, 1\] = 0 equals the blank"):
        kernels.rnnt_loss(logits, bad, tl, torch.tensor([3, 3]))
    bad[0, 1] = 5
    with pytest.raises(ValueError, match=r"targets\[0, 1\] = 5 is out of range"):
        kernels.rnnt_loss(logits, bad, tl, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="logits.dtype"):
        kernels.rnnt_loss(logits.detach().long(), y, tl, ul)
    with pytest.raises(ValueError, match="targets.dtype"):
        kernels.rnnt_loss(logits, y.float(), tl, ul)
    with pytest.raises(ValueError, match=r"targets.shape\[1\] = 2"):
        kernels.rnnt_loss(logits, y[:, :2], tl, ul)
    with pytest.raises(ValueError, match="4 dimensions"):
        kernels.rnnt_loss(logits[0], y, tl, ul)
    with pytest.raises(ValueError, match="reduction='avg'"):
        kernels.rnnt_loss(logits, y, tl, ul, reduction="avg")
    with pytest.raises(ValueError, match="one device"):
        kernels.rnnt_loss(logits, y.to("meta"), tl, ul)
    with pytest.raises(ValueError, match="blank = 7"):
        kernels.rnnt_loss(logits, y, tl, ul, blank=7)
    with pytest.raises(ValueError, match=r"durations\[1\] = -1"):
        kernels.tdt_loss(logits, y, tl, ul, [0, -1])
    with pytest.raises(ValueError, match="at least one value > 0"):
        kernels.tdt_loss(logits, y, tl, ul, [0])
    with pytest.raises(ValueError, match="logit_lengths must be a torch.Tensor, got list"):
        kernels.rnnt_loss(logits, y, [4, 4], ul)
    with pytest.raises(ValueError, match="blank must be an int token id, got 1.5"):
        kernels.rnnt_loss(logits, y, tl, ul, blank=1.5)


def test_nan_logits_give_a_nan_loss_and_a_nan_gradient() -> None:
    """NaN in an utterance's logits: its loss and its gradient are NaN (zeros would pass a
    gradient check as a clean step), the others' are untouched, zero_infinity or not."""
    logits, y, tl, ul = make_batch(2, 4, 3, 5 + 2, V=5, seed=16)
    clean = {"rnnt": lambda x: kernels.rnnt_loss(x[..., :5], y, tl, ul, reduction="none"),
             "tdt": lambda x: kernels.tdt_loss(x, y, tl, ul, [0, 1], reduction="none", zero_infinity=True)}
    for name, loss in clean.items():
        ref = _grad(loss(logits), logits)
        x = logits.detach().clone()
        x[0, 1, 1, 2] = float("nan")
        x.requires_grad_()
        out = loss(x)
        g = _grad(out, x)
        assert math.isnan(float(out[0])) and math.isfinite(float(out[1])), name
        assert torch.isnan(g[0]).any() and torch.equal(g[1], ref[1]), name


def test_numba_kernels_run_on_torchs_thread_count():
    """The numba kernels use torch's intra-op thread count (``TrainConfig.threads``), not numba's
    default of every core: with one torch thread per DDP process they used both cores anyway."""
    import numba

    B, T, U, V = 2, 6, 3, 5
    logits = torch.randn(B, T, U + 1, V)
    y = torch.randint(1, V, (B, U))
    lens_t, lens_u = torch.full((B,), T), torch.full((B,), U)
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            if threads > numba.config.NUMBA_NUM_THREADS:
                continue
            torch.set_num_threads(threads)
            kernels.rnnt_loss(logits, y, lens_t, lens_u)
            assert numba.get_num_threads() == threads
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("env, want", [({"OMP_NUM_THREADS": "1"}, 1), ({"OMP_NUM_THREADS": "3"}, 3),
                                       ({"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}, 2)])
def test_importing_kernels_sizes_numbas_pool_by_omp_num_threads(env, want):
    """torchrun sets OMP_NUM_THREADS=1 per process; numba's pool then has one thread, not one per
    core (two such processes on 2 cores spent most of each step in the idle threads' spin-waits:
    4-10 s a step of the mini Conformer against 0.6 s). An explicit NUMBA_NUM_THREADS wins."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", "import kernels, numba; print(numba.config.NUMBA_NUM_THREADS)"],
                       env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) == want
