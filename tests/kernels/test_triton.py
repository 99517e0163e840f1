"""The Triton kernels, run by the Triton interpreter (TRITON_INTERPRET=1) on tiny CPU tensors.

The interpreter must be switched on before the kernels module is imported, so this module sets
the variable and (re)imports `kernels._triton_ops` itself. On a CUDA machine, the same kernels
are also run compiled (marked gpu).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest
import torch

import kernels
from kernels.reference import rnnt_loss_reference, tdt_loss_reference

from .helpers import make_batch, make_stops

HAVE_TRITON = importlib.util.find_spec("triton") is not None
ON_GPU = torch.cuda.is_available()

pytestmark = [
    pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable (pip install 'streaming-asr[gpu]')"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # log(0) inside masked lanes
]


def _interpreted_triton() -> None:
    """Make triton (and our kernels) run in the interpreter.

    triton decorates its own standard library (tl.max, ...) at import time, so interpret mode
    must be on before `import triton`; if something imported it earlier, re-import it.
    """
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.language.standard as std

    if type(std.max).__name__ != "InterpretedFunction":
        # Re-importing triton's native library aborts the process, so this cannot be fixed here.
        pytest.fail(
            "triton was imported before TRITON_INTERPRET=1 was set; tests/conftest.py sets it "
            "for machines without a GPU (run the tests through tests/run.sh or pytest from the repo)"
        )
    if "kernels._triton_ops" in sys.modules:
        importlib.reload(sys.modules["kernels._triton_ops"])


@pytest.fixture(scope="module", autouse=True)
def interpreted_triton():
    if ON_GPU or not HAVE_TRITON:
        yield
        return
    old = os.environ.get("TRITON_INTERPRET")
    _interpreted_triton()
    yield
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def _dev() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _leaf(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` on the kernels' device (the GPU where there is one), requiring grad."""
    return x.detach().to(_dev()).requires_grad_()


def _on_dev(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(_dev()) for t in ts]


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_rnnt_matches_reference(dtype: torch.dtype) -> None:
    logits, y, tl, ul = make_batch(3, 5, 3, 6, dtype=dtype, seed=21, T_lens=[5, 1, 4], U_lens=[3, 0, 2])
    x = logits.detach().to(_dev()).requires_grad_()
    with kernels.use_backend("triton"):
        out = kernels.rnnt_loss(x, y.to(x.device), tl.to(x.device), ul.to(x.device), reduction="none",
                                fastemit_lambda=0.2)
        g = _grad(out, x)
    ref = rnnt_loss_reference(logits, y, tl, ul, reduction="none", fastemit_lambda=0.2)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g.cpu().double(), _grad(ref, logits).double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("durations", [[0, 1, 2], [1, 3]])
def test_triton_tdt_matches_reference(durations: list[int]) -> None:
    D = len(durations)
    logits, y, tl, ul = make_batch(3, 5, 3, 5 + D, V=5, seed=22, T_lens=[5, 2, 4], U_lens=[3, 1, 0])
    x = _leaf(logits)
    with kernels.use_backend("triton"):
        out = kernels.tdt_loss(x, *_on_dev(y, tl, ul), durations, sigma=0.05, reduction="none")
        g = _grad(out, x)
    ref = tdt_loss_reference(logits, y, tl, ul, durations, sigma=0.05, reduction="none")
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-9)  # float64: sigma too (it is folded in in float64)
    numba_out = kernels.tdt_loss(logits, y, tl, ul, durations, sigma=0.05, reduction="none")
    torch.testing.assert_close(g.cpu(), _grad(numba_out, logits))  # the reference's grad is NaN on inf losses


def test_triton_tdt_blank_stops_match_reference() -> None:
    durations = [0, 1, 2, 3]
    logits, y, tl, ul = make_batch(3, 6, 3, 5 + 4, V=5, seed=25, T_lens=[6, 4, 5], U_lens=[3, 1, 0])
    stops = make_stops(3, 6, seed=25)
    x = _leaf(logits)
    with kernels.use_backend("triton"):
        out = kernels.tdt_loss(x, *_on_dev(y, tl, ul), durations, sigma=0.05, reduction="none",
                               blank_stops=_on_dev(stops)[0])
        g = _grad(out, x)
    ref = tdt_loss_reference(logits, y, tl, ul, durations, sigma=0.05, reduction="none", blank_stops=stops)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g.cpu(), _grad(ref, logits), rtol=1e-9, atol=1e-9)


def test_triton_gradcheck_and_edges() -> None:
    logits, y, tl, ul = make_batch(2, 3, 2, 4, seed=23)
    with kernels.use_backend("triton"):
        yd, tld, uld = _on_dev(y, tl, ul)
        assert torch.autograd.gradcheck(lambda x: kernels.rnnt_loss(x, yd, tld, uld, reduction="sum"), (_leaf(logits),),
                                        fast_mode=True)
        # U > T, T = 1, U = 0 in one batch
        logits, y, tl, ul = make_batch(3, 2, 5, 4, seed=24, T_lens=[2, 1, 2], U_lens=[5, 3, 0])
        x = _leaf(logits)
        out = kernels.rnnt_loss(x, *_on_dev(y, tl, ul), reduction="none")
        g = _grad(out, x)
    ref = rnnt_loss_reference(logits, y, tl, ul, reduction="none")
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(g.cpu(), _grad(ref, logits))


def test_triton_fused_and_pruned_equal_numba() -> None:
    g = torch.Generator().manual_seed(25)
    B, T, U, V, H = 2, 4, 3, 7, 8
    enc = torch.randn(B, T, H, generator=g).requires_grad_()
    pred = torch.randn(B, U + 1, H, generator=g).requires_grad_()
    w = torch.randn(V + 2, H, generator=g).requires_grad_()
    b = torch.randn(V + 2, generator=g).requires_grad_()
    y = torch.randint(1, V, (B, U), generator=g)
    tl, ul = torch.tensor([4, 3]), torch.tensor([3, 1])
    outs = []
    for backend in ("triton", "numba"):
        # the triton backend on the kernels' device (the GPU where there is one), numba on the CPU
        dev = _dev() if backend == "triton" else "cpu"
        enc_, pred_, w_, b_ = params = tuple(p.detach().to(dev).requires_grad_() for p in (enc, pred, w, b))
        y_, tl_, ul_ = y.to(dev), tl.to(dev), ul.to(dev)
        with kernels.use_backend(backend):
            tdt = kernels.fused_transducer_loss(enc_, pred_, w_, b_, y_, tl_, ul_, durations=[0, 1], tile_rows=5)
            rnnt = kernels.fused_transducer_loss(enc_, pred_, w_[:V], b_[:V], y_, tl_, ul_, tile_rows=5)
            am, lm = enc_ @ w_[:V].T, pred_ @ w_[:V].T
            pr = kernels.pruned_rnnt_loss(enc_, pred_, am, lm, y_, tl_, ul_, (w_[:V], b_[:V]), s_range=2).loss
            ptdt = kernels.pruned_rnnt_loss(enc_, pred_, am, lm, y_, tl_, ul_, (w_, b_), s_range=2, durations=[0, 1]).loss
            total = tdt + rnnt + pr + ptdt
            outs.append((total.cpu(), [g.cpu() for g in torch.autograd.grad(total, params)]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for a, c in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_triton_padding_and_impossible_alignments() -> None:
    logits, y, tl, ul = make_batch(3, 4, 3, 5, seed=26, T_lens=[4, 2, 3], U_lens=[3, 1, 0])
    poisoned = logits.detach().clone()
    for b in range(3):
        poisoned[b, tl[b]:] = float("nan")
        poisoned[b, :, ul[b] + 1:] = float("nan")
    poisoned = _leaf(poisoned)
    with kernels.use_backend("triton"):
        out = kernels.rnnt_loss(poisoned, *_on_dev(y, tl, ul), reduction="none")
        g = _grad(out, poisoned)
        # TDT with durations [2]: T = 3 cannot be landed on exactly.
        tdt, y2, tl2, ul2 = make_batch(2, 3, 1, 4 + 1, V=4, seed=27, T_lens=[3, 2], U_lens=[0, 0])
        tdt = _leaf(tdt)
        z = kernels.tdt_loss(tdt, *_on_dev(y2, tl2, ul2), [2], reduction="none", zero_infinity=True)
        gz = _grad(z, tdt)
    ref = rnnt_loss_reference(logits, y, tl, ul, reduction="none")
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(g.cpu(), torch.nan_to_num(_grad(ref, logits), nan=0.0))
    z, gz = z.detach().cpu(), gz.cpu()
    assert float(z[0]) == 0.0 and torch.isfinite(z).all() and (gz[0] == 0).all() and torch.isfinite(gz).all()


def test_triton_launch_helpers(monkeypatch) -> None:
    """CPU tensors run only in the interpreter (else a clear error, not a pointer fault); the
    lattice programs get more warps for long targets (fewer registers per thread)."""
    from kernels._triton_ops import _lattice_warps, _on

    x = torch.zeros(1, device=_dev())
    with _on(x):  # a GPU tensor on its own device; a CPU tensor here runs in the interpreter
        assert not ON_GPU or torch.cuda.current_device() == x.device.index
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="numba backend"):
        _on(torch.zeros(1))
    assert [_lattice_warps(b) for b in (1, 128, 512, 1024, 2048, 8192)] == [4, 4, 4, 8, 16, 16]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_logits_are_read_in_place(dtype) -> None:
    """fp16/bf16 logits reach the Triton row kernels as they are (no float32 copy of the
    logits, a gradient written in their dtype), with the losses and gradients of the float32
    copy's path."""
    from kernels._triton_ops import TritonBackend
    from kernels.losses import row_inputs

    logits, y, tl, ul = make_batch(2, 4, 3, 6 + 2, V=6, seed=28, T_lens=[4, 3], U_lens=[3, 2])
    half = logits.detach().to(dtype)
    assert row_inputs(TritonBackend(), half).dtype == dtype
    assert row_inputs(kernels._backend.NumbaBackend(), half).dtype == torch.float32
    ys = _on_dev(y, tl, ul)
    for fn in (lambda x: kernels.tdt_loss(x, *ys, [0, 1], sigma=0.05, reduction="none"),
               lambda x: kernels.rnnt_loss(x[..., :6].contiguous(), *ys, reduction="none")):
        with kernels.use_backend("triton"):
            x = _leaf(half)
            out = fn(x)
            g = _grad(out, x)
            x32 = _leaf(half.float())
            ref = fn(x32)
            g_ref = _grad(ref, x32).to(dtype)
        assert g.dtype == dtype
        torch.testing.assert_close(out.cpu(), ref.cpu(), rtol=0, atol=0)
        # the interpreter truncates float32 to bf16 (the GPU rounds to nearest, as torch does):
        # there the bf16 gradient may be one unit in the last place off
        ulp = 2.0 ** -7 if dtype == torch.bfloat16 and not ON_GPU else 0.0
        torch.testing.assert_close(g.cpu(), g_ref.cpu(), rtol=ulp, atol=0)
