"""Fused joint + transducer loss: the (B, T, U+1, V) logits tensor is never built.

joint[b, t, u] = activation(enc[b, t] + pred[b, u]) @ weight.T + bias

Forward works in tiles of (t, u) rows of one utterance: compute the tile's logits with a
matmul, reduce each row to (token logsumexp, blank log-prob, label log-prob[, duration
log-probs]) with the row kernel, and discard the tile. The lattice (alphas, betas) then runs on
those O(B*T*U) numbers. Backward recomputes each tile's logits, turns them into the gradient
rows (softmax * w_tot - arc posteriors), and multiplies back into grad enc / pred / weight /
bias. Memory: O(B*T*U) lattice values plus one tile of scratch; compute: one extra joint
forward (the recomputation). Padded (t >= T_b, u > U_b) rows are never computed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import _checks
from ._backend import as_index, get_backend, torch_rows_backward_, torch_rows_forward_
from .losses import _compute_dtype, finish, lattice_forward, lattice_weights, row_labels, stops_or_open

__all__ = ["fused_transducer_loss"]

ACTIVATIONS = ("tanh", "relu", "identity")
DEFAULT_TILE_ROWS = {"cpu": 1024, "cuda": 16384}


def _act(z: Tensor, activation: str) -> Tensor:
    """In place: z <- activation(z)."""
    if activation == "tanh":
        return z.tanh_()
    if activation == "relu":
        return z.relu_()
    return z


def _act_grad(gh: Tensor, h: Tensor, activation: str) -> Tensor:
    """In place: gh <- gh * activation'(z), written with the activation output h."""
    if activation == "tanh":
        return gh.mul_(1.0 - h * h)
    if activation == "relu":
        return gh.mul_(h > 0)
    return gh


def _tiles(T_b: int, U1_b: int, tile_rows: int):
    tu = min(U1_b, tile_rows)
    tt = max(1, tile_rows // tu)
    for t0 in range(0, T_b, tt):
        for u0 in range(0, U1_b, tu):
            yield t0, min(T_b, t0 + tt), u0, min(U1_b, u0 + tu)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, enc, pred, weight, bias, labels, T_lens, U_lens, blank, durations, sigma, activation,
                fastemit_lambda, tile_rows, stops):  # type: ignore[override]
        B, T, H = enc.shape
        U1 = pred.shape[1]
        C = weight.shape[0]
        D = 0 if durations is None else durations.shape[0]
        V = C - D
        cdt = _compute_dtype(enc.dtype)
        be = get_backend(enc.device)
        e, p, W = enc.detach().to(cdt), pred.detach().to(cdt), weight.detach().to(cdt)
        bb = bias.detach().to(cdt) if bias is not None else None
        WT = W.t()
        stats = torch.full((B, T, U1, 4 + D), float("-inf"), dtype=torch.float64, device=enc.device)
        Tl, Ul = T_lens.tolist(), U_lens.tolist()
        for b in range(B):
            for t0, t1, u0, u1 in _tiles(Tl[b], Ul[b] + 1, tile_rows):
                h = _act(e[b, t0:t1, None, :] + p[b, None, u0:u1, :], activation).view(-1, H)
                x = torch.addmm(bb, h, WT) if bb is not None else h @ WT
                lab = labels[b, t0:t1, u0:u1].reshape(-1)
                if be.name == "numba":
                    st = torch_rows_forward_(x, lab, blank, V, D)
                else:
                    st = be.rows_forward(x, lab, blank, V, D)
                stats[b, t0:t1, u0:u1] = st.view(t1 - t0, u1 - u0, -1)
                del h, x
        flat = stats.view(-1, 4 + D)
        stops = stops_or_open(stops, B, T, durations, enc.device)
        lpb, lpl, lpd, alpha, beta, ll = lattice_forward(be, flat, (B, T, U1), D, durations, sigma, stops, T_lens,
                                                         U_lens)
        ctx.save_for_backward(enc, pred, weight, bias, labels, stats, T_lens, U_lens, lpb, lpl, lpd, alpha, beta, ll,
                              durations, stops)
        ctx.cfg = (blank, V, D, sigma, activation, fastemit_lambda, tile_rows)
        return (-ll).to(cdt)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        with torch.autocast(grad.device.type, enabled=False):  # a backward run under autocast: the forward's dtypes
            return _FusedLoss._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        (enc, pred, weight, bias, labels, stats, T_lens, U_lens, lpb, lpl, lpd, alpha, beta, ll,
         durations, stops) = ctx.saved_tensors
        blank, V, D, sigma, activation, fastemit_lambda, tile_rows = ctx.cfg
        B, T, H = enc.shape
        U1 = pred.shape[1]
        cdt = _compute_dtype(enc.dtype)
        be = get_backend(enc.device)
        w = lattice_weights(be, lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll, grad,
                            fastemit_lambda)
        e, p, W = enc.detach().to(cdt), pred.detach().to(cdt), weight.detach().to(cdt)
        bb = bias.detach().to(cdt) if bias is not None else None
        WT = W.t()
        g_enc = torch.zeros(B, T, H, dtype=cdt, device=enc.device)
        g_pred = torch.zeros(B, U1, H, dtype=cdt, device=enc.device)
        g_W = torch.zeros_like(W)
        g_b = torch.zeros(W.shape[0], dtype=cdt, device=enc.device)
        Tl, Ul = T_lens.tolist(), U_lens.tolist()
        for b in range(B):
            for t0, t1, u0, u1 in _tiles(Tl[b], Ul[b] + 1, tile_rows):
                nt, nu = t1 - t0, u1 - u0
                h = _act(e[b, t0:t1, None, :] + p[b, None, u0:u1, :], activation).view(-1, H)
                x = torch.addmm(bb, h, WT) if bb is not None else h @ WT
                lab = labels[b, t0:t1, u0:u1].reshape(-1)
                st = stats[b, t0:t1, u0:u1].reshape(nt * nu, -1)
                wt = w[b, t0:t1, u0:u1].reshape(nt * nu, -1)
                if be.name == "numba":
                    torch_rows_backward_(x, lab, blank, V, D, st, wt)  # x now holds d loss / d logits
                else:
                    be.rows_backward(x, lab, blank, V, D, st, wt, x)
                g_W.addmm_(x.t(), h)
                g_b += x.sum(0)
                gh = _act_grad(x @ W, h, activation).view(nt, nu, H)
                g_enc[b, t0:t1] += gh.sum(1)
                g_pred[b, u0:u1] += gh.sum(0)
                del h, x, gh
        return (
            g_enc.to(enc.dtype),
            g_pred.to(pred.dtype),
            g_W.to(weight.dtype),
            g_b.to(bias.dtype) if bias is not None else None,
            None, None, None, None, None, None, None, None, None, None,
        )


def fused_transducer_loss(
    enc: Tensor,
    pred: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    enc_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    durations: Sequence[int] | None = None,
    sigma: float = 0.0,
    activation: str = "tanh",
    reduction: str = "mean",
    fastemit_lambda: float = 0.0,
    zero_infinity: bool = False,
    tile_rows: int | None = None,
    blank_stops: Tensor | None = None,
) -> Tensor:
    """RNN-T (durations=None) or TDT (durations=[...]) loss of a joint network, without its logits.

    joint[b, t, u] = activation(enc[b, t] + pred[b, u]) @ weight.T + bias

    Args:
        enc: (B, T, H) encoder output, already projected to the joint dimension H.
        pred: (B, U+1, H) prediction-network output, already projected.
        weight: (V, H) for RNN-T, (V + D, H) for TDT (the last D rows give duration logits).
        bias: (V,) / (V + D,) or None.
        targets: (B, U) int; enc_lengths: (B,) int; target_lengths: (B,) int.
        activation: "tanh", "relu" or "identity".
        tile_rows: (t, u) rows per tile (default 1024 on CPU, 16384 on CUDA); scratch memory is
            a few tile_rows * (H + V + D) floats.
        other arguments as in `rnnt_loss` / `tdt_loss` (fastemit_lambda is RNN-T only,
        blank_stops TDT only).
    Returns:
        (B,) losses or their reduction; gradients flow to enc, pred, weight and bias.
    """
    _checks.check_reduction(reduction)
    _checks.check_float("enc", enc, 3)
    _checks.check_float("pred", pred, 3)
    _checks.check_float("weight", weight, 2)
    if bias is not None:
        _checks.check_float("bias", bias, 1)
    _checks.check_same_device(enc=enc, pred=pred, weight=weight, bias=bias, targets=targets,
                              enc_lengths=enc_lengths, target_lengths=target_lengths)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {ACTIVATIONS}")
    if tile_rows is None:
        tile_rows = DEFAULT_TILE_ROWS.get(enc.device.type, 1024)
    if tile_rows < 1:
        raise ValueError(f"tile_rows = {tile_rows} must be >= 1")
    B, T, H = enc.shape
    if pred.shape[0] != B or pred.shape[2] != H:
        raise ValueError(f"pred.shape = {tuple(pred.shape)} does not match enc.shape = {tuple(enc.shape)}: expected ({B}, U+1, {H})")
    if weight.shape[1] != H:
        raise ValueError(f"weight.shape = {tuple(weight.shape)}; expected (V [+ D], {H}) for H = {H}")
    C = weight.shape[0]
    if bias is not None and bias.shape[0] != C:
        raise ValueError(f"bias.shape = {tuple(bias.shape)} does not match weight.shape[0] = {C}")
    dtypes = {enc.dtype, pred.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) > 1:
        raise ValueError(f"enc, pred, weight and bias must share one dtype, got {sorted(map(str, dtypes))} "
                         "(under autocast, project enc and pred outside it or cast them to the weight's dtype)")
    if durations is None:
        D, dur_t = 0, None
    else:
        durs = _checks.check_durations(durations)
        D = len(durs)
        if fastemit_lambda:
            raise ValueError(f"fastemit_lambda = {fastemit_lambda} is only supported for RNN-T (durations=None)")
        dur_t = torch.tensor(durs, dtype=torch.int64, device=enc.device)
    V = C - D
    if V < 1:
        raise ValueError(f"weight.shape[0] = {C} leaves no token rows for {D} durations")
    _checks.check_targets_and_lengths(targets, enc_lengths, target_lengths, B, T, pred.shape[1] - 1, V, blank,
                                      lengths_name="enc_lengths")
    fastemit_lambda = _checks.check_finite_number("fastemit_lambda", fastemit_lambda)
    sigma = _checks.check_finite_number("sigma", sigma)
    T_lens, U_lens = as_index(enc_lengths), as_index(target_lengths)
    labels = row_labels(targets, T_lens, U_lens, T, pred.shape[1])
    stops = _checks.check_blank_stops(blank_stops, B, T, enc, tdt=durations is not None)
    with torch.autocast(enc.device.type, enabled=False):  # the joint's product in the inputs' dtype, not autocast's
        losses = _FusedLoss.apply(enc, pred, weight, bias, labels, T_lens, U_lens, int(blank), dur_t, sigma, activation,
                                  fastemit_lambda, int(tile_rows), stops)
    return finish(losses, reduction, zero_infinity)
