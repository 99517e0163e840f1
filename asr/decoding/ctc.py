"""CTC decoding with token timestamps: batched greedy, and prefix beam search."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .lm import TokenLM

__all__ = ["Hypothesis", "ctc_greedy", "ctc_prefix_beam_search"]


@dataclass
class Hypothesis:
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # encoder frame of each token's first emission
    score: float = 0.0


def ctc_greedy(log_probs: torch.Tensor, lens: torch.Tensor, blank: int = 0) -> list[Hypothesis]:
    """Best path: argmax per frame, repeats merged, blanks removed.

    Args:
        log_probs: (B, T, V)
        lens: (B,) valid frames
    """
    best, idx = log_probs.max(dim=-1)  # (B, T)
    T = idx.shape[1]
    valid = torch.arange(T, device=idx.device)[None, :] < lens[:, None].to(idx.device)
    prev = torch.nn.functional.pad(idx, (1, 0), value=blank)[:, :-1]
    emit = (idx != blank) & (idx != prev) & valid
    scores = (best * valid).sum(dim=1)
    hyps = []
    for b in range(idx.shape[0]):
        frames = emit[b].nonzero().flatten()
        hyps.append(Hypothesis(idx[b, frames].tolist(), frames.tolist(), float(scores[b])))
    return hyps


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    beam: int = 4,
    blank: int = 0,
    lm: "TokenLM | None" = None,
    lm_weight: float = 0.5,
    token_bonus: float = 0.0,
) -> list[Hypothesis]:
    """CTC prefix beam search: the most probable label sequence, summed over its alignments.

    Every prefix in the beam carries the log-probabilities of the alignments of the frames so
    far that collapse to it and end in blank (``pb``) or in its last label (``pnb``). Per frame,
    each prefix stays (blank, or a repeat of its last label) or is extended by a label (the same
    label as its last one only after a blank); the ``beam`` prefixes with the largest
    ``logaddexp(pb, pnb)`` are kept. Extensions are tried with the ``beam`` most probable
    non-blank labels of the frame (all of them when ``beam >= V - 1``), so with a beam at least
    as large as the number of prefixes the search is exact.

    With ``lm`` (shallow fusion, :mod:`asr.decoding.lm`): extending a prefix by a label adds
    ``lm_weight * ln P_lm(label | prefix) + token_bonus`` to every alignment mass flowing into
    the new prefix (all of it comes from the one shorter prefix, so this is exact), and the final
    ranking adds ``lm_weight * ln P_lm(</s> | prefix)``.

    Timestamps: every prefix also tracks its best single alignment (Viterbi, ending in blank or
    in a label) and the frame at which that alignment first emits each token.

    Args:
        log_probs: (B, T, V) log-probabilities (log-softmax output).
        lens: (B,) valid frames.
        beam: prefixes kept per frame (>= 1).
        blank: the blank index.

    Returns:
        One :class:`Hypothesis` per utterance: the best prefix's tokens, ``frames`` (the frame
        of each token's first emission in the prefix's best alignment kept by the search) and
        ``score``, the log-probability of the prefix (``logaddexp(pb, pnb)``; with ``lm``, plus
        its weighted LM score and bonuses).
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    B, T, V = log_probs.shape
    lp = log_probs.detach().to("cpu", torch.float64)
    n_ext = min(beam, V - 1)
    # the candidate labels of every frame, once for the whole batch
    masked = lp.clone()
    masked[..., blank] = -math.inf
    cand = masked.topk(n_ext, dim=-1).indices.tolist() if n_ext > 0 else [[[]] * T] * B
    lp_l = lp.tolist()
    lens_l = torch.as_tensor(lens).tolist()
    out = []
    ninf = -math.inf
    for b in range(B):
        # prefix -> [pb, pnb, viterbi ending in blank, its frames, viterbi ending in label, its frames]
        beams: dict[tuple[int, ...], list] = {(): [0.0, ninf, 0.0, (), ninf, ()]}
        for t in range(int(lens_l[b])):
            row = lp_l[b][t]
            p_blank = row[blank]
            nxt: dict[tuple[int, ...], list] = {}
            for prefix, (pb, pnb, vb, fb, vnb, fnb) in beams.items():
                p_rep = row[prefix[-1]] if prefix else ninf
                vs, fs = (vb, fb) if vb >= vnb else (vnb, fnb)
                nxt[prefix] = [_log_add(pb, pnb) + p_blank, pnb + p_rep, vs + p_blank, fs, vnb + p_rep, fnb]
            for prefix, (pb, pnb, vb, fb, vnb, fnb) in beams.items():
                tail = prefix[-1] if prefix else None
                fused = lm_weight * lm.log_probs(lm.context(prefix)) if lm is not None else None
                for c in cand[b][t]:
                    p = row[c]
                    if c == tail:
                        mass, v, f = pb + p, vb + p, fb
                    else:
                        mass = _log_add(pb, pnb) + p
                        v, f = (vb, fb) if vb >= vnb else (vnb, fnb)
                        v += p
                    new = prefix + (c,)
                    if fused is not None:
                        bonus = float(fused[c]) + token_bonus
                        mass, v = mass + bonus, v + bonus
                    entry = nxt.get(new)
                    if entry is None:
                        nxt[new] = [ninf, mass, ninf, (), v, f + (t,)]
                    else:
                        entry[1] = _log_add(entry[1], mass)
                        if v > entry[4]:
                            entry[4], entry[5] = v, f + (t,)
            ranked = sorted(nxt.items(), key=lambda kv: _log_add(kv[1][0], kv[1][1]), reverse=True)
            beams = dict(ranked[:beam])
        def final(kv) -> float:
            s = _log_add(kv[1][0], kv[1][1])
            return s + lm_weight * float(lm.log_probs(lm.context(kv[0]))[lm.eos]) if lm is not None else s

        prefix, (pb, pnb, vb, fb, vnb, fnb) = max(beams.items(), key=final)
        out.append(Hypothesis(list(prefix), list(fb if vb >= vnb else fnb), final((prefix, (pb, pnb)))))
    return out
