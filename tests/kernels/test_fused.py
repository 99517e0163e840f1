"""fused_transducer_loss == the materialized joint + rnnt_loss / tdt_loss, values and every gradient."""

from __future__ import annotations

import pytest
import torch

import kernels

PARAMS = ("enc", "pred", "weight", "bias")


def _joint_inputs(B: int, T: int, U: int, C: int, H: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_()
    pred = torch.randn(B, U + 1, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(C, H, generator=g) / H**0.5).to(dtype).requires_grad_()
    bias = (0.1 * torch.randn(C, generator=g)).to(dtype).requires_grad_()
    return enc, pred, weight, bias


def _materialized(enc, pred, weight, bias, activation: str) -> torch.Tensor:
    z = enc[:, :, None, :] + pred[:, None, :, :]
    h = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda x: x}[activation](z)
    return h @ weight.T + bias


def _compare(fused: torch.Tensor, mat: torch.Tensor, inputs, rtol: float) -> None:
    torch.testing.assert_close(fused, mat, rtol=rtol, atol=rtol)
    gf = torch.autograd.grad(fused.sum(), inputs)
    gm = torch.autograd.grad(mat.sum(), inputs)
    for name, a, b in zip(PARAMS, gf, gm):
        scale = b.abs().max().clamp(min=1e-12)
        err = float((a - b).abs().max() / scale)
        assert err < rtol, f"grad {name}: relative error {err:.2e}"


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("tile_rows", [1, 7, 1024])
def test_fused_rnnt_equals_materialized(activation: str, tile_rows: int) -> None:
    B, T, U, V, H = 3, 6, 4, 9, 8
    enc, pred, w, b = _joint_inputs(B, T, U, V, H, seed=1)
    y = torch.randint(1, V, (B, U))
    tl, ul = torch.tensor([6, 4, 1]), torch.tensor([4, 0, 2])
    fused = kernels.fused_transducer_loss(enc, pred, w, b, y, tl, ul, activation=activation, reduction="none",
                                          tile_rows=tile_rows, fastemit_lambda=0.1)
    mat = kernels.rnnt_loss(_materialized(enc, pred, w, b, activation), y, tl, ul, reduction="none",
                            fastemit_lambda=0.1)
    _compare(fused, mat, (enc, pred, w, b), 1e-5)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_fused_tdt_equals_materialized(reduction: str) -> None:
    B, T, U, V, H, durs = 3, 7, 3, 8, 8, [0, 1, 2, 3]
    enc, pred, w, b = _joint_inputs(B, T, U, V + len(durs), H, seed=2)
    y = torch.randint(1, V, (B, U))
    tl, ul = torch.tensor([7, 5, 2]), torch.tensor([3, 1, 0])
    fused = kernels.fused_transducer_loss(enc, pred, w, b, y, tl, ul, durations=durs, sigma=0.05,
                                          reduction=reduction, tile_rows=5)
    mat = kernels.tdt_loss(_materialized(enc, pred, w, b, "tanh"), y, tl, ul, durs, sigma=0.05, reduction=reduction)
    _compare(fused, mat, (enc, pred, w, b), 1e-5)


def test_fused_tdt_blank_stops_equal_materialized() -> None:
    B, T, U, V, H, durs = 3, 7, 3, 8, 8, [0, 1, 2, 3]
    enc, pred, w, b = _joint_inputs(B, T, U, V + len(durs), H, seed=3)
    y = torch.randint(1, V, (B, U))
    tl, ul = torch.tensor([7, 5, 4]), torch.tensor([3, 1, 0])
    stops = torch.arange(T)[None, :] + torch.randint(1, 3, (B, T))
    fused = kernels.fused_transducer_loss(enc, pred, w, b, y, tl, ul, durations=durs, sigma=0.05, reduction="none",
                                          tile_rows=5, blank_stops=stops)
    mat = kernels.tdt_loss(_materialized(enc, pred, w, b, "tanh"), y, tl, ul, durs, sigma=0.05, reduction="none",
                           blank_stops=stops)
    free = kernels.tdt_loss(_materialized(enc, pred, w, b, "tanh"), y, tl, ul, durs, sigma=0.05, reduction="none")
    assert (mat > free + 1e-4).any()
    _compare(fused, mat, (enc, pred, w, b), 1e-5)
    with pytest.raises(ValueError, match="blank_stops limits TDT"):
        kernels.fused_transducer_loss(enc, pred, w[:V], b[:V], y, tl, ul, blank_stops=stops)


def test_fused_gradcheck_float64() -> None:
    enc, pred, w, b = _joint_inputs(2, 3, 2, 5, 4, dtype=torch.float64, seed=3)
    y = torch.randint(1, 5, (2, 2))
    tl, ul = torch.tensor([3, 2]), torch.tensor([2, 1])
    assert torch.autograd.gradcheck(
        lambda *p: kernels.fused_transducer_loss(*p, y, tl, ul, reduction="sum", tile_rows=2), (enc, pred, w, b), fast_mode=True
    )
    enc, pred, w, b = _joint_inputs(2, 4, 2, 5 + 3, 4, dtype=torch.float64, seed=4)
    assert torch.autograd.gradcheck(
        lambda *p: kernels.fused_transducer_loss(*p, y, torch.tensor([4, 3]), ul, durations=[0, 1, 2],
                                                 reduction="mean", tile_rows=3), (enc, pred, w, b),
        fast_mode=True,
    )


def test_fused_half_and_no_bias() -> None:
    B, T, U, V, H = 2, 4, 3, 7, 8
    enc, pred, w, _ = _joint_inputs(B, T, U, V, H, dtype=torch.bfloat16, seed=5)
    y = torch.randint(1, V, (B, U))
    tl, ul = torch.tensor([4, 3]), torch.tensor([3, 2])
    out = kernels.fused_transducer_loss(enc, pred, w, None, y, tl, ul, reduction="none")
    assert out.dtype == torch.float32
    ref = kernels.rnnt_loss(torch.tanh(enc.float()[:, :, None] + pred.float()[:, None]) @ w.float().T, y, tl, ul,
                            reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(out.sum(), [enc, pred, w])
    assert all(x.dtype == torch.bfloat16 and torch.isfinite(x).all() for x in g)


def test_fused_validation() -> None:
    enc, pred, w, b = _joint_inputs(2, 4, 3, 7, 8, seed=6)
    y = torch.randint(1, 7, (2, 3))
    tl, ul = torch.tensor([4, 3]), torch.tensor([3, 2])
    with pytest.raises(ValueError, match=r"enc_lengths\[1\] = 5"):
        kernels.fused_transducer_loss(enc, pred, w, b, y, torch.tensor([4, 5]), ul)
    with pytest.raises(ValueError, match="weight.shape"):
        kernels.fused_transducer_loss(enc, pred, w[:, :4], b, y, tl, ul)
    with pytest.raises(ValueError, match="activation='gelu'"):
        kernels.fused_transducer_loss(enc, pred, w, b, y, tl, ul, activation="gelu")
    with pytest.raises(ValueError, match="share one dtype"):
        kernels.fused_transducer_loss(enc, pred.double(), w, b, y, tl, ul)
    with pytest.raises(ValueError, match="no token rows"):
        kernels.fused_transducer_loss(enc, pred, w[:3], b[:3], y, tl, ul, durations=[0, 1, 2])


@pytest.mark.parametrize("durations", [None, [0, 1, 2]])
def test_fused_loss_ignores_autocast(durations) -> None:
    """Under bf16 autocast (the trainer's GPU precision; the CPU's autocast here) the joint's
    product inside the loss stays in its inputs' float32: forward and backward alike."""
    B, T, U, V, H = 2, 5, 3, 7, 16
    C = V + (len(durations) if durations else 0)
    enc, pred, w, b = _joint_inputs(B, T, U, C, H, seed=7)
    y = torch.randint(1, V, (B, U), generator=torch.Generator().manual_seed(7))
    tl, ul = torch.tensor([5, 4]), torch.tensor([3, 2])

    def run():
        out = kernels.fused_transducer_loss(enc, pred, w, b, y, tl, ul, durations=durations, sigma=0.05 if durations else 0.0,
                                            reduction="none")
        return out, torch.autograd.grad(out.sum(), [enc, pred, w, b])

    ref, gref = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, g = run()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for a, r in zip(g, gref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
