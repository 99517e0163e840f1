"""The decoders of the runtime, in numpy over onnxruntime calls, continuing state across chunks.

They reproduce the torch decoders that ``asr.decoding.streaming.StreamingRecognizer`` runs
(same decisions, same tokens and frames; scores agree to rounding):

- :class:`CtcGreedy` = ``asr.decoding.streaming.ctc_greedy_chunk``: argmax per frame, repeats
  merged across chunk boundaries (the previous frame's label is the state), blanks dropped.
- :class:`TransducerGreedy` = ``asr.decoding.transducer.greedy_search``: label looping, per
  stream a frame pointer; a blank advances it (RNN-T by 1, TDT by its argmax duration, a
  duration of 0 counting as 1), a label stays (RNN-T) or advances by its duration (TDT), and
  after ``max_symbols`` labels on one frame the pointer moves on by one. A TDT duration that
  reaches past the chunk is carried (``skip``). Here the joiner is evaluated, for every
  stream still decoding, on all its remaining frames of the chunk at once with its current
  prediction output (one batched call), and the pointer walks over those rows to the next
  label: the same decisions as evaluating frame by frame, with one joiner call per emitted
  label (per stream) instead of one per frame; the decoder runs once per round on the streams
  that emitted.
- :class:`TransducerBeam` = ``asr.decoding.beam.modified_beam_search`` (RNN-T and TDT): per
  step, one joiner call on the live hypotheses of every stream, candidates (token, duration)
  merged by identical (token sequence, frame pointer) with log-add, the ``beam`` best kept
  (ties: the lower candidate position first), one decoder call on the hypotheses that took a
  label. Token sequences are identified, as in torch, by two 31-bit polynomial hashes and
  their length; histories are shared linked cells, so a step costs the same after ten
  minutes as after ten seconds. With an LM (``fusion``: an ``asr.decoding.lm.LMFusion`` of a
  token n-gram or a lexicon word LM, both numpy) every label adds ``weight * ln P_lm(label |
  the slot's last order-1 tokens) + bonus``, and the final ranking adds ``weight * ln
  P_lm(</s> | ...)``, as torch's search with ``lm=`` does.

The prediction network state is the last ``context_size`` tokens for a stateless predictor
(its outputs are memoised per context: the same context always gives the same vector) or the
``h``/``c`` arrays of an LSTM predictor. Every hypothesis starts from blank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .model import OnnxModel

__all__ = ["Hyp", "CtcGreedy", "TransducerGreedy", "TransducerBeam", "check_decoding", "make_decoder"]

NEG_INF = np.float32(-np.inf)


@dataclass
class Hyp:
    """A decoded hypothesis: token ids, the global encoder frame of each, score, and the last
    encoder frame that was not silence: the last label that writes something (not a lone word
    boundary or <unk>: ``OnnxModel.silent_ids``); for CTC the last such argmax."""

    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    score: float = 0.0
    last_speech_frame: int | None = None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, np.float32(0))
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(x - m_safe).sum(axis=axis, keepdims=True)) + m_safe
    return np.squeeze(out, axis=axis)


# ---------------------------------------------------------------------- CTC
@dataclass
class CtcState:
    frames_done: int
    prev: int
    hyp: Hyp


class CtcGreedy:
    def __init__(self, model: OnnxModel):
        self.blank = model.blank
        self.silent = np.array(sorted(model.silent_ids | {model.blank}), np.int64)

    def new_state(self, start_frame: int = 0) -> CtcState:
        return CtcState(start_frame, self.blank, Hyp())

    def decode_chunk(self, states: list[CtcState], log_probs: np.ndarray, lens: np.ndarray) -> None:
        idx = log_probs.argmax(axis=-1)  # (N, T)
        best = np.take_along_axis(log_probs, idx[..., None], axis=-1)[..., 0]
        for b, st in enumerate(states):
            n = int(lens[b])
            if n <= 0:
                continue
            ids = idx[b, :n]
            prev = np.concatenate([[st.prev], ids[:-1]])
            emit = np.nonzero((ids != self.blank) & (ids != prev))[0]
            h = st.hyp
            h.tokens.extend(ids[emit].tolist())
            h.frames.extend((emit + st.frames_done).tolist())
            h.score += float(best[b, :n].sum())
            speech = np.nonzero(~np.isin(ids, self.silent))[0]
            if len(speech):
                h.last_speech_frame = st.frames_done + int(speech[-1])
            st.prev = int(ids[-1])
            st.frames_done += n

    def best(self, state: CtcState) -> Hyp:
        return state.hyp

    def last_speech(self, state: CtcState) -> int | None:
        return state.hyp.last_speech_frame


# ---------------------------------------------------------------------- prediction network
class Predictor:
    """One prediction-network step for many hypotheses at once (see the module docstring)."""

    def __init__(self, model: OnnxModel, cache_size: int = 8192):
        self.model = model
        self.blank = model.blank
        self.stateless = model.decoder_kind == "stateless"
        self.cache: dict[tuple, np.ndarray] = {}
        self.cache_size = cache_size
        if self.stateless:
            self._init_state = (self.blank,) * model.context_size
            out = self._stateless([self._init_state])[0]
        else:
            zeros = [s.zeros() for s in model.decoder_states]
            out, new = model.run_decoder(np.array([self.blank], np.int64), zeros)
            out = out[0]
            self._init_state = tuple(new)
        self._init_out = out

    def initial(self):
        """(state, projected output) after the start-of-sequence blank."""
        return self._init_state, self._init_out

    def _stateless(self, contexts: list[tuple]) -> list[np.ndarray]:
        found = {c: self.cache[c] for c in contexts if c in self.cache}
        missing = [c for c in dict.fromkeys(contexts) if c not in found]
        if missing:
            out, _ = self.model.run_decoder(np.array(missing, dtype=np.int64))
            if len(self.cache) + len(missing) > self.cache_size:
                self.cache.clear()
            for c, row in zip(missing, out):
                self.cache[c] = found[c] = row
        return [found[c] for c in contexts]

    def step(self, tokens: list[int], states: list) -> tuple[list[np.ndarray], list]:
        if not tokens:
            return [], []
        if self.stateless:
            new = [s[1:] + (t,) for s, t in zip(states, tokens)]
            return self._stateless(new), new
        specs = self.model.decoder_states
        batched = [np.concatenate([s[i] for s in states], axis=spec.batch_axis) for i, spec in enumerate(specs)]
        out, new = self.model.run_decoder(np.array(tokens, dtype=np.int64), batched)
        per = []
        for b in range(len(tokens)):
            per.append(tuple(np.take(arr, [b], axis=spec.batch_axis) for arr, spec in zip(new, specs)))
        return list(out), per


# ---------------------------------------------------------------------- greedy transducer
@dataclass
class GreedyState:
    frames_done: int
    pred_state: object
    pred_out: np.ndarray
    skip: int = 0
    hyp: Hyp = field(default_factory=Hyp)
    skip_guarded: bool = False  # the skip is a blank's jump, which the CTC guard may cut short


NO_WALL = 1 << 40


def _stops(ok: np.ndarray) -> list[int]:
    """For every frame t, the first frame f > t with ``ok[f]`` False (a guarded blank jump lands
    there), or NO_WALL: ``asr.decoding.transducer.jump_stops`` for one stream."""
    walls = np.where(ok, NO_WALL, np.arange(len(ok)))
    suffix = np.minimum.accumulate(walls[::-1])[::-1]
    return np.append(suffix[1:], NO_WALL).tolist()


class TransducerGreedy:
    """``asr.decoding.transducer.greedy_search``; ``ctc_guard`` (a blank probability): a hybrid
    TDT's blank jumps pass only over frames its CTC head (``ctc_guard.onnx``) calls blank with
    more than that probability, as ``greedy_search(jump_ok=ASRModel.jump_guard(enc, P))``."""

    def __init__(self, model: OnnxModel, max_symbols: int = 10, ctc_guard: float | None = None):
        if max_symbols < 1:
            raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
        self.model = model
        self.pred = Predictor(model)
        self.blank, self.V = model.blank, model.vocab_size
        self.silent = model.silent_ids
        self.durations = np.array(model.durations, dtype=np.int64) if model.durations else None
        self.max_symbols = max_symbols
        self.log_guard = None
        if ctc_guard is not None:
            if not 0.0 < ctc_guard < 1.0:
                raise ValueError(f"the CTC guard's threshold is a blank probability in (0, 1), got {ctc_guard}")
            if model.ctc_guard is None:
                raise ValueError("the CTC guard needs the model loaded with ctc_guard=True (ctc_guard.onnx)")
            # a Python float: compared with the float32 log-probs in float32, as torch compares them
            self.log_guard = math.log(ctc_guard)

    def new_state(self, start_frame: int = 0) -> GreedyState:
        s, out = self.pred.initial()
        return GreedyState(start_frame, s, out)

    def decode_chunk(self, states: list[GreedyState], enc: np.ndarray, lens: np.ndarray) -> None:
        V, blank, tdt = self.V, self.blank, self.durations is not None
        lens = [int(n) for n in lens]
        t = [st.skip for st in states]
        guarded = [st.skip_guarded for st in states]
        stops = None
        if self.log_guard is not None and enc.shape[1]:
            ok = self.model.run_ctc_guard(enc) > self.log_guard
            stops = [_stops(ok[b, : lens[b]]) for b in range(len(states))]
            for b in range(len(states)):  # a blank's jump reaching into this chunk lands on its first wall
                if guarded[b] and t[b] > 0:
                    wall = next((f for f in range(min(t[b], lens[b])) if not ok[b, f]), None)
                    if wall is not None:
                        t[b] = wall
        count = [0] * len(states)
        active = [b for b in range(len(states)) if t[b] < lens[b]]
        while active:
            # 1) every active stream: joiner on all its remaining frames, its prediction fixed
            spans = [(b, t[b], lens[b]) for b in active]
            enc_rows = np.concatenate([enc[b, lo:hi] for b, lo, hi in spans])
            dec_rows = np.concatenate([np.broadcast_to(states[b].pred_out, (hi - lo, states[b].pred_out.shape[-1])) for b, lo, hi in spans])
            logits = self.model.run_joiner(enc_rows, np.ascontiguousarray(dec_rows))
            tok_lp = _log_softmax(logits[:, :V])
            toks = tok_lp.argmax(-1)
            lps = np.take_along_axis(tok_lp, toks[:, None], -1)[:, 0].astype(np.float64)
            if tdt:
                dur_lp = _log_softmax(logits[:, V:])
                di = dur_lp.argmax(-1)
                lps = lps + np.take_along_axis(dur_lp, di[:, None], -1)[:, 0].astype(np.float64)
                durs = self.durations[di]
            emitters, emit_tok, emit_dur = [], [], []
            row0 = 0
            for b, lo, hi in spans:
                st = states[b]
                f = lo
                while f < hi:
                    r = row0 + f - lo
                    if toks[r] != blank:
                        break
                    st.hyp.score += lps[r]
                    if tdt:  # a guarded jump lands on the first frame it may not pass
                        f = f + max(int(durs[r]), 1) if stops is None else min(f + max(int(durs[r]), 1), stops[b][f])
                        guarded[b] = True
                    else:
                        f += 1
                    count[b] = 0
                t[b] = f
                if f < hi:  # a label at frame f
                    r = row0 + f - lo
                    st.hyp.score += lps[r]
                    emitters.append(b)
                    emit_tok.append(int(toks[r]))
                    emit_dur.append(int(durs[r]) if tdt else 1)
                row0 += hi - lo
            # 2) emit, move the pointers, one decoder step for the streams that emitted
            for b, tok, d in zip(emitters, emit_tok, emit_dur):
                st = states[b]
                frame = st.frames_done + t[b]
                st.hyp.tokens.append(tok)
                st.hyp.frames.append(frame)
                if tok not in self.silent:
                    st.hyp.last_speech_frame = frame
                if tdt:
                    t[b] += d
                    guarded[b] = False
                    count[b] = count[b] + 1 if d == 0 else 0
                else:
                    count[b] += 1
                if count[b] >= self.max_symbols:
                    t[b] += 1
                    count[b] = 0
            outs, new = self.pred.step(emit_tok, [states[b].pred_state for b in emitters])
            for b, o, s in zip(emitters, outs, new):
                states[b].pred_out, states[b].pred_state = o, s
            active = [b for b in emitters if t[b] < lens[b]]
        for b, st in enumerate(states):
            st.skip = t[b] - lens[b] if t[b] >= lens[b] else 0
            st.skip_guarded = guarded[b] and t[b] > lens[b]
            st.frames_done += lens[b]

    def best(self, state: GreedyState) -> Hyp:
        return state.hyp

    def last_speech(self, state: GreedyState) -> int | None:
        return state.hyp.last_speech_frame


# ---------------------------------------------------------------------- modified beam search
_HASH_MUL = (1_000_003, 911_382_323)
_HASH_MOD = (2_147_483_647, 1_000_000_007)


class Slot:
    """One hypothesis of a beam. ``key`` = (hash1, hash2, length) of its token sequence,
    ``prefix`` = the key of the sequence without its last token (None when empty), ``hist`` a
    linked cell (token, frame, parent) or None."""

    __slots__ = ("score", "key", "prefix", "last", "pointer", "hist", "pstate", "pout", "lmctx")

    def __init__(self, score, key, prefix, last, pointer, hist, pstate, pout, lmctx=()):
        self.score, self.key, self.prefix, self.last = score, key, prefix, last
        self.pointer, self.hist, self.pstate, self.pout = pointer, hist, pstate, pout
        self.lmctx = lmctx  # the LM context (the last order-1 tokens, <s> first), with an LM


def _extend_key(key: tuple, tok: int) -> tuple:
    return ((key[0] * _HASH_MUL[0] + tok + 1) % _HASH_MOD[0], (key[1] * _HASH_MUL[1] + tok + 1) % _HASH_MOD[1], key[2] + 1)


def _history(cell) -> tuple[list[int], list[int]]:
    toks, frames = [], []
    while cell is not None:
        toks.append(cell[0])
        frames.append(cell[1])
        cell = cell[2]
    return toks[::-1], frames[::-1]


@dataclass
class BeamState:
    frames_done: int
    slots: list[Slot]


class TransducerBeam:
    def __init__(self, model: OnnxModel, beam: int = 4, max_symbols: int = 10, fusion=None):
        if not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam must be a positive int, got {beam!r}")
        if max_symbols < 1:
            raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
        self.model = model
        self.pred = Predictor(model)
        self.K, self.blank, self.V = beam, model.blank, model.vocab_size
        self.silent = model.silent_ids
        self.max_symbols = max_symbols
        durations = model.durations
        self.tdt = durations is not None
        if self.tdt:
            moves = sorted(set(durations) | ({1} if 0 in durations else set()))
            lab = np.full((len(durations), len(moves)), NEG_INF, np.float32)
            blk = np.full((len(durations), len(moves)), NEG_INF, np.float32)
            for i, d in enumerate(durations):
                lab[i, moves.index(d)] = 0.0
                blk[i, moves.index(max(d, 1))] = 0.0
            self.lab_mask, self.blk_mask = lab, blk
        else:
            moves = [1]
        self.moves = np.array(moves, dtype=np.int64)
        self.Dn = len(moves)
        self.lm = fusion.lm if fusion is not None else None
        self.lm_k = 0  # LM context length: order - 1
        if self.lm is not None:
            if self.lm.vocab_size != self.V:
                raise ValueError(f"the LM is over {self.lm.vocab_size} tokens, the model has {self.V}")
            self.lm_weight, self.lm_bonus = np.float32(fusion.weight), np.float32(fusion.bonus)
            self.lm_k = self.lm.order - 1

    def new_state(self, start_frame: int = 0) -> BeamState:
        s, out = self.pred.initial()
        ctx = (self.lm.bos,) * self.lm_k if self.lm is not None else ()
        return BeamState(start_frame, [Slot(np.float32(0.0), (0, 0, 0), None, -1, 0, None, s, out, ctx)])

    def _fused(self, ctx: tuple) -> np.ndarray:
        """(V,) ``weight * ln P_lm(token | ctx) + bonus``, 0 for blank (float32, as torch)."""
        f = self.lm_weight * self.lm.log_probs(ctx)[: self.V].astype(np.float32) + self.lm_bonus
        f[self.blank] = 0.0
        return f

    def decode_chunk(self, states: list[BeamState], enc: np.ndarray, lens: np.ndarray) -> None:
        V, K, Dn, blank = self.V, self.K, self.Dn, self.blank
        KVD = K * V * Dn
        lens = [int(n) for n in lens]
        rounds = [0] * len(states)
        while True:
            cur = [min(s.pointer for s in st.slots) for st in states]
            act = [b for b in range(len(states)) if cur[b] < lens[b]]
            if not act:
                break
            live = {b: [k for k, s in enumerate(states[b].slots) if s.pointer == cur[b]] for b in act}
            enc_rows = np.stack([enc[b, cur[b]] for b in act for _ in live[b]])
            dec_rows = np.stack([states[b].slots[k].pout for b in act for k in live[b]])
            logits = self.model.run_joiner(enc_rows, dec_rows)
            lp_tok_all = _log_softmax(logits[:, :V])
            if self.tdt:
                lpd_all = _log_softmax(logits[:, V:])[:, :, None]  # (rows, D, 1)
            row = 0
            chosen: list[tuple[int, list]] = []
            for b in act:
                st, t = states[b], cur[b]
                slots = st.slots
                n_live = len(live[b])
                lp_tok = lp_tok_all[row : row + n_live]
                if self.tdt:
                    lpd = lpd_all[row : row + n_live]
                    capped = rounds[b] + 1 >= self.max_symbols
                    lab_d = _logsumexp(lpd + (self.blk_mask if capped else self.lab_mask)[None], axis=1)  # (n, Dn)
                    blk_d = _logsumexp(lpd + self.blk_mask[None], axis=1)
                else:
                    lab_d = blk_d = np.zeros((n_live, 1), np.float32)
                row += n_live
                flat = np.full(KVD + K, NEG_INF, np.float32)
                ext = np.full((K, V, Dn), NEG_INF, np.float32)
                for i, k in enumerate(live[b]):
                    base = slots[k].score + lp_tok[i]  # (V,)
                    if self.lm is not None:
                        base = base + self._fused(slots[k].lmctx)
                    e = base[:, None] + lab_d[i][None, :]
                    e[blank] = base[blank] + blk_d[i]
                    ext[k] = e
                flat[:KVD] = ext.reshape(-1)
                carry = [k for k, s in enumerate(slots) if s.pointer > t]
                for k in carry:
                    flat[KVD + k] = slots[k].score
                # merge candidates with the same (token sequence, pointer)
                groups: dict[int, list[int]] = {}
                seq_live: dict[tuple, int] = {}
                for k in live[b]:
                    seq_live.setdefault(slots[k].key, k)
                for i in live[b]:  # label-extension of j == blank-extension of i
                    s = slots[i]
                    j = seq_live.get(s.prefix) if s.prefix is not None else None
                    if j is not None:
                        for m in range(Dn):
                            tgt = (i * V + blank) * Dn + m
                            groups.setdefault(tgt, [tgt]).append((j * V + s.last) * Dn + m)
                for w in carry:  # a waiting hypothesis == an extension landing on its pointer
                    s = slots[w]
                    hit = np.nonzero(self.moves == s.pointer - t)[0]
                    if not len(hit):
                        continue
                    e_w = int(hit[0])
                    i = seq_live.get(s.key)
                    if i is not None:
                        tgt = (i * V + blank) * Dn + e_w
                    else:
                        j = seq_live.get(s.prefix) if s.prefix is not None else None
                        if j is None:
                            continue
                        # (that label-extension is not merged with a blank-extension: one
                        # would be a live hypothesis with this sequence, found above)
                        tgt = (j * V + s.last) * Dn + e_w
                    groups.setdefault(tgt, [tgt]).append(KVD + w)
                for members in groups.values():
                    members.sort()
                    vals = flat[members]
                    gmax = vals.max()
                    if not np.isfinite(gmax):
                        continue
                    lse = np.float32(np.log(np.exp(vals - gmax, dtype=np.float32).sum(dtype=np.float32)) + gmax)
                    rep = members[int(np.argmax(vals == gmax))]
                    flat[members] = NEG_INF
                    flat[rep] = lse
                # the K best (ties: lower position first)
                finite = np.nonzero(np.isfinite(flat))[0]
                vals = flat[finite]
                if len(finite) > K:
                    kth = np.partition(vals, len(vals) - K)[len(vals) - K]
                    keep = vals >= kth
                    finite, vals = finite[keep], vals[keep]
                order = np.lexsort((finite, -vals))[:K]
                chosen.append((b, [(int(finite[o]), vals[o]) for o in order]))
            # build the new beams; one decoder step for every slot that took a label
            lab_tokens, lab_states, lab_where = [], [], []
            new_beams = {}
            for b, picks in chosen:
                st, t = states[b], cur[b]
                slots = st.slots
                new = []
                for pos, val in picks:
                    if pos < KVD:
                        k, v, m = pos // (V * Dn), (pos // Dn) % V, pos % Dn
                        src = slots[k]
                        pointer = t + int(self.moves[m])
                        if v != blank:
                            frame = st.frames_done + t
                            ctx = (src.lmctx + (v,))[1:] if self.lm_k else src.lmctx
                            slot = Slot(val, _extend_key(src.key, v), src.key, v, pointer, (v, frame, src.hist), None, None, ctx)
                            lab_tokens.append(v)
                            lab_states.append(src.pstate)
                            lab_where.append(slot)
                        else:
                            slot = Slot(val, src.key, src.prefix, src.last, pointer, src.hist, src.pstate, src.pout, src.lmctx)
                    else:
                        src = slots[pos - KVD]
                        slot = Slot(val, src.key, src.prefix, src.last, src.pointer, src.hist, src.pstate, src.pout, src.lmctx)
                    new.append(slot)
                new_beams[b] = new
            outs, pstates = self.pred.step(lab_tokens, lab_states)
            for slot, o, s in zip(lab_where, outs, pstates):
                slot.pout, slot.pstate = o, s
            for b, new in new_beams.items():
                states[b].slots = new
                new_t = min(s.pointer for s in new)
                rounds[b] = rounds[b] + 1 if new_t == cur[b] else 0
        for b, st in enumerate(states):
            for s in st.slots:
                s.pointer -= lens[b]
            st.frames_done += lens[b]

    def _best_slot(self, state: BeamState) -> tuple[Slot, float]:
        """The best token sequence: slots with the same sequence log-added, the best group
        wins; its best slot represents it (``BeamState.best`` in torch). With an LM each slot
        is ranked as if the utterance ended there (its ``weight * ln P_lm(</s> | ...)`` added)."""
        slots = state.slots
        scores = np.array([s.score for s in slots], np.float32)
        if self.lm is not None:
            eos = np.array([self.lm.log_probs(s.lmctx)[self.lm.eos] for s in slots], np.float64).astype(np.float32)
            scores = scores + self.lm_weight * eos
        group_score = []
        for s in slots:
            member = np.array([o.key == s.key for o in slots])
            group_score.append(_logsumexp(np.where(member, scores, NEG_INF), axis=0))
        group_score = np.array(group_score, np.float32)
        top = int(np.argmax(group_score))
        members = np.array([o.key == slots[top].key for o in slots])
        rep = int(np.argmax(np.where(members, scores, NEG_INF)))
        return slots[rep], float(group_score[top])

    def best(self, state: BeamState) -> Hyp:
        slot, score = self._best_slot(state)
        toks, frames = _history(slot.hist)
        return Hyp(toks, frames, score, self._last_speech(slot.hist))

    def _last_speech(self, cell) -> int | None:
        while cell is not None and cell[0] in self.silent:  # past trailing lone word boundaries
            cell = cell[2]
        return None if cell is None else cell[1]

    def last_speech(self, state: BeamState) -> int | None:
        """The frame of the best hypothesis' last token that writes something, walking back
        from its end only over tokens that do not."""
        return self._last_speech(self._best_slot(state)[0].hist)


def check_decoding(model: OnnxModel, decoding: str, ctc_guard: float | None = None, lm: bool = False) -> None:
    """A ValueError for a decoding this model cannot run (before anything is loaded for it)."""
    if decoding not in ("greedy", "beam"):
        raise ValueError(f"decoding must be 'greedy' or 'beam', got {decoding!r}")
    if ctc_guard is not None and (decoding != "greedy" or model.use_ctc):
        raise ValueError("the CTC guard applies to the transducer's greedy search (decoding 'greedy', not use_ctc)")
    if model.use_ctc and decoding == "beam":
        raise ValueError("streaming CTC decoding is greedy (prefix beam search needs the whole utterance); decode greedily (decoding='greedy'; on the command line --method greedy)")
    if lm and (decoding != "beam" or model.use_ctc):
        raise ValueError("an LM is fused into a transducer's beam search (decoding 'beam'; on the command line --method "
                         "beam), which this runtime's CTC decoding is not")


def make_decoder(model: OnnxModel, decoding: str = "greedy", beam: int = 4, max_symbols: int = 10,
                 ctc_guard: float | None = None, fusion=None):
    check_decoding(model, decoding, ctc_guard, fusion is not None)
    if model.use_ctc:
        return CtcGreedy(model)
    if decoding == "greedy":
        return TransducerGreedy(model, max_symbols, ctc_guard)
    return TransducerBeam(model, beam, max_symbols, fusion)
