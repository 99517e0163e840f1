"""Exact, slow, pure-PyTorch float64 references for the transducer losses.

These loop over the lattice in Python with differentiable torch ops, so autograd gives the
exact gradient. They exist to test the fast paths; use them only on tiny shapes.

Also here: brute-force path enumeration (every alignment listed and summed), the ground truth
the references themselves are tested against.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "rnnt_loss_reference",
    "tdt_loss_reference",
    "rnnt_bruteforce",
    "tdt_bruteforce",
]


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ValueError(f"reduction={reduction!r} is not one of ('none', 'sum', 'mean')")


def _lse(terms: list[Tensor]) -> Tensor:
    return torch.logsumexp(torch.stack(terms), dim=0)


def rnnt_loss_reference(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    fastemit_lambda: float = 0.0,
) -> Tensor:
    """Graves RNN-T negative log-likelihood, float64.

    logits: (B, T, U+1, V) unnormalized; targets: (B, U); lengths: (B,).
    FastEmit: label arc scores are replaced by (1+l)*s - l*s.detach(), which leaves the value
    unchanged and scales the gradient through every label arc by (1+l).
    Returns (B,) for reduction="none", else a scalar.
    """
    lp = F.log_softmax(logits.double(), dim=-1)
    losses = []
    for b in range(lp.shape[0]):
        T, U = int(logit_lengths[b]), int(target_lengths[b])
        lpb = lp[b, :T, : U + 1, blank]
        y = targets[b, :U].long()
        lpl = lp[b, :T, torch.arange(U), y] if U > 0 else lp.new_zeros(T, 0)
        if fastemit_lambda:
            lpl = (1 + fastemit_lambda) * lpl - fastemit_lambda * lpl.detach()
        alpha: list[list[Tensor]] = [[None] * (U + 1) for _ in range(T)]  # type: ignore[list-item]
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    alpha[t][u] = lp.new_zeros(())
                    continue
                terms = []
                if t > 0:
                    terms.append(alpha[t - 1][u] + lpb[t - 1, u])
                if u > 0:
                    terms.append(alpha[t][u - 1] + lpl[t, u - 1])
                alpha[t][u] = _lse(terms)
        losses.append(-(alpha[T - 1][U] + lpb[T - 1, U]))
    return _reduce(torch.stack(losses), reduction)


def tdt_loss_reference(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    durations: Sequence[int],
    blank: int = 0,
    sigma: float = 0.0,
    reduction: str = "mean",
    blank_stops: Tensor | None = None,
) -> Tensor:
    """TDT negative log-likelihood (Xu et al. 2023, NeMo's convention), float64.

    logits: (B, T, U+1, V + D), the last D channels are duration logits; token and duration
    log-probs are normalized separately. An arc emitting token k with duration index j from
    (t, u) scores logp_tok[t,u,k] + logp_dur[t,u,j] - sigma. A blank needs d > 0 and goes to
    (t+d, u); label y[u] goes to (t+d, u+1). States have t < T; the path ends with a blank that
    lands exactly on t = T with u = U. Impossible lattices give +inf. ``blank_stops`` (B, T):
    a blank from frame t lands no later than blank_stops[b, t] (None: no limit).
    """
    D = len(durations)
    V = logits.shape[-1] - D
    x = logits.double()
    lpt = F.log_softmax(x[..., :V], dim=-1)
    lpd = F.log_softmax(x[..., V:], dim=-1)
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64)
    losses = []
    for b in range(x.shape[0]):
        T, U = int(logit_lengths[b]), int(target_lengths[b])
        y = targets[b, :U].long()
        stop = [T + max(durations)] * T if blank_stops is None else [int(v) for v in blank_stops[b, :T]]
        alpha: list[list[Tensor]] = [[neg_inf] * (U + 1) for _ in range(T)]
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    alpha[t][u] = torch.zeros((), dtype=torch.float64)
                    continue
                terms = []
                for j, d in enumerate(durations):
                    if t - d < 0:
                        continue
                    # unreachable states (alpha = -inf) are skipped so that autograd sees no
                    # logsumexp of only -inf terms (whose gradient would be NaN)
                    if d > 0 and t <= stop[t - d] and not torch.isinf(alpha[t - d][u]):
                        terms.append(alpha[t - d][u] + lpt[b, t - d, u, blank] + lpd[b, t - d, u, j] - sigma)
                    if u > 0 and not torch.isinf(alpha[t - d][u - 1]):
                        terms.append(
                            alpha[t - d][u - 1] + lpt[b, t - d, u - 1, y[u - 1]] + lpd[b, t - d, u - 1, j] - sigma
                        )
                alpha[t][u] = _lse(terms) if terms else neg_inf
        final = []
        for j, d in enumerate(durations):
            if d > 0 and T - d >= 0 and T <= stop[T - d] and not torch.isinf(alpha[T - d][U]):
                final.append(alpha[T - d][U] + lpt[b, T - d, U, blank] + lpd[b, T - d, U, j] - sigma)
        losses.append(-_lse(final) if final else -neg_inf)
    return _reduce(torch.stack(losses), reduction)


def rnnt_bruteforce(logits: Tensor, targets: Sequence[int], blank: int = 0) -> float:
    """-log of the summed probability of every RNN-T alignment of one utterance.

    logits: (T, U+1, V). An alignment is an ordering of T blanks and U labels that ends with a
    blank; its probability is the product of the arc probabilities along it.
    """
    lp = F.log_softmax(logits.double(), dim=-1)
    T, U = lp.shape[0], len(targets)
    total = []
    # positions of the U labels among the first T+U-1 symbols (the last one is always blank)
    for label_pos in itertools.combinations(range(T + U - 1), U):
        t = u = 0
        score = 0.0
        label_set = set(label_pos)
        for i in range(T + U):
            if i in label_set:
                score += float(lp[t, u, targets[u]])
                u += 1
            else:
                score += float(lp[t, u, blank])
                t += 1
        assert t == T and u == U
        total.append(score)
    return -float(torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0))


def tdt_bruteforce(
    logits: Tensor, targets: Sequence[int], durations: Sequence[int], blank: int = 0, sigma: float = 0.0,
    blank_stops: Sequence[int] | None = None,
) -> float:
    """-log of the summed probability of every TDT alignment of one utterance (depth-first).

    logits: (T, U+1, V + D). Returns inf when no alignment exists. ``blank_stops`` (T,): an
    alignment whose blank from frame t lands after blank_stops[t] is left out.
    """
    D = len(durations)
    V = logits.shape[-1] - D
    lpt = F.log_softmax(logits[..., :V].double(), dim=-1)
    lpd = F.log_softmax(logits[..., V:].double(), dim=-1)
    T, U = lpt.shape[0], len(targets)
    scores: list[float] = []

    def walk(t: int, u: int, score: float) -> None:
        for j, d in enumerate(durations):
            arc = float(lpd[t, u, j]) - sigma
            if d > 0 and (blank_stops is None or t + d <= blank_stops[t]):
                s = score + arc + float(lpt[t, u, blank])
                if t + d == T and u == U:
                    scores.append(s)
                elif t + d < T:
                    walk(t + d, u, s)
            if u < U and t + d < T:
                walk(t + d, u + 1, score + arc + float(lpt[t, u, targets[u]]))

    walk(0, 0, 0.0)
    if not scores:
        return float("inf")
    return -float(torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0))
