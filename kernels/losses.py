"""RNN-T and TDT losses over materialized logits (B, T, U+1, V [+ D]).

The log-softmax is fused: a row kernel reduces each (t, u) row of logits to its token
logsumexp, blank and label log-probs (and duration log-probs for TDT); the lattice kernel runs
on those (B, T, U+1) arrays only; backward forms the gradient of each row directly,
softmax * w_tot - arc posteriors on the blank / label (/ duration) channels, so no
(B, T, U+1, V) log-prob tensor is ever built. CPU runs numba, CUDA runs Triton.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import _checks
from ._backend import as_index, get_backend

__all__ = ["rnnt_loss", "tdt_loss", "row_labels"]


def row_labels(targets: Tensor, T_lens: Tensor, U_lens: Tensor, T: int, U1: int) -> Tensor:
    """Row-label codes (B, T, U1) int64: y[b, u] for u < U_b, -1 at u = U_b, -2 on padding."""
    B = targets.shape[0]
    dev = targets.device
    y = torch.zeros(B, U1, dtype=torch.int64, device=dev)
    U = targets.shape[1]
    if U > 0:
        y[:, : min(U, U1)] = targets[:, : min(U, U1)].long()
    u = torch.arange(U1, device=dev)[None, :]
    lab = torch.where(u < U_lens[:, None], y, torch.full_like(y, -1))
    lab = torch.where(u > U_lens[:, None], torch.full_like(y, -2), lab)
    t = torch.arange(T, device=dev)[None, :, None]
    lab = lab[:, None, :].expand(B, T, U1)
    return torch.where(t < T_lens[:, None, None], lab, torch.full_like(lab, -2)).contiguous()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_inputs(be, logits: Tensor) -> Tensor:
    """``logits`` (..., C) as contiguous rows (N, C) for the backend's row kernels. fp16/bf16
    logits stay in their dtype where the backend reads them (Triton loads them into float32
    and writes their gradient back in their dtype), which spares a float32 copy of the whole
    logits in the forward and two in the backward; otherwise float32 (float64 stays float64)."""
    keep = logits.dtype in (torch.float16, torch.bfloat16) and be.reads_half
    return logits.detach().to(logits.dtype if keep else _compute_dtype(logits.dtype)).contiguous().view(-1, logits.shape[-1])


def stops_or_open(blank_stops: Tensor | None, B: int, T: int, durations: Tensor | None, device) -> Tensor | None:
    """The lattice kernels' (B, T) int64 blank stops: ``blank_stops`` as given, or (TDT
    without stops) a value no blank jump reaches; None for RNN-T."""
    if durations is None:
        return None
    if blank_stops is not None:
        return blank_stops
    return torch.full((B, T), T + int(durations.max()) + 1, dtype=torch.int64, device=device)


def lattice_forward(be, stats: Tensor, shape: tuple[int, int, int], D: int, durations: Tensor | None, sigma: float,
                    stops: Tensor | None, T_lens: Tensor, U_lens: Tensor):
    """stats (N, 4+D) -> lattice inputs and (alpha, beta, ll)."""
    B, T, U1 = shape
    lpb = stats[:, 1].reshape(B, T, U1).contiguous()
    lpl = stats[:, 2].reshape(B, T, U1).contiguous()
    if D == 0:
        lpd = None
        alpha, beta, ll = be.rnnt_lattice(lpb, lpl, T_lens, U_lens)
    else:
        lpd = stats[:, 4:].reshape(B, T, U1, D).contiguous()
        alpha, beta, ll = be.tdt_lattice(lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens)
    return lpb, lpl, lpd, alpha, beta, ll


def lattice_weights(be, lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll, scale: Tensor,
                    fastemit_lambda: float) -> Tensor:
    """Arc weights (B, T, U1, 3 + D) float64 for rows_backward. An utterance whose loss is NaN
    (NaN in its logits) gets NaN weights, so its gradient is NaN too: a check of the gradients
    (GradScaler's, a trainer's guard) sees it, where zeros would pass for a clean step."""
    scale = scale.to(torch.float64).contiguous()
    if lpd is None:
        w = be.rnnt_weights(lpb, lpl, T_lens, U_lens, alpha, beta, ll, scale, 1.0 + fastemit_lambda)
    else:
        w = be.tdt_weights(lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll, scale)
    nan = torch.isnan(ll)
    if bool(nan.any()):
        w[nan] = float("nan")
    return w


class _MaterializedLoss(torch.autograd.Function):
    """Per-utterance -loglik (B,) from logits (B, T, U1, V + D)."""

    @staticmethod
    def forward(ctx, logits, targets, T_lens, U_lens, blank, durations, sigma, fastemit_lambda, stops):  # type: ignore[override]
        B, T, U1, C = logits.shape
        be = get_backend(logits.device)
        D = 0 if durations is None else durations.shape[0]
        V = C - D
        x = row_inputs(be, logits)
        labels = row_labels(targets, T_lens, U_lens, T, U1).view(-1)
        stats = be.rows_forward(x, labels, blank, V, D)
        stops = stops_or_open(stops, B, T, durations, logits.device)
        lpb, lpl, lpd, alpha, beta, ll = lattice_forward(be, stats, (B, T, U1), D, durations, sigma, stops, T_lens,
                                                         U_lens)
        ctx.save_for_backward(logits, labels, stats, T_lens, U_lens, lpb, lpl, lpd, alpha, beta, ll, durations, stops)
        ctx.cfg = (blank, V, D, sigma, fastemit_lambda)
        return (-ll).to(_compute_dtype(logits.dtype))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        logits, labels, stats, T_lens, U_lens, lpb, lpl, lpd, alpha, beta, ll, durations, stops = ctx.saved_tensors
        blank, V, D, sigma, fastemit_lambda = ctx.cfg
        B, T, U1, C = logits.shape
        be = get_backend(logits.device)
        w = lattice_weights(be, lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll, grad,
                            fastemit_lambda)
        x = row_inputs(be, logits)
        g = torch.empty_like(x)  # the logits' dtype where the backend writes it, else float32 (cast below)
        be.rows_backward(x, labels, blank, V, D, stats, w.view(-1, w.shape[-1]), g)
        return g.view(B, T, U1, C).to(logits.dtype), None, None, None, None, None, None, None, None


def finish(losses: Tensor, reduction: str, zero_infinity: bool) -> Tensor:
    """zero_infinity, then reduction ("mean" = mean over the batch of per-utterance losses)."""
    if zero_infinity:
        losses = torch.where(torch.isinf(losses), torch.zeros_like(losses), losses)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.mean()


def _check_logits(logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, blank: int,
                  V: int, reduction: str) -> None:
    _checks.check_reduction(reduction)
    _checks.check_float("logits", logits, 4)
    _checks.check_same_device(
        logits=logits, targets=targets, logit_lengths=logit_lengths, target_lengths=target_lengths
    )
    B, T, U1, _ = logits.shape
    _checks.check_targets_and_lengths(targets, logit_lengths, target_lengths, B, T, U1 - 1, V, blank)


def rnnt_loss(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    fastemit_lambda: float = 0.0,
    zero_infinity: bool = False,
) -> Tensor:
    """RNN-T loss (Graves 2012) with the log-softmax fused inside.

    Args:
        logits: (B, T, U+1, V) unnormalized joint outputs, any float dtype (fp16/bf16 are
            computed in float32).
        targets: (B, U) int32/int64 labels; entries past target_lengths[b] are ignored.
        logit_lengths: (B,) int, 1 <= T_b <= T.  target_lengths: (B,) int, 0 <= U_b <= U.
        blank: blank id.  reduction: "none" (B,), "sum", or "mean" (over the batch).
        fastemit_lambda: FastEmit (Yu et al. 2021): the gradient through every label-emission
            arc is scaled by (1 + lambda); the returned loss value is unchanged.
        zero_infinity: an impossible alignment gives +inf; with True it gives 0 instead.
            Either way its gradient is zero.
    Returns:
        (B,) losses (float32, or float64 for float64 logits) or their reduction.
    """
    _check_logits(logits, targets, logit_lengths, target_lengths, blank, logits.shape[-1], reduction)
    fastemit_lambda = _checks.check_finite_number("fastemit_lambda", fastemit_lambda)
    losses = _MaterializedLoss.apply(
        logits, targets, as_index(logit_lengths), as_index(target_lengths), int(blank), None, 0.0, fastemit_lambda, None
    )
    return finish(losses, reduction, zero_infinity)


def tdt_loss(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    durations: Sequence[int],
    blank: int = 0,
    sigma: float = 0.0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    blank_stops: Tensor | None = None,
) -> Tensor:
    """TDT loss (Xu et al. 2023, NeMo's convention).

    Args:
        logits: (B, T, U+1, V + D); the last D = len(durations) channels are duration logits.
            Token and duration log-probs are normalized separately.
        durations: the D durations, non-negative, distinct, at least one > 0 (e.g. [0, 1, 2, 3, 4]).
        sigma: logit under-normalization: every arc scores logp_tok + logp_dur - sigma.
        blank_stops: (B, T) ints or None: a blank from frame t may land no later than frame
            ``blank_stops[b, t]`` (its longer jumps are not arcs of the lattice; labels' jumps are
            not limited). ``asr`` builds them from a hybrid's CTC head, so that training sees
            the blank jumps that the CTC-guarded greedy search allows.
        other arguments as in `rnnt_loss`.
    The path starts at (0, 0); a blank with duration d > 0 goes (t, u) -> (t+d, u); label y[u]
    with duration d goes (t, u) -> (t+d, u+1); states have t < T; the path ends with a blank
    landing exactly on t = T with u = U. No such path: +inf (0 with zero_infinity).
    """
    durs = _checks.check_durations(durations)
    if logits.dim() == 4 and logits.shape[-1] <= len(durs):
        raise ValueError(
            f"logits.shape[-1] = {logits.shape[-1]} leaves no token channels for {len(durs)} durations"
        )
    V = logits.shape[-1] - len(durs) if logits.dim() == 4 else 1
    _check_logits(logits, targets, logit_lengths, target_lengths, blank, V, reduction)
    sigma = _checks.check_finite_number("sigma", sigma)
    stops = _checks.check_blank_stops(blank_stops, logits.shape[0], logits.shape[1], logits)
    dur_t = torch.tensor(durs, dtype=torch.int64, device=logits.device)
    losses = _MaterializedLoss.apply(
        logits, targets, as_index(logit_lengths), as_index(target_lengths), int(blank), dur_t, sigma, 0.0, stops
    )
    return finish(losses, reduction, zero_infinity)
