"""Pruned RNN-T (k2's recipe): a cheap simple loss picks, per frame, a window of s_range
label positions; the full joint runs only there.

1. Simple loss. The "simple joint" is linear: logits[b, t, s] = am[b, t] + lm[b, s], so its
   normalizer logsumexp_v(am[t, v] + lm[s, v]) is one (B, T, V) x (B, V, U+1) matmul in the
   exp domain, and the RNN-T lattice runs on the resulting (B, T, U+1) blank / label log-probs.
   Its forward-backward also gives the occupation of every state (t, s).
2. Prune ranges. For each frame t, the window start s_begin[t] maximizes the occupation inside
   [s_begin, s_begin + s_range). Starts are then made reachable: s_begin[0] = 0, the last frame
   ends at U, s_begin is non-decreasing, and steps by at most s_range - 1 between frames.
3. Pruned loss. The joint runs on (B, T, s_range) pairs (enc[t], pred[s_begin[t] + r]); the
   exact RNN-T loss is taken over the paths that stay inside the windows.

The same windows serve TDT (not in k2): the joint's window logits then carry the D duration
channels and the exact TDT loss is taken over the paths whose every state (including where a
duration jump lands) lies inside its frame's window. The simple loss stays an RNN-T's: it only
places the windows.

Composable pieces (`rnnt_loss_simple`, `get_prune_ranges`, `prune_pred`, `rnnt_loss_pruned`,
`tdt_loss_pruned`) and a one-call `pruned_rnnt_loss` (TDT with ``durations=``) for model code.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from ._backend import as_index, get_backend
from .losses import _compute_dtype, finish, lattice_weights, row_inputs, stops_or_open

__all__ = [
    "rnnt_loss_simple",
    "get_prune_ranges",
    "prune_pred",
    "rnnt_loss_pruned",
    "tdt_loss_pruned",
    "pruned_rnnt_loss",
    "PrunedRNNTLoss",
]

JointFn = Callable[[Tensor, Tensor], Tensor]


class _LatticeLoss(torch.autograd.Function):
    """-loglik (B,) of an RNN-T lattice given lpb, lpl (B, T, W) float64; also returns the
    (B, T, W) state occupation (non-differentiable)."""

    @staticmethod
    def forward(ctx, lpb, lpl, T_lens, U_lens, fastemit_lambda):  # type: ignore[override]
        be = get_backend(lpb.device)
        lpb, lpl = lpb.detach().contiguous(), lpl.detach().contiguous()
        alpha, beta, ll = be.rnnt_lattice(lpb, lpl, T_lens, U_lens)
        occ = torch.exp(alpha + beta - ll[:, None, None])
        occ = torch.nan_to_num(occ, nan=0.0, posinf=0.0)
        ctx.save_for_backward(lpb, lpl, T_lens, U_lens, alpha, beta, ll)
        ctx.fastemit_lambda = fastemit_lambda
        ctx.mark_non_differentiable(occ)
        return -ll, occ

    @staticmethod
    def backward(ctx, grad, _grad_occ):  # type: ignore[override]
        lpb, lpl, T_lens, U_lens, alpha, beta, ll = ctx.saved_tensors
        be = get_backend(lpb.device)
        w = be.rnnt_weights(lpb, lpl, T_lens, U_lens, alpha, beta, ll, grad.double().contiguous(),
                            1.0 + ctx.fastemit_lambda)
        return -w[..., 1], -w[..., 2], None, None, None


def _check_lengths(targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, B: int, T: int, U: int,
                   V: int, blank: int) -> tuple[Tensor, Tensor]:
    _checks.check_targets_and_lengths(targets, logit_lengths, target_lengths, B, T, U, V, blank)
    return as_index(logit_lengths), as_index(target_lengths)


def rnnt_loss_simple(
    am_logits: Tensor,
    lm_logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> tuple[Tensor, Tensor]:
    """RNN-T loss of the linear joint logits[b, t, s] = am_logits[b, t] + lm_logits[b, s].

    Args:
        am_logits: (B, T, V) acoustic-side simple logits; lm_logits: (B, U+1, V) label side.
        targets (B, U), logit_lengths (B,), target_lengths (B,): as in `rnnt_loss`.
    Returns:
        (loss, occupation): the loss (reduced as asked) and the (B, T, U+1) float64 posterior
        occupation of each lattice state (zero outside the valid region), for `get_prune_ranges`.
    """
    _checks.check_reduction(reduction)
    _checks.check_float("am_logits", am_logits, 3)
    _checks.check_float("lm_logits", lm_logits, 3)
    _checks.check_same_device(am_logits=am_logits, lm_logits=lm_logits, targets=targets,
                              logit_lengths=logit_lengths, target_lengths=target_lengths)
    B, T, V = am_logits.shape
    if lm_logits.shape[0] != B or lm_logits.shape[2] != V:
        raise ValueError(f"lm_logits.shape = {tuple(lm_logits.shape)} does not match am_logits.shape = "
                         f"{tuple(am_logits.shape)}: expected ({B}, U+1, {V})")
    U1 = lm_logits.shape[1]
    T_lens, U_lens = _check_lengths(targets, logit_lengths, target_lengths, B, T, U1 - 1, V, blank)
    am = am_logits.to(torch.float32) if am_logits.dtype != torch.float64 else am_logits
    lm = lm_logits.to(am.dtype)
    am_max = am.detach().amax(-1, keepdim=True)  # (B, T, 1)
    lm_max = lm.detach().amax(-1, keepdim=True)  # (B, U1, 1)
    with torch.autocast(am.device.type, enabled=False):  # autocast would round (or, in fp16, underflow) the sums
        sums = torch.bmm((am - am_max).exp(), (lm - lm_max).exp().transpose(1, 2))  # (B, T, U1)
        if sums.dtype != torch.float64 and sums.numel() and float(sums.detach().min()) < 1e-30:
            # acoustic and label sides that peak on different tokens, far apart: float32 sums
            # near its smallest normal lose their digits, then underflow to 0 (log: -inf, NaN)
            sums = torch.bmm((am.double() - am_max).exp(), (lm.double() - lm_max).exp().transpose(1, 2))
        norm = torch.log(sums.clamp_min(torch.finfo(sums.dtype).tiny)).to(am.dtype)
    norm = norm + am_max + lm_max.transpose(1, 2)
    lpb = am[:, :, blank, None] + lm[:, None, :, blank] - norm
    y = targets.long().clamp(0, V - 1)
    U = U1 - 1
    lpl = torch.full_like(lpb, float("-inf"))
    if U > 0:
        am_y = am.gather(2, y[:, None, :].expand(B, T, U))  # (B, T, U)
        lm_y = lm[:, :U].gather(2, y[:, :, None]).squeeze(-1)  # (B, U)
        lpl = torch.cat([am_y + lm_y[:, None, :] - norm[:, :, :U], lpl[:, :, U:]], dim=2)
    losses, occ = _LatticeLoss.apply(lpb.double(), lpl.double(), T_lens, U_lens, 0.0)
    return finish(losses.to(am.dtype), reduction, zero_infinity), occ


def get_prune_ranges(occupation: Tensor, logit_lengths: Tensor, target_lengths: Tensor, s_range: int) -> Tensor:
    """Window starts (B, T) int64 from the simple loss's (B, T, U+1) state occupation.

    Window at frame t: label positions [s_begin[t], s_begin[t] + s_range). The starts satisfy
    s_begin[0] = 0, s_begin[T_b - 1:] = max(U_b - s_range + 1, 0), non-decreasing, and
    s_begin[t+1] - s_begin[t] <= s_range - 1, so some path stays inside the windows whenever
    (T_b - 1) * (s_range - 1) >= U_b - s_range + 1 (else the pruned loss is +inf).
    """
    if s_range < 2:
        raise ValueError(f"s_range = {s_range} must be >= 2 (no RNN-T path survives a window of 1)")
    B, T, U1 = occupation.shape
    dev = occupation.device
    T_lens, U_lens = as_index(logit_lengths), as_index(target_lengths)
    occ = occupation.detach().double()
    cs = F.pad(occ.cumsum(-1), (1, s_range))  # (B, T, U1 + 1 + s_range)
    cs[..., U1 + 1:] = cs[..., U1: U1 + 1]
    starts = torch.arange(U1, device=dev)
    score = cs[..., starts + s_range] - cs[..., starts]  # (B, T, U1): mass in [s, s + s_range)
    max_start = (U_lens - s_range + 1).clamp(min=0)  # (B,)
    score = score.masked_fill(starts[None, None, :] > max_start[:, None, None], float("-inf"))
    s_begin = score.argmax(-1)  # (B, T)
    # Keep every start reachable from (0, 0) and able to reach (T_b - 1, U_b), moving by at most
    # step = s_range - 1 label positions per frame:
    step = s_range - 1
    t = torch.arange(T, device=dev)[None, :]
    hi = torch.minimum(max_start[:, None], step * t)
    lo = (max_start[:, None] - step * ((T_lens - 1)[:, None] - t)).clamp(min=0)
    lo = torch.minimum(lo, max_start[:, None])
    s_begin = torch.minimum(torch.maximum(s_begin, lo), hi)
    # non-decreasing (stays <= hi, which is non-decreasing) ...
    s_begin = torch.cummax(s_begin, dim=1).values
    # ... and no jump larger than step: s[t] = max_{t' >= t} (s[t'] - step * (t' - t)).
    shifted = (s_begin - step * t).flip(1)
    s_begin = torch.cummax(shifted, dim=1).values.flip(1) + step * t
    return s_begin.contiguous()


def prune_pred(pred: Tensor, s_begin: Tensor, s_range: int) -> Tensor:
    """pred (B, U+1, H) -> (B, T, s_range, H): pred[b, s_begin[b, t] + r] (clamped to U)."""
    B, U1, H = pred.shape
    _checks.check_s_begin(s_begin)
    idx = (s_begin[:, :, None] + torch.arange(s_range, device=pred.device)).clamp(max=U1 - 1)  # (B, T, R)
    return pred[torch.arange(B, device=pred.device)[:, None, None], idx]


def _pruned_row_labels(targets: Tensor, s_begin: Tensor, T_lens: Tensor, U_lens: Tensor, R: int) -> tuple[Tensor, Tensor]:
    """(B, T, R) row-label codes and the (B, T, R) label positions s = s_begin + r."""
    B, T = s_begin.shape
    dev = s_begin.device
    s = s_begin[:, :, None] + torch.arange(R, device=dev)
    U = targets.shape[1]
    y = torch.zeros(B, U + R + 1, dtype=torch.int64, device=dev)
    y[:, :U] = targets.long()
    lab = y.gather(1, s.view(B, -1).clamp(max=U + R)).view(B, T, R)
    lab = torch.where(s == U_lens[:, None, None], torch.full_like(lab, -1), lab)
    bad = (s > U_lens[:, None, None]) | (torch.arange(T, device=dev)[None, :, None] >= T_lens[:, None, None])
    return torch.where(bad, torch.full_like(lab, -2), lab).contiguous(), s


class _PrunedLoss(torch.autograd.Function):
    """-loglik (B,) of the RNN-T (durations None) or TDT lattice restricted to the windows, from
    the (B, T, R, V [+ D]) joint logits at label positions s (B, T, R)."""

    @staticmethod
    def forward(ctx, logits, labels, s, T_lens, U_lens, blank, durations, sigma, fastemit_lambda, stops):  # type: ignore[override]
        B, T, R, C = logits.shape
        D = 0 if durations is None else durations.shape[0]
        V = C - D
        be = get_backend(logits.device)
        cdt = _compute_dtype(logits.dtype)
        x = row_inputs(be, logits)
        lab = labels.view(-1)
        stats = be.rows_forward(x, lab, blank, V, D)
        # states outside the windows get -inf blank and label arcs: a path may enter one but
        # never leaves it, so only the paths that stay inside the windows are summed
        # wide enough for every utterance's U even where its windows cannot reach it (too many
        # labels for its frames: no path, the loss is inf): the lattice kernels index up to U
        W = max(int(s.max()) if s.numel() else 0, int(U_lens.max()) if U_lens.numel() else 0) + 1
        lpb = torch.full((B, T, W), float("-inf"), dtype=torch.float64, device=logits.device)
        lpl = torch.full_like(lpb, float("-inf"))
        lpb.scatter_(2, s, stats[:, 1].view(B, T, R))
        lpl.scatter_(2, s, stats[:, 2].view(B, T, R))
        if D == 0:
            lpd = None
            alpha, beta, ll = be.rnnt_lattice(lpb, lpl, T_lens, U_lens)
        else:
            lpd = torch.zeros(B, T, W, D, dtype=torch.float64, device=logits.device)
            lpd.scatter_(2, s[..., None].expand(B, T, R, D), stats[:, 4:].reshape(B, T, R, D))
            stops = stops_or_open(stops, B, T, durations, logits.device)
            alpha, beta, ll = be.tdt_lattice(lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens)
        ctx.save_for_backward(logits, lab, s, stats, T_lens, U_lens, lpb, lpl, lpd, alpha, beta, ll, durations, stops)
        ctx.cfg = (blank, V, D, sigma, fastemit_lambda)
        return (-ll).to(cdt)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        logits, lab, s, stats, T_lens, U_lens, lpb, lpl, lpd, alpha, beta, ll, durations, stops = ctx.saved_tensors
        blank, V, D, sigma, fastemit_lambda = ctx.cfg
        B, T, R, C = logits.shape
        be = get_backend(logits.device)
        w = lattice_weights(be, lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll, grad,
                            fastemit_lambda)
        w = w.gather(2, s[..., None].expand(B, T, R, w.shape[-1])).view(-1, w.shape[-1]).contiguous()
        x = row_inputs(be, logits)
        g = torch.empty_like(x)
        be.rows_backward(x, lab, blank, V, D, stats, w, g)
        return g.view(B, T, R, C).to(logits.dtype), None, None, None, None, None, None, None, None, None


def _pruned_inputs(logits, targets, s_begin, logit_lengths, target_lengths, blank, reduction, fastemit_lambda, D):
    """Checks and row labels shared by `rnnt_loss_pruned` (D = 0) and `tdt_loss_pruned`."""
    _checks.check_reduction(reduction)
    _checks.check_float("logits", logits, 4)
    _checks.check_same_device(logits=logits, targets=targets, s_begin=s_begin, logit_lengths=logit_lengths,
                              target_lengths=target_lengths)
    B, T, R, C = logits.shape
    if C <= D:
        raise ValueError(f"logits.shape[-1] = {C} leaves no token channels for {D} durations")
    _checks.check_int("s_begin", s_begin, 2)
    if tuple(s_begin.shape) != (B, T):
        raise ValueError(f"s_begin.shape = {tuple(s_begin.shape)}; expected ({B}, {T}) to match logits")
    _checks.check_s_begin(s_begin)
    T_lens, U_lens = _check_lengths(targets, logit_lengths, target_lengths, B, T, targets.shape[1], C - D, blank)
    fastemit_lambda = _checks.check_finite_number("fastemit_lambda", fastemit_lambda)
    labels, s = _pruned_row_labels(targets, s_begin.long(), T_lens, U_lens, R)
    return labels, s, T_lens, U_lens, fastemit_lambda


def rnnt_loss_pruned(
    logits: Tensor,
    targets: Tensor,
    s_begin: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    fastemit_lambda: float = 0.0,
    zero_infinity: bool = False,
) -> Tensor:
    """Exact RNN-T loss over the paths that stay inside the windows.

    Args:
        logits: (B, T, s_range, V) joint logits at (t, s_begin[b, t] + r).
        targets: (B, U); s_begin: (B, T) int64 window starts (from `get_prune_ranges`).
        other arguments as in `rnnt_loss`.
    """
    labels, s, T_lens, U_lens, fe = _pruned_inputs(logits, targets, s_begin, logit_lengths, target_lengths, blank,
                                                   reduction, fastemit_lambda, 0)
    losses = _PrunedLoss.apply(logits, labels, s, T_lens, U_lens, int(blank), None, 0.0, fe, None)
    return finish(losses, reduction, zero_infinity)


def tdt_loss_pruned(
    logits: Tensor,
    targets: Tensor,
    s_begin: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    durations: Sequence[int],
    blank: int = 0,
    sigma: float = 0.0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    blank_stops: Tensor | None = None,
) -> Tensor:
    """Exact TDT loss over the paths whose every state stays inside the windows.

    Args:
        logits: (B, T, s_range, V + D) joint logits at (t, s_begin[b, t] + r); the last D
            channels are duration logits, normalized apart from the tokens (as in `tdt_loss`).
        durations, sigma, blank_stops: as in `tdt_loss`; other arguments as in `rnnt_loss_pruned`.
    A label or blank with duration d jumps from frame t to t + d; the state it lands on must lie
    in frame t + d's window, else the path is dropped (as k2 drops RNN-T paths that leave them).
    """
    durs = _checks.check_durations(durations)
    sigma = _checks.check_finite_number("sigma", sigma)
    labels, s, T_lens, U_lens, _ = _pruned_inputs(logits, targets, s_begin, logit_lengths, target_lengths, blank,
                                                  reduction, 0.0, len(durs))
    stops = _checks.check_blank_stops(blank_stops, logits.shape[0], logits.shape[1], logits)
    dur_t = torch.tensor(durs, dtype=torch.int64, device=logits.device)
    losses = _PrunedLoss.apply(logits, labels, s, T_lens, U_lens, int(blank), dur_t, sigma, 0.0, stops)
    return finish(losses, reduction, zero_infinity)


class PrunedRNNTLoss(NamedTuple):
    """loss = simple_loss_scale * simple_loss + pruned_loss (each reduced as asked)."""

    loss: Tensor
    simple_loss: Tensor
    pruned_loss: Tensor
    s_begin: Tensor  # (B, T) window starts


def pruned_rnnt_loss(
    enc: Tensor,
    pred: Tensor,
    am_logits: Tensor,
    lm_logits: Tensor,
    targets: Tensor,
    enc_lengths: Tensor,
    target_lengths: Tensor,
    joint: Union[JointFn, tuple[Tensor, Union[Tensor, None]]],
    s_range: int = 5,
    blank: int = 0,
    simple_loss_scale: float = 0.5,
    activation: str = "tanh",
    reduction: str = "mean",
    fastemit_lambda: float = 0.0,
    zero_infinity: bool = False,
    durations: Sequence[int] | None = None,
    sigma: float = 0.0,
    blank_stops: Tensor | None = None,
) -> PrunedRNNTLoss:
    """k2-style pruned RNN-T loss in one call; with ``durations``, the pruned TDT loss.

    Args:
        enc: (B, T, H) encoder output projected to the joint dimension.
        pred: (B, U+1, H) prediction-network output projected to the joint dimension.
        am_logits: (B, T, V) simple-joint logits from the encoder (e.g. a Linear(enc_dim, V)).
        lm_logits: (B, U+1, V) simple-joint logits from the prediction network.
        targets: (B, U) int; enc_lengths: (B,) int; target_lengths: (B,) int.
        joint: either a callable joint(enc_part (B, T, 1, H), pred_part (B, T, s_range, H))
            -> logits (B, T, s_range, V), or a (weight (V, H), bias (V,) or None) pair used as
            activation(enc + pred) @ weight.T + bias.
        s_range: label positions kept per frame (>= 2; k2 recipes use 5).
        simple_loss_scale: weight of the simple loss in `loss` (k2 recipes: 0.5 after warm-up).
        fastemit_lambda: FastEmit on the pruned loss (gradient scaling, value unchanged; RNN-T only).
        durations, sigma: TDT (as in `tdt_loss`): the joint then has V + D outputs, the last D
            being duration logits, and the pruned loss is `tdt_loss_pruned`. The simple loss and
            the windows stay the RNN-T's over the V tokens: they only choose where the full joint
            runs.
        blank_stops: TDT only, as in `tdt_loss`.
    Returns:
        PrunedRNNTLoss(loss, simple_loss, pruned_loss, s_begin). Gradients reach enc, pred,
        am_logits, lm_logits and the joint's parameters; the window choice is not differentiated.
    """
    _checks.check_float("enc", enc, 3)
    _checks.check_float("pred", pred, 3)
    if pred.shape[0] != enc.shape[0] or pred.shape[2] != enc.shape[2]:
        raise ValueError(f"pred.shape = {tuple(pred.shape)} does not match enc.shape = {tuple(enc.shape)}")
    for name, x in (("am_logits", am_logits), ("lm_logits", lm_logits), ("targets", targets)):
        if isinstance(x, Tensor) and x.dim() >= 1 and x.shape[0] != enc.shape[0]:
            raise ValueError(f"{name}.shape = {tuple(x.shape)} does not match enc's batch size {enc.shape[0]}")
    _checks.check_index("s_range", s_range, "an int (label positions kept per frame)")
    if am_logits.dim() == 3 and am_logits.shape[1] != enc.shape[1]:
        raise ValueError(f"am_logits.shape = {tuple(am_logits.shape)} does not match enc's T = {enc.shape[1]}")
    if lm_logits.dim() == 3 and lm_logits.shape[1] != pred.shape[1]:
        raise ValueError(f"lm_logits.shape = {tuple(lm_logits.shape)} does not match pred's U+1 = {pred.shape[1]}")
    _checks.check_blank_stops(blank_stops, enc.shape[0], enc.shape[1], enc, tdt=durations is not None)
    simple, occ = rnnt_loss_simple(am_logits, lm_logits, targets, enc_lengths, target_lengths, blank, reduction,
                                   zero_infinity)
    if s_range < 2:
        raise ValueError(f"s_range = {s_range} must be >= 2 (no RNN-T path survives a window of 1)")
    s_begin = get_prune_ranges(occ, enc_lengths, target_lengths, s_range)
    pred_p = prune_pred(pred, s_begin, s_range)  # (B, T, R, H)
    enc_p = enc[:, :, None, :]
    if callable(joint):
        logits = joint(enc_p, pred_p)
    else:
        weight, bias = joint
        if activation not in ("tanh", "relu", "identity"):
            raise ValueError(f"activation={activation!r} is not one of ('tanh', 'relu', 'identity')")
        h = enc_p + pred_p
        h = torch.tanh(h) if activation == "tanh" else (torch.relu(h) if activation == "relu" else h)
        logits = F.linear(h, weight, bias)
    if logits.shape[:3] != pred_p.shape[:3]:
        raise ValueError(f"joint returned shape {tuple(logits.shape)}; expected {tuple(pred_p.shape[:3])} + (V,)")
    if durations is None:
        pruned = rnnt_loss_pruned(logits, targets, s_begin, enc_lengths, target_lengths, blank, reduction,
                                  fastemit_lambda, zero_infinity)
    elif fastemit_lambda:
        raise ValueError(f"fastemit_lambda = {fastemit_lambda} is only supported for RNN-T (durations=None)")
    else:
        pruned = tdt_loss_pruned(logits, targets, s_begin, enc_lengths, target_lengths, durations, blank, sigma,
                                 reduction, zero_infinity, blank_stops)
    return PrunedRNNTLoss(simple_loss_scale * simple + pruned, simple, pruned, s_begin)
