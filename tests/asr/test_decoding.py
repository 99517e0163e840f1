"""Decoders: CTC prefix beam search, RNN-T / TDT greedy (label looping) and modified beam search.

Every batched decoder is checked against a small, obviously correct reference written here
(per-utterance loops, brute-force enumeration of alignments or exact sums over all paths), and
streaming (chunk by chunk, with a carried state) against one call on the whole input.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict

import pytest
import torch

from asr.decoding import (
    Hypothesis,
    NgramLM,
    ctc_greedy,
    ctc_prefix_beam_search,
    greedy_search,
    modified_beam_search,
)
from asr.decoding.bench import count_greedy_steps
from asr.heads.transducer import TransducerConfig, TransducerHead

ENC_DIM = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add barrier waits


# ---------------------------------------------------------------------------------------------
# helpers


def make_head(kind="rnnt", predictor="lstm", vocab=7, durations=(0, 1, 2, 3, 4), seed=0,
              blank_bias=1.0, dur_bias=None) -> TransducerHead:
    """A random float64 head in eval mode. ``blank_bias`` is added to the blank logit (random
    heads otherwise emit a label almost everywhere); ``dur_bias`` (D,) to the duration logits."""
    torch.manual_seed(seed)
    cfg = TransducerConfig(predictor=predictor, pred_dim=8, joint_dim=10, context_size=2,
                           durations=list(durations), dropout=0.0)
    head = TransducerHead(kind, ENC_DIM, vocab, cfg).double().eval()
    with torch.no_grad():
        head.joint.out.weight.mul_(3.0)  # peakier distributions: more varied decisions
        head.joint.out.bias[head.blank] += blank_bias
        if dur_bias is not None and kind == "tdt":
            head.joint.out.bias[vocab:] += torch.tensor(dur_bias, dtype=torch.float64)
    return head


def random_enc(B, T, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, ENC_DIM, generator=g, dtype=torch.float64) * scale


class Ref:
    """Per-utterance access to a head: prediction output of a token sequence (memoized) and the
    token / duration log-probs at a frame."""

    def __init__(self, head, enc_1):
        self.head = head
        with torch.no_grad():
            self.enc_p = head.joint.project_enc(enc_1)  # (T, J)
        self.cache = {}

    def pred(self, seq: tuple[int, ...]):
        if seq not in self.cache:
            with torch.no_grad():
                if not seq:
                    state = self.head.predictor.init_state(1)
                    state = [s.double() if s.is_floating_point() else s for s in state]
                    out, state = self.head.predictor.step(torch.tensor([self.head.blank]), state)
                else:
                    _, state = self.pred(seq[:-1])
                    out, state = self.head.predictor.step(torch.tensor([seq[-1]]), state)
            self.cache[seq] = (out, state)
        return self.cache[seq]

    def logprobs(self, t: int, seq: tuple[int, ...]):
        """(token log-probs (V,), duration log-probs (D,) or None) as Python lists."""
        V = self.head.vocab_size
        with torch.no_grad():
            logits = self.head.joint(self.enc_p[t], self.head.joint.project_pred(self.pred(seq)[0][0]))
        tok = logits[:V].log_softmax(-1).tolist()
        dur = logits[V:].log_softmax(-1).tolist() if self.head.durations is not None else None
        return tok, dur


def lae(a: float, b: float) -> float:
    if a == -math.inf or b == -math.inf:
        return max(a, b)
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def argmax(xs):
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def ref_greedy_rnnt(head, enc_1, max_symbols):
    """for t in range(T): up to max_symbols labels, a blank moves to the next frame."""
    r = Ref(head, enc_1)
    seq, frames, score = (), [], 0.0
    for t in range(enc_1.shape[0]):
        for _ in range(max_symbols):
            tok, _ = r.logprobs(t, seq)
            k = argmax(tok)
            score += tok[k]
            if k == head.blank:
                break
            seq, frames = seq + (k,), frames + [t]
    return Hypothesis(list(seq), frames, score)


def ref_greedy_tdt(head, enc_1, max_symbols, decisions=None, ok=None):
    """A frame pointer t: blank moves by its duration (at least 1), a label by its duration;
    after max_symbols labels on one frame, one frame on. ``decisions`` (a dict) counts the
    steps as "blank 2", "label 0", ... (by the frames a blank moves). ``ok`` (a list of bools):
    a blank's move stops on the first frame passed over that is not ok."""
    r = Ref(head, enc_1)
    seq, frames, score = (), [], 0.0
    t, n = 0, 0
    while t < enc_1.shape[0]:
        tok, dur = r.logprobs(t, seq)
        k, j = argmax(tok), argmax(dur)
        d = head.durations[j]
        score += tok[k] + dur[j]
        if decisions is not None:
            key = f"blank {max(d, 1)}" if k == head.blank else f"label {d}"
            decisions[key] = decisions.get(key, 0) + 1
        if k == head.blank:
            land = t + max(d, 1)
            if ok is not None:
                land = next((f for f in range(t + 1, land) if f < len(ok) and not ok[f]), land)
            t, n = land, 0
            continue
        seq, frames = seq + (k,), frames + [t]
        if d > 0:
            t, n = t + d, 0
        else:
            n += 1
            if n >= max_symbols:
                t, n = t + 1, 0
    return Hypothesis(list(seq), frames, score)


def ref_greedy(head, enc_1, max_symbols):
    return (ref_greedy_rnnt if head.durations is None else ref_greedy_tdt)(head, enc_1, max_symbols)


def exact_sequence_scores(head, enc_1, max_symbols=10):
    """log P(sequence) summed over every path of the beam-search lattice, for every sequence.

    RNN-T: every frame, one symbol (blank or a label), then the next frame. TDT: from (t, seq,
    n) a blank of duration d goes to t + max(d, 1); a label of duration d to t + d, except that
    the max_symbols-th label of duration 0 in a row goes to t + 1. A path ends past the last
    frame."""
    r = Ref(head, enc_1)
    T, blank = enc_1.shape[0], head.blank
    tdt = head.durations is not None
    states = defaultdict(lambda: -math.inf)  # (t, n, seq) -> log mass
    states[(0, 0, ())] = 0.0
    final = defaultdict(lambda: -math.inf)

    def add(table, key, v):
        table[key] = lae(table[key], v)

    for t in range(T):
        for n in range(max_symbols):
            for (tt, nn, seq), mass in list(states.items()):
                if (tt, nn) != (t, n):
                    continue
                tok, dur = r.logprobs(t, seq)
                moves = list(zip(head.durations, dur)) if tdt else [(1, 0.0)]
                for v in range(head.vocab_size):
                    for d, lpd in moves:
                        lp = mass + tok[v] + lpd
                        if v == blank:
                            key = (t + max(d, 1), 0, seq)
                        elif d > 0:
                            key = (t + d, 0, seq + (v,))
                        elif n + 1 >= max_symbols:
                            key = (t + 1, 0, seq + (v,))
                        else:
                            key = (t, n + 1, seq + (v,))
                        if key[0] >= T:
                            add(final, key[2], lp)
                        else:
                            add(states, key, lp)
    return dict(final)


def _add_candidate(cands, key, score, frames):
    c = cands.get(key)
    if c is None:
        cands[key] = [score, score, frames]
    else:
        c[0] = lae(c[0], score)
        if score > c[1]:
            c[1], c[2] = score, frames


def ref_beam(head, enc_1, beam, max_symbols=10, lm=None, lm_weight=0.0, bonus=0.0):
    """modified_beam_search for one utterance with dicts: hypotheses keyed by (tokens, pointer);
    each step expands those on the current frame t (the smallest pointer), carries the others,
    log-adds candidates with equal keys (timestamps: the best member's), keeps the ``beam`` best.
    With ``lm``, a label v after ``seq`` also scores ``lm_weight * ln P_lm(v | seq) + bonus``, and
    the final ranking adds ``lm_weight * ln P_lm(</s> | seq)``."""
    r = Ref(head, enc_1)
    T, blank = enc_1.shape[0], head.blank
    tdt = head.durations is not None
    hyps = {((), 0): (0.0, [])}  # (seq, pointer) -> (log score, frames)
    rounds, t = -1, 0  # rounds: steps already spent on frame t
    while True:
        t_new = min(p for _, p in hyps)
        rounds = rounds + 1 if t_new == t else 0
        t = t_new
        if t >= T:
            break
        cands = {}  # key -> [log-added score, best member score, frames]
        for (seq, p), (sc, fr) in hyps.items():
            if p > t:
                _add_candidate(cands, (seq, p), sc, fr)
                continue
            tok, dur = r.logprobs(t, seq)
            for v in range(head.vocab_size):
                for d, lpd in (zip(head.durations, dur) if tdt else [(1, 0.0)]):
                    if v == blank:
                        _add_candidate(cands, (seq, t + max(d, 1)), sc + tok[v] + lpd, fr)
                    else:
                        move = 1 if d == 0 and rounds + 1 >= max_symbols else d
                        fused = lm_weight * float(lm.log_probs(lm.context(seq))[v]) + bonus if lm is not None else 0.0
                        _add_candidate(cands, (seq + (v,), t + move), sc + tok[v] + lpd + fused, fr + [t])
        best = sorted(cands.items(), key=lambda kv: -kv[1][0])[:beam]
        hyps = {k: (c[0], c[2]) for k, c in best}
    groups = {}
    for (seq, _), (sc, fr) in hyps.items():
        g = groups.get(seq)
        groups[seq] = (sc, sc, fr) if g is None else (lae(g[0], sc), *((sc, fr) if sc > g[1] else g[1:]))
    if lm is not None:  # the final ranking ends every sequence with </s>
        groups = {seq: (g[0] + lm_weight * float(lm.log_probs(lm.context(seq))[lm.eos]), *g[1:]) for seq, g in groups.items()}
    seq, (score, _, frames) = max(groups.items(), key=lambda kv: kv[1][0])
    return Hypothesis(list(seq), frames, score)


def same_hyp(a: Hypothesis, b: Hypothesis, tol=1e-9):
    return a.tokens == b.tokens and a.frames == b.frames and math.isclose(a.score, b.score, rel_tol=tol, abs_tol=tol)


def assert_same_hyps(got, want, tol=1e-9):
    assert len(got) == len(want)
    for b, (g, w) in enumerate(zip(got, want)):
        assert same_hyp(g, w, tol), f"utterance {b}: got {g}, want {w}"


def decode_chunked(fn, head, enc, lens, splits, **kw):
    """Decode with fn chunk by chunk: splits[b] = the frames of utterance b in each chunk."""
    B = enc.shape[0]
    n = len(splits[0])
    state, hyps = None, None
    offs = [0] * B
    for i in range(n):
        cl = [splits[b][i] for b in range(B)]
        chunk = torch.zeros(B, max(cl), enc.shape[2], dtype=enc.dtype)
        for b in range(B):
            chunk[b, : cl[b]] = enc[b, offs[b]: offs[b] + cl[b]]
            offs[b] += cl[b]
        hyps, state = fn(head, chunk, torch.tensor(cl), state=state, **kw)
    assert offs == [int(x) for x in lens]
    return hyps, state


def fixed_splits(lens, size):
    n = max(1, math.ceil(max(lens) / size))
    return [[min(size, max(0, L - i * size)) for i in range(n)] for L in lens]


def random_splits(lens, rng: random.Random):
    n = rng.randint(1, max(lens) + 3)
    out = []
    for L in lens:
        cuts = sorted(rng.randint(0, L) for _ in range(n - 1))
        bounds = [0] + cuts + [L]
        out.append([bounds[i + 1] - bounds[i] for i in range(n)])
    return out


# ---------------------------------------------------------------------------------------------
# CTC


def brute_force_ctc(lp, blank):
    """All alignments of (T, V) log-probs summed per collapsed label sequence: the best
    sequence, its log-prob, and the first-emission frames of its best alignment."""
    T, V = lp.shape
    total = defaultdict(lambda: -math.inf)
    viterbi = {}
    for path in itertools.product(range(V), repeat=T):
        labels, frames, prev = [], [], None
        for t, s in enumerate(path):
            if s != blank and s != prev:
                labels.append(s)
                frames.append(t)
            prev = s
        score = sum(lp[t, s].item() for t, s in enumerate(path))
        key = tuple(labels)
        total[key] = lae(total[key], score)
        if key not in viterbi or score > viterbi[key][0]:
            viterbi[key] = (score, frames)
    best = max(total, key=total.get)
    return best, total[best], viterbi[best][1]


@pytest.mark.parametrize("blank", [0, 2])
def test_ctc_prefix_beam_search_is_exact_with_a_large_beam(blank):
    g = torch.Generator().manual_seed(1 + blank)
    for trial in range(6):
        B, T, V = 3, 5, 3
        lp = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 1.5).log_softmax(-1)
        lens = torch.tensor([5, 1 + trial % 5, 0])
        hyps = ctc_prefix_beam_search(lp, lens, beam=64, blank=blank)
        for b in range(B):
            labels, score, frames = brute_force_ctc(lp[b, : lens[b]], blank)
            assert hyps[b].tokens == list(labels), (trial, b)
            assert math.isclose(hyps[b].score, score, abs_tol=1e-10), (hyps[b].score, score)
            assert hyps[b].frames == frames, (trial, b)  # first emissions of its best alignment


def test_ctc_prefix_beam_search_frames_and_beam_one():
    # a peaked distribution: the best prefix is the best path, frames as in greedy
    g = torch.Generator().manual_seed(0)
    B, T, V = 2, 12, 6
    idx = torch.randint(0, V, (B, T), generator=g)
    noise = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    lp = (torch.nn.functional.one_hot(idx, V).double() * 20 + noise).log_softmax(-1)
    lens = torch.tensor([12, 7])
    want = ctc_greedy(lp, lens)
    got = ctc_prefix_beam_search(lp, lens, beam=4)
    for w, h in zip(want, got):
        assert h.tokens == w.tokens and h.frames == w.frames
        assert h.score >= w.score - 1e-12  # the prefix sums over alignments, best path is one of them
    # beam 1 keeps one prefix: each frame takes its best continuation
    lp2 = torch.randn(1, 6, 4, generator=g, dtype=torch.float64).log_softmax(-1)
    h1 = ctc_prefix_beam_search(lp2, torch.tensor([6]), beam=1)[0]
    assert h1.score <= ctc_prefix_beam_search(lp2, torch.tensor([6]), beam=16)[0].score + 1e-12


# ---------------------------------------------------------------------------------------------
# greedy


@pytest.mark.parametrize("dim,context", [(8, 2), (12, 3), (6, 2), (8, 1)])
def test_stateless_step_tables_equal_the_convolution(dim, context):
    """Decoding's table-lookup prediction step equals the training forward (embedding + grouped
    convolution), and follows the weights when they change (validation between updates)."""
    from asr.heads.transducer import StatelessPredictor

    torch.manual_seed(0)
    pred = StatelessPredictor(9, dim, context, dropout=0.0).double().eval()
    tokens = torch.randint(0, 9, (5,))
    state = [torch.randint(0, 9, (5, context - 1))]
    for _ in range(2):
        with torch.no_grad():
            want, want_state = pred.forward(tokens[:, None], state)
        with torch.inference_mode():
            got, got_state = pred.step(tokens, state)
        torch.testing.assert_close(got, want[:, 0], rtol=0, atol=1e-12)
        assert torch.equal(got_state[0], want_state[0])
        opt = torch.optim.SGD(pred.parameters(), lr=0.5)  # an in-place update, as training does
        pred.train()
        pred.forward(tokens[:, None], state)[0].square().sum().backward()
        opt.step()
        pred.eval()


@pytest.mark.parametrize("loop", ["label", "rows"])  # label looping; the one-stream path row by row
@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_greedy_matches_per_utterance_reference(kind, predictor, loop):
    for seed, (blank_bias, max_symbols) in enumerate([(1.5, 3), (0.0, 2), (3.0, 10), (0.5, 1), (-0.5, 4)]):
        head = make_head(kind, predictor, seed=seed, blank_bias=blank_bias)
        lens = torch.tensor([11, 4, 0, 9])
        enc = random_enc(4, 11, seed)
        hyps, state = greedy_search(head, enc, lens, max_symbols=max_symbols, loop=loop)
        want = [ref_greedy(head, enc[b, : lens[b]], max_symbols) for b in range(4)]
        assert_same_hyps(hyps, want)
        assert state.frames_done.tolist() == lens.tolist()
        assert sum(len(h.tokens) for h in hyps) > 0


@pytest.mark.parametrize("loop", ["label", "rows"])  # label looping; the one-stream path row by row
@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_greedy_streaming_equals_whole(kind, predictor, loop):
    head = make_head(kind, predictor, seed=3, blank_bias=1.0)
    lens = [13, 5, 0, 10]
    enc = random_enc(4, 13, 7)
    whole, _ = greedy_search(head, enc, torch.tensor(lens), max_symbols=3, loop=loop)
    assert sum(len(h.tokens) for h in whole) >= 5
    rng = random.Random(0)
    all_splits = [fixed_splits(lens, s) for s in (1, 3, 7)] + [random_splits(lens, rng) for _ in range(6)]
    for splits in all_splits:
        hyps, state = decode_chunked(greedy_search, head, enc, lens, splits, max_symbols=3, loop=loop)
        assert_same_hyps(hyps, whole, tol=1e-12)
        assert state.frames_done.tolist() == lens


@pytest.mark.parametrize("loop", ["label", "rows"])  # label looping; the one-stream path row by row
def test_tdt_streaming_carries_skips_across_chunks(loop):
    # durations biased to 4: most jumps cross a 1- or 2-frame chunk
    head = make_head("tdt", "lstm", seed=5, blank_bias=0.5, dur_bias=[-3, -3, 0, 0, 4])
    lens = [16, 9]
    enc = random_enc(2, 16, 2)
    whole, _ = greedy_search(head, enc, torch.tensor(lens), loop=loop)
    gaps = [b - a for h in whole for a, b in zip(h.frames, h.frames[1:])]
    assert max(gaps) >= 3
    for size in (1, 2):
        hyps, _ = decode_chunked(greedy_search, head, enc, lens, fixed_splits(lens, size), loop=loop)
        assert_same_hyps(hyps, whole, tol=1e-12)
    # the previous call's hypotheses are not changed by the next one
    s1 = greedy_search(head, enc[:, :5], torch.tensor([5, 5]), loop=loop)
    before = [Hypothesis(list(h.tokens), list(h.frames), h.score) for h in s1[0]]
    greedy_search(head, enc[:, 5:], torch.tensor([11, 4]), state=s1[1], loop=loop)
    assert_same_hyps(s1[0], before, tol=0)


@pytest.mark.parametrize("loop", ["label", "rows"])  # label looping; the one-stream path row by row
@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_greedy_batch_independence(kind, loop):
    head = make_head(kind, "lstm", seed=11, blank_bias=1.0)
    lens = torch.tensor([8, 12, 3])
    enc = random_enc(3, 12, 4)
    batch, _ = greedy_search(head, enc, lens, loop=loop)
    for b in range(3):
        alone, _ = greedy_search(head, enc[b: b + 1, : lens[b]], lens[b: b + 1])
        assert_same_hyps(alone, [batch[b]])


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_greedy_loops_share_their_state(kind, predictor):
    """The two ways of searching a batch carry the same state: a stream may change between
    label looping and rows at any chunk and ends where either one alone ends. ``loop="auto"``
    takes rows on the CPU; a wrong ``loop`` is an error that names it."""
    head = make_head(kind, predictor, seed=6, blank_bias=0.5, **({"dur_bias": [0, 0, 1.0, 1.5, 0]} if kind == "tdt" else {}))
    lens = [15, 9, 0, 12]
    enc = random_enc(4, 15, 5)
    whole, wstate = greedy_search(head, enc, torch.tensor(lens), loop="label")
    assert sum(len(h.tokens) for h in whole) >= 5
    splits = random_splits(lens, random.Random(3))
    state, offs = None, [0] * 4
    for i in range(len(splits[0])):
        cl = [splits[b][i] for b in range(4)]
        chunk = torch.zeros(4, max(cl), enc.shape[2], dtype=enc.dtype)
        for b in range(4):
            chunk[b, : cl[b]] = enc[b, offs[b] : offs[b] + cl[b]]
            offs[b] += cl[b]
        hyps, state = greedy_search(head, chunk, torch.tensor(cl), state=state, loop=("label", "rows")[i % 2])
    assert_same_hyps(hyps, whole, tol=1e-12)
    assert state.skip.tolist() == wstate.skip.tolist() and state.frames_done.tolist() == lens
    assert torch.allclose(state.pred_out, wstate.pred_out, atol=1e-6)
    for a, b in zip(state.pred_state, wstate.pred_state):
        assert a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-6)
    auto, _ = greedy_search(head, enc, torch.tensor(lens))
    assert_same_hyps(auto, whole)
    with pytest.raises(ValueError, match="loop"):
        greedy_search(head, enc, torch.tensor(lens), loop="frames")


@pytest.mark.parametrize("loop", ["label", "rows"])  # label looping; the one-stream path row by row
@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_greedy_max_symbols_cap(kind, loop):
    # blank (and, for TDT, durations > 0) made very unlikely: every frame hits the cap
    head = make_head(kind, "stateless", seed=2, blank_bias=-30.0, dur_bias=[30, 0, 0, 0, 0])
    lens = torch.tensor([6, 2])
    enc = random_enc(2, 6, 1)
    for cap in (1, 2, 4):
        hyps, _ = greedy_search(head, enc, lens, max_symbols=cap, loop=loop)
        for b, h in enumerate(hyps):
            assert h.frames == [t for t in range(int(lens[b])) for _ in range(cap)]
        assert_same_hyps(hyps, [ref_greedy(head, enc[b, : lens[b]], cap) for b in range(2)])
    with pytest.raises(ValueError, match="max_symbols"):
        greedy_search(head, enc, lens, max_symbols=0)


@pytest.mark.parametrize("loop", ["label", "rows"])  # label looping; the one-stream path row by row
@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_tdt_durations_without_zero(predictor, loop):
    head = make_head("tdt", predictor, durations=(1, 2, 4), seed=4, blank_bias=0.0)
    lens = torch.tensor([14, 6, 1])
    enc = random_enc(3, 14, 9)
    hyps, _ = greedy_search(head, enc, lens, loop=loop)
    assert_same_hyps(hyps, [ref_greedy(head, enc[b, : lens[b]], 10) for b in range(3)])
    for h in hyps:  # no duration 0: one label per frame at most
        assert all(b > a for a, b in zip(h.frames, h.frames[1:]))
    assert any(b - a > 1 for h in hyps for a, b in zip(h.frames, h.frames[1:]))
    chunked, _ = decode_chunked(greedy_search, head, enc, lens.tolist(), fixed_splits(lens.tolist(), 3), loop=loop)
    assert_same_hyps(chunked, hyps, tol=1e-12)


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_greedy_one_stream_path_equals_the_batched_loop(kind, predictor):
    """A batch of one takes the scalar path (``_greedy_one``): the tokens, frames, scores and
    carried state of the batched loop, whole and chunk by chunk (TDT jumps across chunks)."""
    cases = [(1.5, 3), (0.0, 2), (3.0, 10), (-0.5, 1), (0.5, 4)]
    for seed, (blank_bias, max_symbols) in enumerate(cases):
        extra = {"dur_bias": [0, 0, 0, 1.5, 2.5]} if kind == "tdt" and seed % 2 else {}
        head = make_head(kind, predictor, seed=seed, blank_bias=blank_bias, **extra)
        lens = [12, 7, 0]
        enc = random_enc(3, 12, seed)
        batch, bstate = greedy_search(head, enc, torch.tensor(lens), max_symbols=max_symbols, loop="label")
        rng = random.Random(seed)
        for b, L in enumerate(lens):
            one = enc[b : b + 1, :L]
            alone, state = greedy_search(head, one, torch.tensor([L]), max_symbols=max_symbols)
            assert_same_hyps(alone, [batch[b]])
            assert state.skip.tolist() == [int(bstate.skip[b])] and state.frames_done.tolist() == [L]
            assert torch.allclose(state.pred_out, bstate.pred_out[b : b + 1], atol=1e-6)
            for splits in (fixed_splits([L], 1), fixed_splits([L], 3), random_splits([L], rng)):
                chunked, cstate = decode_chunked(greedy_search, head, one, [L], splits, max_symbols=max_symbols)
                assert_same_hyps(chunked, alone, tol=1e-12)
                assert cstate.skip.tolist() == state.skip.tolist()
    if kind == "tdt":  # the jumps were exercised: some label gap of 3 frames or more
        assert any(b - a >= 3 for h in batch for a, b in zip(h.frames, h.frames[1:]))


@pytest.mark.parametrize("loop", ["label", "rows"])  # label looping; the one-stream path row by row
@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_tdt_jumps_guarded_by_jump_ok(predictor, loop):
    """``jump_ok``: a blank's jump lands on the first frame it would pass over that is not ok.
    Batched, one utterance alone and chunk by chunk (the check carried into the next chunk,
    the two loops alternating) all equal the reference; labels' jumps are never cut."""
    head = make_head("tdt", predictor, seed=11, blank_bias=1.5, dur_bias=[0, 0, 1.0, 2.0, 3.0])
    lens = [16, 11, 0, 14]
    enc = random_enc(4, 16, 12)
    g = torch.Generator().manual_seed(13)
    ok = torch.rand(4, 16, generator=g) < 0.6
    want = [ref_greedy_tdt(head, enc[b, :L], 10, ok=ok[b, :L].tolist()) for b, L in enumerate(lens)]
    free = [ref_greedy_tdt(head, enc[b, :L], 10) for b, L in enumerate(lens)]
    assert want != free  # the guard changed some decisions
    got, state = greedy_search(head, enc, torch.tensor(lens), loop=loop, jump_ok=ok)
    assert_same_hyps(got, want)
    for b, L in enumerate(lens):
        alone, _ = greedy_search(head, enc[b : b + 1, :L], torch.tensor([L]), jump_ok=ok[b : b + 1, :L])
        assert_same_hyps(alone, [want[b]])
    rng = random.Random(5)
    for splits in (fixed_splits(lens, 1), fixed_splits(lens, 3), random_splits(lens, rng), random_splits(lens, rng)):
        st, offs = None, [0] * 4
        for i in range(len(splits[0])):
            cl = [splits[b][i] for b in range(4)]
            chunk = torch.zeros(4, max(cl), enc.shape[2], dtype=enc.dtype)
            cok = torch.ones(4, max(cl), dtype=torch.bool)  # padding: anything
            for b in range(4):
                chunk[b, : cl[b]] = enc[b, offs[b] : offs[b] + cl[b]]
                cok[b, : cl[b]] = ok[b, offs[b] : offs[b] + cl[b]]
                offs[b] += cl[b]
            hyps, st = greedy_search(head, chunk, torch.tensor(cl), state=st, jump_ok=cok, loop=(loop, "label", "rows")[i % 3])
        assert_same_hyps(hyps, want, tol=1e-12)
        assert st.skip.tolist() == state.skip.tolist()
    # all ok: the plain search; none ok: no blank passes over a frame
    everywhere, _ = greedy_search(head, enc, torch.tensor(lens), loop=loop, jump_ok=torch.ones(4, 16, dtype=torch.bool))
    assert_same_hyps(everywhere, free)
    nowhere, _ = greedy_search(head, enc, torch.tensor(lens), loop=loop, jump_ok=torch.zeros(4, 16, dtype=torch.bool))
    assert_same_hyps(nowhere, [ref_greedy_tdt(head, enc[b, :L], 10, ok=[False] * L) for b, L in enumerate(lens)])
    with pytest.raises(ValueError, match="jump_ok must be a bool tensor of shape"):
        greedy_search(head, enc, torch.tensor(lens), jump_ok=ok[:, :5])
    with pytest.raises(ValueError, match="RNN-T"):
        greedy_search(make_head("rnnt", predictor), enc, torch.tensor(lens), jump_ok=ok)


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_greedy_one_stream_path_without_numpy(kind, monkeypatch):
    """Logits numpy cannot view (GPU, bfloat16) take the one-stream path's torch argmax: the
    same search as the batched loop."""
    import asr.decoding.transducer as tr

    head = make_head(kind, "stateless", seed=4, blank_bias=0.5)
    lens = torch.tensor([14, 9])
    enc = random_enc(2, 14, 3)
    batch, _ = greedy_search(head, enc, lens, loop="label")
    monkeypatch.setattr(tr, "NUMPY_ARGMAX", False)
    alone = [greedy_search(head, enc[b : b + 1, : lens[b]], lens[b : b + 1])[0][0] for b in range(2)]
    assert_same_hyps(alone, batch)
    assert sum(len(h.tokens) for h in alone) >= 5


@pytest.mark.parametrize("param", ["predictor.embed.weight", "predictor.conv.weight", "joint.pred_proj.weight", "joint.pred_proj.bias"])
def test_stepper_memo_follows_the_weights(param):
    """``head.stepper()`` (one stream, stateless predictor) memoizes by context: a repeated
    context returns the stored result, equal to a fresh step; writing any weight it depends on
    (in place, as an optimizer step does) empties the memo for the next search."""
    head = make_head("tdt", "stateless", seed=1)
    start = head.predictor.init_state(1)

    def fresh(tok, state):
        out, new = head.predictor.step(torch.tensor([tok]), state)
        return head.joint.project_pred(out), new

    with torch.inference_mode():
        step = head.stepper()
        first, state = step(3, start)
        assert step(3, start)[0] is first and head.stepper()(3, start)[0] is first  # hits
        second, _ = step(5, state)  # context (3, 5)
        assert step(5, state)[0] is second
        for got, want in ((step(3, start), fresh(3, start)), (step(5, state), fresh(5, state))):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1][0], want[1][0])
    with torch.no_grad():
        head.get_parameter(param).mul_(2.0)
    with torch.inference_mode():
        again, _ = head.stepper()(5, state)
        assert torch.equal(again, fresh(5, state)[0]) and not torch.equal(again, second)
    lstm = make_head("rnnt", "lstm", seed=1)  # stepped, not memoized: equal to a fresh step
    with torch.inference_mode():
        s0 = [x.double() for x in lstm.predictor.init_state(1)]
        got, new = lstm.stepper()(4, s0)
        out, want = lstm.predictor.step(torch.tensor([4]), s0)
        assert torch.equal(got, lstm.joint.project_pred(out)) and all(torch.equal(a, b) for a, b in zip(new, want))


@pytest.mark.parametrize("case", ["varied", "blanks", "capped", "rnnt"])
def test_count_greedy_steps(case):
    """The benchmark's account of a greedy search: joint calls, and a TDT's decisions by kind
    and duration equal to the reference search's (the look past the last frame left out)."""
    if case == "rnnt":
        head = make_head("rnnt", "lstm", seed=3)
    elif case == "capped":  # labels of duration 0 until max_symbols forces the frame on
        head = make_head("tdt", "stateless", seed=2, blank_bias=-30.0, dur_bias=[30, 0, 0, 0, 0])
    elif case == "blanks":  # mostly blanks: searches end on one, then look past the last frame
        head = make_head("tdt", "lstm", seed=6, blank_bias=3.0)
    else:
        head = make_head("tdt", "lstm", seed=5, blank_bias=2.0, dur_bias=[3.0, 0, 0, 0, 0])
    kinds = set()
    for (seed, T), cap in itertools.product(((1, 13), (2, 7), (3, 1), (4, 20)), (1, 3)):
        enc = random_enc(1, T, seed)
        lens = torch.tensor([T])
        got = count_greedy_steps(head, enc, lens, max_symbols=cap)
        hyps, _ = greedy_search(head, enc, lens, max_symbols=cap)
        if case == "rnnt":  # one call per label and per blank (frames left below the cap)
            frames = hyps[0].frames
            calls = len(frames) + sum(frames.count(t) < cap for t in range(T))
            assert got["decisions"] is None and got["joint_calls"] == calls, (got, calls)
            continue
        want = {}
        ref = ref_greedy_tdt(head, enc[0], cap, want)
        assert got["decisions"] == dict(sorted(want.items())), (got, want)
        assert sum(n for k, n in want.items() if k.startswith("label")) == len(ref.tokens) == len(hyps[0].tokens)
        assert got["joint_calls"] == sum(want.values())  # one utterance: no look past its last frame
        kinds |= set(want)
    if case == "varied":  # the random head moves by several durations, so the counts can differ
        assert len(kinds) >= 3, kinds
    batched = count_greedy_steps(head, random_enc(2, 5, 4), torch.tensor([5, 3]))
    assert batched["decisions"] is None and batched["joint_calls"] > 0


def test_greedy_rejects_bad_lengths():
    head = make_head("rnnt")
    enc = random_enc(2, 4, 0)
    with pytest.raises(ValueError, match="enc_lens"):
        greedy_search(head, enc, torch.tensor([5, 1]))
    _, state = greedy_search(head, enc, torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="batch"):
        greedy_search(head, enc[:1], torch.tensor([1]), state=state)


# ---------------------------------------------------------------------------------------------
# modified beam search


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_beam_one_is_greedy_with_one_symbol_per_frame(predictor):
    for seed in range(3):
        head = make_head("rnnt", predictor, seed=seed, blank_bias=0.5)
        lens = torch.tensor([9, 3, 0, 7])
        enc = random_enc(4, 9, seed)
        want, _ = greedy_search(head, enc, lens, max_symbols=1)
        got, _ = modified_beam_search(head, enc, lens, beam=1)
        assert_same_hyps(got, want)


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_beam_large_is_exact(kind):
    """With a beam too large to prune, the best sequence and its score are the exact ones."""
    T_max = 4 if kind == "rnnt" else 3
    for seed in range(3):
        head = make_head(kind, "lstm", vocab=3, durations=(0, 1, 2), seed=seed, blank_bias=0.3)
        lens = torch.tensor([T_max, T_max - 1, 1])
        enc = random_enc(3, T_max, seed + 10)
        hyps, _ = modified_beam_search(head, enc, lens, beam=256, max_symbols=2)
        for b in range(3):
            exact = exact_sequence_scores(head, enc[b, : lens[b]], max_symbols=2)
            seq, score = max(exact.items(), key=lambda kv: kv[1])
            assert hyps[b].tokens == list(seq), (seed, b)
            assert math.isclose(hyps[b].score, score, abs_tol=1e-9), (hyps[b].score, score)
            assert math.isclose(math.fsum(math.exp(v) for v in exact.values()), 1.0, abs_tol=1e-9)
            assert len(hyps[b].frames) == len(seq)


KINDS_PREDICTORS = [("rnnt", "lstm"), ("rnnt", "stateless"), ("tdt", "lstm"), ("tdt", "stateless")]


@pytest.mark.parametrize(("kind", "predictor"), KINDS_PREDICTORS)
def test_beam_matches_per_utterance_reference(kind, predictor):
    cases = [(2, 0.0, 2, (0, 1, 2, 3, 4)), (3, 1.0, 1, (0, 1, 2, 3, 4)), (4, 0.5, 3, (0, 2, 3)),
             (3, 0.0, 2, (1, 2, 4)), (5, 0.5, 2, (0, 1, 2, 3, 4))]
    for seed, (beam, blank_bias, max_symbols, durations) in enumerate(cases):
        head = make_head(kind, predictor, vocab=5, durations=durations, seed=seed, blank_bias=blank_bias)
        lens = torch.tensor([9, 0, 4, 7])
        enc = random_enc(4, 9, seed + 30)
        hyps, state = modified_beam_search(head, enc, lens, beam=beam, max_symbols=max_symbols)
        assert_same_hyps(hyps, [ref_beam(head, enc[b, : lens[b]], beam, max_symbols) for b in range(4)])
        # the beam never holds two slots with the same (tokens, pointer)
        for b in range(4):
            keys = [(tuple(state.history[b][k][0]), int(state.pointer[b, k]))
                    for k in range(beam) if math.isfinite(state.scores[b, k])]
            assert len(keys) == len(set(keys)) and len(keys) == min(beam, len(keys))


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_larger_beams_are_not_worse_than_beam_one(kind):
    for seed in range(12):
        head = make_head(kind, ("lstm", "stateless")[seed % 2], seed=seed, blank_bias=0.5)
        lens = torch.tensor([10, 6])
        enc = random_enc(2, 10, seed + 20)
        one, _ = modified_beam_search(head, enc, lens, beam=1)
        for beam in (2, 4, 8):
            wide, _ = modified_beam_search(head, enc, lens, beam=beam)
            for a, b in zip(one, wide):
                assert b.score >= a.score - 1e-9, (seed, beam, a, b)


@pytest.mark.parametrize(("kind", "predictor"), KINDS_PREDICTORS)
def test_beam_streaming_equals_whole(kind, predictor):
    head = make_head(kind, predictor, seed=6, blank_bias=0.5)
    lens = [11, 4, 0, 8]
    enc = random_enc(4, 11, 5)
    whole, wstate = modified_beam_search(head, enc, torch.tensor(lens), beam=3, max_symbols=2)
    rng = random.Random(1)
    all_splits = [fixed_splits(lens, s) for s in (1, 3, 7)] + [random_splits(lens, rng) for _ in range(3)]
    for splits in all_splits:
        hyps, state = decode_chunked(modified_beam_search, head, enc, lens, splits, beam=3, max_symbols=2)
        assert_same_hyps(hyps, whole, tol=1e-12)
        assert state.history == wstate.history and torch.equal(state.pointer, wstate.pointer)
        torch.testing.assert_close(state.scores, wstate.scores, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_beam_batch_independence(kind):
    head = make_head(kind, "stateless", seed=8, blank_bias=0.5)
    lens = torch.tensor([7, 10, 2])
    enc = random_enc(3, 10, 3)
    batch, _ = modified_beam_search(head, enc, lens, beam=4)
    for b in range(3):
        alone, _ = modified_beam_search(head, enc[b: b + 1, : lens[b]], lens[b: b + 1], beam=4)
        assert_same_hyps(alone, [batch[b]])


# ---------------------------------------------------------------------------------------------
# n-gram LM shallow fusion


def random_lm(vocab, order, seed):
    """A Kneser-Ney LM on random sequences over ids 1..vocab-1 (the blank is 0)."""
    rng = random.Random(seed)
    words = list(range(1, vocab))
    seqs = [[rng.choice(words[: 1 + k % len(words)]) for _ in range(rng.randint(1, 6))] for k in range(40)]
    return NgramLM.train(seqs, order, vocab)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ctc_prefix_beam_search_with_lm_is_exact_with_a_large_beam(order):
    """With a beam too large to prune, the result maximizes CTC log-prob + weight * LM log-prob
    (with </s>) + bonus * length over every label sequence (brute force)."""
    g = torch.Generator().manual_seed(order)
    for trial in range(4):
        B, T, V = 2, 5, 3
        lm = random_lm(V, order, seed=trial)
        lp = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 1.5).log_softmax(-1)
        lens = torch.tensor([5, 2 + trial])
        weight, bonus = 0.7, (-0.5, 0.0, 0.8, 2.0)[trial]
        hyps = ctc_prefix_beam_search(lp, lens, beam=64, lm=lm, lm_weight=weight, token_bonus=bonus)
        for b in range(B):
            totals = defaultdict(lambda: -math.inf)
            for path in itertools.product(range(V), repeat=int(lens[b])):
                labels, prev = [], None
                for s in path:
                    if s != 0 and s != prev:
                        labels.append(s)
                    prev = s
                key = tuple(labels)
                totals[key] = lae(totals[key], sum(lp[b, t, s].item() for t, s in enumerate(path)))
            fused = {k: v + weight * lm.score(list(k)) + bonus * len(k) for k, v in totals.items()}
            best = max(fused, key=fused.get)
            assert hyps[b].tokens == list(best), (order, trial, b)
            assert math.isclose(hyps[b].score, fused[best], abs_tol=1e-9)


def test_ctc_prefix_beam_search_lm_weight_zero_changes_nothing():
    g = torch.Generator().manual_seed(3)
    lp = (torch.randn(3, 12, 6, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    lens = torch.tensor([12, 7, 0])
    lm = random_lm(6, 3, seed=1)
    plain = ctc_prefix_beam_search(lp, lens, beam=4)
    zero = ctc_prefix_beam_search(lp, lens, beam=4, lm=lm, lm_weight=0.0)
    assert [(h.tokens, h.frames) for h in plain] == [(h.tokens, h.frames) for h in zero]


@pytest.mark.parametrize(("kind", "predictor"), KINDS_PREDICTORS)
def test_beam_with_lm_matches_per_utterance_reference(kind, predictor):
    for seed, (beam, order, weight, bonus) in enumerate([(2, 2, 0.5, 0.0), (3, 3, 1.5, 0.5), (4, 1, 0.8, -0.3)]):
        head = make_head(kind, predictor, vocab=5, seed=seed, blank_bias=0.3)
        lm = random_lm(5, order, seed)
        lens = torch.tensor([9, 0, 4, 7])
        enc = random_enc(4, 9, seed + 40)
        hyps, _ = modified_beam_search(head, enc, lens, beam=beam, max_symbols=2, lm=lm, lm_weight=weight, token_bonus=bonus)
        want = [ref_beam(head, enc[b, : lens[b]], beam, 2, lm=lm, lm_weight=weight, bonus=bonus) for b in range(4)]
        assert_same_hyps(hyps, want)
        plain, _ = modified_beam_search(head, enc, lens, beam=beam, max_symbols=2)
        if weight > 1:  # a strong LM changes some result (else this test could not fail)
            assert [h.tokens for h in plain] != [h.tokens for h in hyps]


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_beam_with_lm_streaming_equals_whole(kind):
    """The LM context of every slot is carried across chunks."""
    head = make_head(kind, "lstm", seed=7, blank_bias=0.5)
    lm = random_lm(head.vocab_size, 3, seed=2)
    lens = [11, 4, 0, 8]
    enc = random_enc(4, 11, 6)
    kw = {"beam": 3, "max_symbols": 2, "lm": lm, "lm_weight": 1.0, "token_bonus": 0.2}
    whole, _ = modified_beam_search(head, enc, torch.tensor(lens), **kw)
    for splits in [fixed_splits(lens, s) for s in (1, 4)] + [random_splits(lens, random.Random(3))]:
        hyps, _ = decode_chunked(modified_beam_search, head, enc, lens, splits, **kw)
        assert_same_hyps(hyps, whole, tol=1e-12)
