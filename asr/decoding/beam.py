"""Modified beam search for RNN-T and TDT transducers: batched, streaming, token frames.

RNN-T (icefall's ``modified_beam_search``): at most one label per frame per hypothesis. At every
frame each hypothesis of the beam is expanded by blank and by every label (a label moves the
hypothesis to the next frame, like the blank), the candidates with identical token sequences are
merged by log-adding their scores, and the ``beam`` best merged candidates are kept. (icefall
keeps the ``beam`` best candidates first and merges them afterwards; merging first, as here,
never keeps fewer than ``beam`` hypotheses. With ``beam=1`` the search is greedy decoding with
``max_symbols=1``.)

TDT: a hypothesis is a token sequence *and* a frame pointer, the next frame it reads. Every
utterance keeps a current frame ``t`` = the smallest pointer in its beam. One step:

- the *live* hypotheses (pointer == t) are expanded by every (token, duration): score +
  log p(token) + log p(duration), token and duration log-softmaxed separately (no sigma);
  the new pointer is t + duration, except that a blank never stays on its frame (a blank of
  duration 0 counts as duration 1: its probability is pooled with duration 1), and a label of
  duration 0 stays on frame t (the hypothesis is live again in the next step, one label per
  hypothesis per step) at most ``max_symbols`` times in a row: the ``max_symbols``-th such
  label moves on by one frame (pooled with duration 1, as the greedy decoder does);
- the other hypotheses (pointer > t: they wait for a later frame) are carried over unchanged;
- candidates with the same token sequence and the same pointer are merged by log-add (their
  futures are identical), and the ``beam`` best are kept;
- frames on which no hypothesis of the beam lands are skipped.

When the encoder output ends, every hypothesis of the beam has its pointer at or past the last
frame; hypotheses with the same token sequence (and different pointers) are merged by log-add
to rank the results. RNN-T is the special case where every symbol has duration 1.

All of this is vectorized over the batch and the beam: per step, one joint call on (B, beam)
pairs, one top-k over (B, beam * V * durations + beam) candidates, one prediction-network step
on the slots that took a label. Token sequences are compared through two 31-bit polynomial hashes (a
collision, about 1 in 2^61 per compared pair, would merge two different hypotheses).

Streaming: :class:`BeamState` carries the whole beam (prediction states, scores, hashes, frame
pointers relative to the next chunk, per-slot token histories) to the next chunk of the same
batch; decoding in chunks of any size gives what one call on the whole output gives (scores up
to rounding of the encoder projection, as for greedy search).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .ctc import Hypothesis
from .transducer import begin_chunk, initial_pred

if TYPE_CHECKING:
    from .lm import TokenLM

__all__ = ["BeamState", "modified_beam_search"]

_EMPTY = 1 << 40  # the pointer of an empty slot
_HASH_MUL = (1_000_003, 911_382_323)
_HASH_MOD = (2_147_483_647, 1_000_000_007)


@dataclass
class BeamState:
    """The beam of every utterance of a batch between two chunks (K = beam slots).

    Attributes:
        pred_state: prediction-network state of the B * K slots (row ``b * K + k``).
        pred_out: (B, K, J) projected prediction output of every slot.
        scores: (B, K) log-probability of every slot's (token sequence, pointer); -inf marks an
            empty slot.
        seq_hash: (B, K, 2) hash of every slot's token sequence; prefix_hash: hash of the
            sequence without its last token; length: (B, K) tokens (-1: empty slot);
            last: (B, K) last token (-1 when none).
        pointer: (B, K) the frame, counted from the start of the next chunk, at which every
            slot reads next (always 0 for RNN-T; a TDT duration may reach past a chunk).
        history: ``history[b][k]`` = (tokens, global frames) of slot k of utterance b.
        frames_done: (B,) frames of every utterance consumed by earlier chunks.
    """

    pred_state: list[Tensor]
    pred_out: Tensor
    scores: Tensor
    seq_hash: Tensor
    prefix_hash: Tensor
    length: Tensor
    last: Tensor
    pointer: Tensor
    history: list[list[tuple[list[int], list[int]]]]
    frames_done: Tensor
    lm_context: Tensor | None = None  # (B, K, order - 1) LM context of every slot (with ``lm=``)

    @property
    def batch_size(self) -> int:
        return self.scores.shape[0]

    @property
    def beam(self) -> int:
        return self.scores.shape[1]

    def best(self, lm=None, lm_weight: float = 0.0) -> list[Hypothesis]:
        """The best hypothesis of every utterance: slots with the same token sequence are
        merged (log-add of their scores), the best merged sequence wins; its tokens and frames
        are those of its best slot. With ``lm`` (and ``lm_context``), every sequence is ranked
        as if the utterance ended here: ``lm_weight * ln P_lm(</s> | sequence)`` is added (a
        lexicon LM thus ranks a sequence ending inside a word last)."""
        S = self.scores
        if lm is not None and self.lm_context is not None:
            B, K, _ = self.lm_context.shape
            live = torch.isfinite(S).reshape(-1).tolist()
            eos = [float(lm.log_probs(c)[lm.eos]) if ok else 0.0
                   for c, ok in zip(map(tuple, self.lm_context.reshape(B * K, -1).tolist()), live)]
            S = S + lm_weight * torch.tensor(eos, dtype=S.dtype, device=S.device).view(B, K)
        valid = torch.isfinite(S)
        same = (self.seq_hash[:, :, None] == self.seq_hash[:, None]).all(-1)
        same &= (self.length[:, :, None] == self.length[:, None]) & valid[:, :, None] & valid[:, None]
        group = torch.where(same, S[:, None, :], torch.full_like(S[:, None, :], float("-inf"))).logsumexp(-1)
        top = group.argmax(1)  # (B,) a member of the best group
        members = same[torch.arange(S.shape[0], device=S.device), top]  # (B, K)
        rep = torch.where(members, S, torch.full_like(S, float("-inf"))).argmax(1)
        score = group.gather(1, top[:, None])[:, 0]
        out = []
        for b, (k, s) in enumerate(zip(rep.tolist(), score.tolist())):
            toks, frames = self.history[b][k]
            out.append(Hypothesis(list(toks), list(frames), s))
        return out


def _extend_hash(h: Tensor, tok: Tensor) -> Tensor:
    mul = torch.tensor(_HASH_MUL, dtype=torch.long, device=h.device)
    mod = torch.tensor(_HASH_MOD, dtype=torch.long, device=h.device)
    return (h * mul + (tok + 1)[..., None]) % mod


def _initial_state(head, B: int, K: int, device: torch.device) -> BeamState:
    pstate, pred_out = initial_pred(head, B * K, device)
    scores = torch.full((B, K), float("-inf"), dtype=pred_out.dtype, device=device)
    scores[:, 0] = 0.0
    length = torch.full((B, K), -1, dtype=torch.long, device=device)
    length[:, 0] = 0
    seq_hash = torch.full((B, K, 2), -1, dtype=torch.long, device=device)
    seq_hash[:, 0] = 0
    pointer = torch.full((B, K), _EMPTY, dtype=torch.long, device=device)
    pointer[:, 0] = 0
    return BeamState(
        pred_state=pstate,
        pred_out=pred_out.view(B, K, -1),
        scores=scores,
        seq_hash=seq_hash,
        prefix_hash=torch.full((B, K, 2), -2, dtype=torch.long, device=device),
        length=length,
        last=torch.full((B, K), -1, dtype=torch.long, device=device),
        pointer=pointer,
        history=[[([], []) for _ in range(K)] for _ in range(B)],
        frames_done=torch.zeros(B, dtype=torch.long, device=device),
    )


def _duration_tables(durations: list[int] | None, device, dtype) -> tuple[list[int], Tensor | None, Tensor | None]:
    """The pointer moves (D*) and (D, D*) log masks mapping durations to them: for labels
    (duration 0 stays) and for blanks (duration 0 pooled with 1, as are capped labels)."""
    if durations is None:
        return [1], None, None
    moves = sorted(set(durations) | ({1} if 0 in durations else set()))
    ninf = float("-inf")
    lab = [[0.0 if d == m else ninf for m in moves] for d in durations]
    blk = [[0.0 if max(d, 1) == m else ninf for m in moves] for d in durations]
    return moves, torch.tensor(lab, dtype=dtype, device=device), torch.tensor(blk, dtype=dtype, device=device)


def modified_beam_search(
    head,
    enc: Tensor,
    enc_lens: Tensor,
    beam: int = 4,
    state: BeamState | None = None,
    max_symbols: int = 10,
    lm: "TokenLM | None" = None,
    lm_weight: float = 0.5,
    token_bonus: float = 0.0,
) -> tuple[list[Hypothesis], BeamState]:
    """Batched modified beam search of an RNN-T or TDT transducer (see the module docstring).

    Args:
        head: a ``TransducerHead`` in eval mode (``head.durations`` None: RNN-T; else TDT).
        enc: (B, T, D_enc) raw encoder output (``head.joint.project_enc`` is applied here).
        enc_lens: (B,) valid frames of every utterance in ``enc`` (0 allowed).
        beam: hypotheses kept per utterance (>= 1).
        state: None for a new batch, or the state returned by the previous call to continue
            the same batch on its next chunk of encoder frames (its beam size wins).
        max_symbols: TDT only: at most this many labels of duration 0 in a row on one frame
            per hypothesis (RNN-T emits at most one label per frame anyway).
        lm, lm_weight, token_bonus: shallow fusion with a token n-gram LM
            (:mod:`asr.decoding.lm`) or a lexicon-constrained word LM
            (:mod:`asr.decoding.lexicon`): every label adds ``lm_weight * ln P_lm(label | the
            slot's last labels) + token_bonus`` to its candidate's score. Candidates merged
            have the same token sequence, hence the same LM score, so merging stays exact.

    Returns:
        (hyps, state): ``hyps[b]`` is the best hypothesis of utterance ``b`` so far: its token
        sequence, the global encoder frame at which each token was emitted (along the best
        path of that sequence kept in the beam), and ``score``, the log-probability of the
        sequence summed over the paths merged into it (no length normalization; with ``lm``,
        plus its weighted LM score and bonuses, and the ranking ends every sequence with the
        weighted ``ln P_lm(</s> | sequence)``, as CTC prefix search does; the slots' scores
        carried to the next chunk do not include it). After the last chunk this is the final
        result. ``state`` continues the batch on its next chunk.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if max_symbols < 1:
        raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
    with torch.inference_mode():
        lens, state = begin_chunk(enc, enc_lens, state, lambda B: _initial_state(head, B, beam, enc.device))
        B, T = enc.shape[:2]
        device = enc.device
        K = state.beam
        pred = head.predictor
        blank, V = head.blank, head.vocab_size
        tdt = head.durations is not None
        dtype = state.scores.dtype
        moves_l, lab_mask, blk_mask = _duration_tables(head.durations, device, dtype)
        moves = torch.tensor(moves_l, dtype=torch.long, device=device)
        Dn = len(moves_l)
        KVD = K * V * Dn
        N = KVD + K
        ninf = torch.tensor(float("-inf"), dtype=dtype, device=device)

        enc_p = head.joint.project_enc(enc)  # (B, T, J)
        J = enc_p.shape[-1]
        rows = torch.arange(B, device=device)
        slots = torch.arange(K, device=device)
        dn = torch.arange(Dn, device=device)
        pos = torch.arange(N, device=device).expand(B, N)
        blank_pos = ((slots * V + blank) * Dn)[:, None] + dn  # (K, Dn) position of blank-extensions
        last_frame = max(T - 1, 0)

        S, h, ph = state.scores, state.seq_hash, state.prefix_hash
        L, last, P = state.length, state.last, state.pointer
        pstate, pred_p = state.pred_state, state.pred_out
        ctx = _lm_context(lm, state, device) if lm is not None else None
        rounds = torch.zeros(B, dtype=torch.long, device=device)  # steps spent on the current frame
        recs: list[tuple[Tensor, Tensor, Tensor]] = []  # per step: (source slot, label or -1, frame)

        while True:
            valid = torch.isfinite(S)
            t = torch.where(valid, P, _EMPTY).min(1).values  # (B,) current frame of each utterance
            active = t < lens
            if not bool(active.any()):
                break
            live = valid & (P == t[:, None]) & active[:, None]
            carry = valid & (P > t[:, None]) & active[:, None]

            logits = head.joint(enc_p[rows, t.clamp(max=last_frame)][:, None, :], pred_p)  # (B, K, C)
            lp_tok = logits[..., :V].log_softmax(-1)
            if tdt:
                lpd = logits[..., V:].log_softmax(-1)[..., :, None]  # (B, K, D, 1)
                capped = (rounds + 1 >= max_symbols)[:, None, None]
                lab_d = (lpd + torch.where(capped, blk_mask, lab_mask)[:, None]).logsumexp(-2)  # (B, K, Dn)
                blk_d = (lpd + blk_mask).logsumexp(-2)
            else:
                lab_d = blk_d = torch.zeros((B, K, 1), dtype=dtype, device=device)
            base = S[..., None] + lp_tok  # (B, K, V)
            if ctx is not None:
                fused = lm_weight * _lm_log_probs(lm, ctx, V, dtype) + token_bonus
                fused[..., blank] = 0.0
                base = base + fused
            ext = base[..., None] + lab_d[:, :, None, :]  # (B, K, V, Dn)
            ext[:, :, blank, :] = base[..., blank, None] + blk_d
            ext = torch.where(live[..., None, None], ext, ninf)
            flat = torch.cat([ext.reshape(B, KVD), torch.where(carry, S, ninf)], 1)  # (B, N)

            # merge candidates with the same (token sequence, pointer): group ids over flat
            gid = pos.clone()
            # prefix(x) == sequence(y), pre_eq[b, x, y]
            pre_eq = (ph[:, :, None, :] == h[:, None, :, :]).all(-1) & (L[:, None, :] == L[:, :, None] - 1)
            m1 = pre_eq & live[:, :, None] & live[:, None, :]  # label-extension of j == blank-extension of i
            j1 = m1.long().argmax(-1)
            src = ((j1 * V + last.clamp(min=0)) * Dn)[..., None] + dn  # (B, K, Dn)
            tgt = blank_pos.expand(B, K, Dn)
            src = torch.where(m1.any(-1)[..., None], src, tgt)
            gid.scatter_(1, src.reshape(B, -1), tgt.reshape(B, -1))
            if tdt:  # a waiting hypothesis equals an extension landing on its pointer
                eq_move = moves == (P - t[:, None])[..., None]  # (B, K, Dn)
                w_ok = carry & eq_move.any(-1)
                e_w = eq_move.long().argmax(-1)
                seq_eq = (h[:, :, None, :] == h[:, None, :, :]).all(-1) & (L[:, :, None] == L[:, None, :])
                m2 = seq_eq & w_ok[:, :, None] & live[:, None, :]  # == blank-extension of i
                m3 = pre_eq & w_ok[:, :, None] & live[:, None, :]  # == label-extension of j
                to2 = (m2.long().argmax(-1) * V + blank) * Dn + e_w
                to3 = (m3.long().argmax(-1) * V + last.clamp(min=0)) * Dn + e_w
                gid[:, KVD:] = torch.where(m2.any(-1), to2, torch.where(m3.any(-1), to3, KVD + slots))
            gmax = torch.full_like(flat, float("-inf")).scatter_reduce(1, gid, flat, "amax", include_self=True)
            gmax_safe = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
            gsum = torch.zeros_like(flat).scatter_add(1, gid, (flat - gmax_safe.gather(1, gid)).exp())
            glse = gsum.log() + gmax_safe
            is_max = (flat == gmax.gather(1, gid)) & torch.isfinite(flat)
            rep = torch.full_like(gid, N).scatter_reduce(1, gid, torch.where(is_max, pos, N), "amin", include_self=True)
            merged = torch.where(rep.gather(1, gid) == pos, glse.gather(1, gid), ninf)

            vals, idx = merged.topk(K, dim=1)  # (B, K)
            ok = torch.isfinite(vals)
            is_ext = idx < KVD
            src = torch.where(is_ext, idx // (V * Dn), idx - KVD)
            tok = (idx // Dn) % V
            is_label = is_ext & (tok != blank) & ok
            h_s = h.gather(1, src[..., None].expand(B, K, 2))
            new_P = torch.where(is_ext, t[:, None] + moves[idx % Dn], P.gather(1, src))
            new_h = torch.where(is_label[..., None], _extend_hash(h_s, tok), h_s)
            new_ph = torch.where(is_label[..., None], h_s, ph.gather(1, src[..., None].expand(B, K, 2)))
            new_L = L.gather(1, src) + is_label.long()
            new_last = torch.where(is_label, tok, last.gather(1, src))
            new_P = torch.where(ok, new_P, _EMPTY)
            new_h = torch.where(ok[..., None], new_h, -1)
            new_ph = torch.where(ok[..., None], new_ph, -2)
            new_L = torch.where(ok, new_L, -1)
            if ctx is not None and ctx.shape[-1]:
                ctx_s = ctx.gather(1, src[..., None].expand(B, K, ctx.shape[-1]))
                shifted = torch.cat([ctx_s[..., 1:], tok[..., None]], -1)
                new_ctx = torch.where(is_label[..., None], shifted, ctx_s)
                ctx = torch.where(active[:, None, None], new_ctx, ctx)

            flat_src = (rows[:, None] * K + src).reshape(-1)
            sel = pred.select_state(pstate, flat_src)
            new_pred_p = pred_p.gather(1, src[..., None].expand(B, K, J))
            lab_flat = is_label.reshape(-1)
            lab_rows = lab_flat.nonzero()[:, 0]
            if lab_rows.numel():  # the prediction network runs only on the slots that took a label
                out, stepped = pred.step(tok.reshape(-1)[lab_rows], pred.select_state(sel, lab_rows))
                back = (lab_flat.long().cumsum(0) - 1).clamp(min=0)  # slot -> its row among lab_rows
                new_pstate = pred.merge_state(sel, pred.select_state(stepped, back), lab_flat)
                proj = head.joint.project_pred(out)[back].view(B, K, J)
                new_pred_p = torch.where(is_label[..., None], proj, new_pred_p)
            else:
                new_pstate = sel

            a = active[:, None]
            S = torch.where(a, vals, S)
            h = torch.where(a[..., None], new_h, h)
            ph = torch.where(a[..., None], new_ph, ph)
            L = torch.where(a, new_L, L)
            last = torch.where(a, new_last, last)
            P = torch.where(a, new_P, P)
            pred_p = torch.where(a[..., None], new_pred_p, pred_p)
            pstate = pred.merge_state(pstate, new_pstate, active.repeat_interleave(K))
            recs.append((torch.where(a, src, slots), torch.where(a & is_label, tok, -1), state.frames_done + t))
            new_t = torch.where(torch.isfinite(S), P, _EMPTY).min(1).values
            rounds = torch.where(active & (new_t == t), rounds + 1, 0)

        history = _extend_history(state.history, recs, K)
        new = BeamState(
            pred_state=pstate,
            pred_out=pred_p,
            scores=S,
            seq_hash=h,
            prefix_hash=ph,
            length=L,
            last=last,
            pointer=torch.where(torch.isfinite(S), P - lens[:, None], _EMPTY),
            history=history,
            frames_done=state.frames_done + lens,
            lm_context=ctx,
        )
        return new.best(lm, lm_weight), new


def _lm_context(lm, state: BeamState, device) -> Tensor:
    """(B, K, order - 1) LM context of every slot: carried in the state, or rebuilt from the
    slots' token histories (a state from a search without this LM)."""
    k = lm.order - 1
    if state.lm_context is not None and state.lm_context.shape[-1] == k:
        return state.lm_context
    ctx = [[[lm.bos] * k + list(lm.context(toks)) for toks, _ in hb] for hb in state.history]
    return torch.tensor([[c[len(c) - k:] if k else [] for c in hb] for hb in ctx], dtype=torch.long,
                        device=device).view(state.batch_size, state.beam, k)


def _lm_log_probs(lm, ctx: Tensor, V: int, dtype) -> Tensor:
    """(B, K, V) ln P_lm(token | context) of every slot (contexts are looked up in the LM's cache)."""
    B, K, _ = ctx.shape
    table = [lm.log_probs(c) for c in map(tuple, ctx.reshape(B * K, -1).tolist())]
    return torch.from_numpy(np.stack(table)[:, :V]).to(device=ctx.device, dtype=dtype).view(B, K, V)


def _extend_history(history, recs: list[tuple[Tensor, Tensor, Tensor]], K: int):
    """Follow every final slot back through this call's steps to the slot it started from and
    append the labels emitted on the way."""
    if not recs:
        return [list(hb) for hb in history]
    B = len(history)
    cur = torch.arange(K, device=recs[0][0].device).expand(B, K)
    toks = []
    for src, tok, _ in reversed(recs):
        toks.append(tok.gather(1, cur))
        cur = src.gather(1, cur)
    toks_np = torch.stack(toks[::-1], -1).cpu().numpy()  # (B, K, R)
    frames_np = torch.stack([r[2] for r in recs], -1).cpu().numpy()  # (B, R)
    origin = cur.tolist()
    out = []
    for b in range(B):
        hb = []
        for k in range(K):
            old_t, old_f = history[b][origin[b][k]]
            m = toks_np[b, k] >= 0
            hb.append((old_t + toks_np[b, k][m].tolist(), old_f + frames_np[b][m].tolist()))
        out.append(hb)
    return out
