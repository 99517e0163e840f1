"""Greedy decoding of RNN-T and TDT transducers: batched label looping, streaming, token frames.

``greedy_search`` implements label looping (Bataev et al. 2024, "Label-Looping: Highly Efficient
Decoding for Transducers", as in NeMo): instead of stepping all utterances frame by frame, every
utterance keeps its own frame pointer ``t[b]`` and the batch loops over *labels*:

1. joint at ``(t[b], current prediction output of b)`` for every active utterance at once;
2. utterances whose best token is blank advance their pointer (RNN-T: by 1; TDT: by the argmax
   duration, 1 when that duration is 0) and are evaluated again, with no prediction-network call,
   until each active utterance has found a label or run out of frames;
3. every utterance that found a label emits it (its timestamp is ``t[b]``), and all of them get
   one batched prediction-network step (``merge_state`` keeps the state of the others); TDT
   utterances also advance by the label's argmax duration;
4. an utterance that emitted ``max_symbols`` labels at the same frame is moved one frame on.

There is no Python loop over the batch inside the decoding loop. Each pass of step 2 moves at
least one utterance on by a frame and each pass of step 3 emits at least one label: the
prediction network runs (max labels of an utterance + 1) times, the joint at most (frames of
all utterances + that) times; a TDT blank skipping d frames saves d - 1 joint evaluations.

A hybrid TDT+CTC model can guard the TDT's blank jumps with its CTC head (``jump_ok``): a blank
of duration d at frame t then lands on the first of the frames t+1 .. t+d-1 that the CTC head
does not call blank, if any, instead of skipping it. On the mini corpus's 15 + 30-minute hybrid
TDTs (sigma 0.10) the plain search lost 2 points of test-seen WER to blank jumps over frames
where a piece began; guarded at 0.9, they trailed their RNN-T twins by 0.2 points, with 7% more
joint calls (docs/mini_results.md). Labels' jumps are not guarded (they cost no accuracy there).

A batch of one (a streaming server's per-stream call) takes a scalar path with the same
decisions, scores and state: the frame pointer and symbol count are Python ints, so a blank
costs one joint call and an argmax instead of a dozen masking ops around it. On the CPU a
larger batch goes through that path one utterance after the other (``loop="auto"``), which
there is faster than label looping; ``loop="label"`` asks for label looping anywhere.

Streaming: :class:`DecoderState` holds everything needed to continue on the next chunk of
encoder frames of the same batch. Decoding an encoder output chunk by chunk, passing the
returned state back in, gives the tokens and frames of one call on the whole output, whatever
the chunk sizes (per utterance, possibly 0 frames), and the same scores up to rounding (the
encoder projection of a chunk is a matrix product of another shape, which may round the last
bit differently; the scores add the same terms in the same order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .ctc import Hypothesis

__all__ = ["DecoderState", "greedy_search"]

NUMPY_ARGMAX = True  # one-stream search: argmax through numpy for CPU float32/64 logits (else torch)


@dataclass
class DecoderState:
    """What :func:`greedy_search` needs to continue decoding a batch on its next chunk.

    Attributes:
        pred_state: the prediction network's state after the last emitted token of every
            utterance (``head.predictor``'s layout, batch size B).
        pred_out: (B, J) the *projected* prediction output (``joint.project_pred``) for that
            token: the joint's prediction input at the next frame.
        scores: (B,) float64, the running score of every hypothesis (kept as a tensor so that
            chunked and whole decoding add the same numbers in the same order).
        hyps: the B hypotheses decoded so far (tokens, global frame indices, score).
        frames_done: (B,) frames of every utterance consumed by earlier chunks; the frame ``i``
            of the next chunk of utterance ``b`` is the global frame ``frames_done[b] + i``.
        skip: (B,) frames every utterance still has to skip at the start of the next chunk
            (TDT: a duration that reached past the end of the chunk; always 0 for RNN-T).
        skip_guarded: (B,) bool, whether that skip is a blank's jump, which the next chunk's
            ``jump_ok`` may cut short (a label's jump is never cut); None: all False.
    """

    pred_state: list[Tensor]
    pred_out: Tensor
    scores: Tensor
    hyps: list[Hypothesis]
    frames_done: Tensor
    skip: Tensor
    skip_guarded: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.hyps)


def param_dtype(head) -> torch.dtype:
    return next(head.parameters()).dtype


def init_pred_state(head, batch_size: int, device: torch.device) -> list[Tensor]:
    """The prediction network's state before any token, in the head's parameter dtype."""
    dtype = param_dtype(head)
    return [s.to(dtype) if s.is_floating_point() else s for s in head.predictor.init_state(batch_size, device)]


def initial_pred(head, batch_size: int, device: torch.device) -> tuple[list[Tensor], Tensor]:
    """Prediction state and projected output after the start-of-sequence (blank) token."""
    pred = head.predictor
    state = init_pred_state(head, batch_size, device)
    blank = torch.full((batch_size,), head.blank, dtype=torch.long, device=device)
    out, state = pred.step(blank, state)
    return state, head.joint.project_pred(out)


def _initial_state(head, batch_size: int, device: torch.device) -> DecoderState:
    state, pred_out = initial_pred(head, batch_size, device)
    zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
    return DecoderState(
        pred_state=state,
        pred_out=pred_out,
        scores=torch.zeros(batch_size, dtype=torch.float64, device=device),
        hyps=[Hypothesis() for _ in range(batch_size)],
        frames_done=zeros,
        skip=zeros.clone(),
    )


def check_lengths(enc: Tensor, enc_lens: Tensor) -> Tensor:
    """enc_lens as int64 on enc's device; an error when it does not fit enc (B, T, D)."""
    if enc.dim() != 3:
        raise ValueError(f"enc must be (B, T, D), got shape {tuple(enc.shape)}")
    B, T = enc.shape[:2]
    lens = torch.as_tensor(enc_lens).to(device=enc.device, dtype=torch.long)
    if lens.shape != (B,):
        raise ValueError(f"enc_lens must have shape ({B},), got {tuple(lens.shape)}")
    if B and (int(lens.min()) < 0 or int(lens.max()) > T):
        raise ValueError(f"enc_lens must lie in [0, {T}], got {lens.tolist()}")
    return lens


def begin_chunk(enc: Tensor, enc_lens: Tensor, state, new_state):
    """Checked lengths and the state to continue from: ``new_state(B)`` for a new batch, else
    ``state`` after checking it belongs to a batch of the same size."""
    lens = check_lengths(enc, enc_lens)
    B = enc.shape[0]
    if state is None:
        return lens, new_state(B)
    if state.batch_size != B:
        raise ValueError(f"state is for a batch of {state.batch_size}, enc has {B}")
    return lens, state


NO_WALL = 1 << 40  # "no frame stops the jump in this chunk"


def _walls(jump_ok: Tensor) -> Tensor:
    """(B, T) long: f where frame f stops a guarded jump (``jump_ok`` False), else NO_WALL."""
    f = torch.arange(jump_ok.shape[1], device=jump_ok.device).expand_as(jump_ok)
    return torch.where(jump_ok, torch.full_like(f, NO_WALL), f)


def jump_stops(jump_ok: Tensor) -> Tensor:
    """(B, T) long: for every frame t, the first frame f > t of the chunk that a guarded blank
    jump may not pass over (``jump_ok[b, f]`` False), or NO_WALL. A guarded blank of duration
    d at t lands on ``min(t + d, stops[t])``; past the chunk's end the check goes on in the
    next chunk (:func:`guard_skip`)."""
    suffix = _walls(jump_ok).flip(1).cummin(1).values.flip(1)  # the first wall at or after t
    return torch.cat([suffix[:, 1:], torch.full_like(suffix[:, :1], NO_WALL)], 1)


def guard_skip(skip: Tensor, guarded: Tensor | None, jump_ok: Tensor | None) -> Tensor:
    """The carried ``skip`` cut short where a blank's jump reaching into this chunk meets a frame
    that ``jump_ok`` does not let it pass (it lands there)."""
    if jump_ok is None or guarded is None or jump_ok.shape[1] == 0:
        return skip
    return torch.where(guarded, torch.minimum(skip, _walls(jump_ok).min(1).values), skip)


def check_jump_ok(head, enc: Tensor, jump_ok: Tensor | None) -> Tensor | None:
    if jump_ok is None:
        return None
    if head.durations is None:
        raise ValueError("jump_ok guards TDT blank jumps; this head is an RNN-T (no durations)")
    if jump_ok.shape != enc.shape[:2] or jump_ok.dtype != torch.bool:
        raise ValueError(f"jump_ok must be a bool tensor of shape {tuple(enc.shape[:2])} (B, T), "
                         f"got {jump_ok.dtype} {tuple(jump_ok.shape)}")
    return jump_ok.to(enc.device)


def append_emissions(
    hyps: list[Hypothesis], scores: Tensor, steps: list[tuple[Tensor, Tensor, Tensor]]
) -> list[Hypothesis]:
    """New hypotheses: ``hyps`` extended by the emissions recorded in ``steps`` (one
    (tokens (B,), frames (B,), emitted (B,) bool) per loop iteration), scores from ``scores``."""
    new_scores = scores.tolist()
    if not steps:
        return [Hypothesis(list(h.tokens), list(h.frames), s) for h, s in zip(hyps, new_scores)]
    toks = torch.stack([s[0] for s in steps], 1).cpu().numpy()
    frames = torch.stack([s[1] for s in steps], 1).cpu().numpy()
    mask = torch.stack([s[2] for s in steps], 1).cpu().numpy()
    out = []
    for b, h in enumerate(hyps):
        m = mask[b]
        out.append(Hypothesis(h.tokens + toks[b][m].tolist(), h.frames + frames[b][m].tolist(), new_scores[b]))
    return out


def greedy_search(
    head,
    enc: Tensor,
    enc_lens: Tensor,
    max_symbols: int = 10,
    state: DecoderState | None = None,
    loop: str = "auto",
    jump_ok: Tensor | None = None,
) -> tuple[list[Hypothesis], DecoderState]:
    """Batched greedy decoding of an RNN-T (``head.durations is None``) or TDT transducer.

    Args:
        head: a ``TransducerHead`` (or anything with its decoding interface, see
            ``asr.heads.transducer``), in eval mode (this function does not change its mode).
        enc: (B, T, D_enc) raw encoder output; ``head.joint.project_enc`` is applied here.
        enc_lens: (B,) valid frames of every utterance in ``enc`` (0 allowed).
        max_symbols: at most this many labels per frame per utterance (>= 1); after the last
            one the utterance moves one frame on without a blank.
        state: None for a new batch; the state returned by the previous call to continue the
            same batch on its next chunk of encoder frames (streaming).
        loop: how a batch of several utterances is searched: ``"label"``, label looping over
            the whole batch; ``"rows"``, one utterance after the other through the one-stream
            path; ``"auto"`` (default): rows on the CPU, label looping elsewhere. Both give the
            same hypotheses and state (up to the rounding of a matrix product of another
            shape). On one CPU thread the batch's masking ops cost more than its joint rows:
            test-seen of the mini corpus searched by rows took 0.31 s (RNN-T) and 0.18 s (TDT)
            against 0.47 and 0.32 s by label looping, batches of 120 s (docs/mini_results.md). A GPU, where
            every op is a kernel launch, wants the batch.
        jump_ok: TDT only, optional (B, T) bool over this chunk's frames: the frames a blank's
            jump may pass over (a hybrid's CTC head calling them blank, see
            ``asr.models.ASRModel.jump_guard``). A blank of duration d at frame t lands on the
            first frame of t+1 .. t+d-1 that is not ok, else on t + d; the check carries into
            the next chunk with the state. None: every jump is taken as predicted.

    Returns:
        (hyps, state): ``hyps[b]`` is the hypothesis of utterance ``b`` from its first frame up
        to the end of this chunk: ``tokens``, ``frames`` (the global encoder frame at which
        each token was emitted) and ``score``, the sum of the log-probabilities of the chosen
        symbols (token log-softmax over the V token logits, plus, for TDT, the log-softmax over
        the duration logits of the chosen duration; a forced advance after ``max_symbols`` adds
        nothing). ``state`` continues the batch on its next chunk.

    Decisions are argmax (``torch.max``). For TDT a blank with argmax duration 0
    advances one frame; a label with duration 0 stays on its frame, up to ``max_symbols``.
    """
    if max_symbols < 1:
        raise ValueError(f"max_symbols must be >= 1, got {max_symbols}")
    if loop not in ("auto", "label", "rows"):
        raise ValueError(f"loop must be 'auto', 'label' or 'rows', got {loop!r}")
    rows_path = loop == "rows" or (loop == "auto" and enc.device.type == "cpu")
    with torch.inference_mode():
        # one stream (what a streaming server decodes per connection) takes a scalar path, which
        # builds its own first state (through the prediction memo), and so may every row of a batch
        B, T = enc.shape[:2]
        scalar = B == 1 or rows_path
        lens, state = begin_chunk(enc, enc_lens, state, lambda B: None if scalar else _initial_state(head, B, enc.device))
        jump_ok = check_jump_ok(head, enc, jump_ok)
        if B == 1:
            return _greedy_one(head, enc, int(lens[0]), state, max_symbols, jump_ok)
        if scalar:
            return _greedy_rows(head, enc, lens, state, max_symbols, jump_ok)
        device = enc.device
        pred = head.predictor
        blank, V = head.blank, head.vocab_size
        tdt = head.durations is not None
        durs = torch.tensor(head.durations, dtype=torch.long, device=device) if tdt else None

        enc_p = head.joint.project_enc(enc)  # (B, T, J)
        rows = torch.arange(B, device=device)
        pstate, pred_p = state.pred_state, state.pred_out
        scores = state.scores.clone()
        if jump_ok is not None:  # a row's padding is no wall: its next frames come with the next chunk
            jump_ok = jump_ok | (torch.arange(T, device=device)[None, :] >= lens[:, None])
        t = guard_skip(state.skip, state.skip_guarded, jump_ok)  # local frame pointer of every utterance
        stops = jump_stops(jump_ok) if jump_ok is not None else None
        # whether t is where a blank's jump landed (carried while the jump still reaches past the chunk)
        guarded = state.skip_guarded.clone() if state.skip_guarded is not None else torch.zeros(B, dtype=torch.bool, device=device)
        count = torch.zeros(B, dtype=torch.long, device=device)  # labels emitted at frame t
        one = torch.ones((), dtype=torch.long, device=device)
        zero_l = torch.zeros((), dtype=torch.long, device=device)
        zero_f = torch.zeros((), dtype=torch.float64, device=device)
        blank_t = torch.full((B,), blank, dtype=torch.long, device=device)
        steps: list[tuple[Tensor, Tensor, Tensor]] = []
        last = max(T - 1, 0)

        def best(tt: Tensor, pp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """(token, its log-prob (+ duration log-prob), duration) of the argmax at frames tt."""
            logits = head.joint(enc_p[rows, tt.clamp(max=last)], pp)
            lp, tok = logits[:, :V].log_softmax(-1).max(-1)
            if not tdt:
                return tok, lp.double(), one
            lpd, di = logits[:, V:].log_softmax(-1).max(-1)
            return tok, lp.double() + lpd.double(), durs[di]

        active = t < lens
        while bool(active.any()):  # one iteration per label (per utterance)
            tok, lp, dur = best(t, pred_p)
            blank_m = active & (tok == blank)
            while bool(blank_m.any()):  # advance over blanks, no prediction-network call
                scores = scores + torch.where(blank_m, lp, zero_f)
                step_t = dur.clamp(min=1) if tdt else one
                if stops is not None:  # a guarded jump lands on the first frame it may not pass
                    step_t = torch.minimum(step_t, stops[rows, t.clamp(max=last)] - t)
                t = t + torch.where(blank_m, step_t, zero_l)
                guarded = torch.where(blank_m, True, guarded)
                count = torch.where(blank_m, zero_l, count)
                active = t < lens
                blank_m = blank_m & active
                tok2, lp2, dur2 = best(t, pred_p)
                tok = torch.where(blank_m, tok2, tok)
                lp = torch.where(blank_m, lp2, lp)
                if tdt:
                    dur = torch.where(blank_m, dur2, dur)
                blank_m = blank_m & (tok == blank)
            emit = active  # every active utterance now stands on a label (possibly none left)
            scores = scores + torch.where(emit, lp, zero_f)
            steps.append((tok, state.frames_done + t, emit))
            out, new_state = pred.step(torch.where(emit, tok, blank_t), pstate)
            pstate = pred.merge_state(pstate, new_state, emit)
            pred_p = torch.where(emit[:, None], head.joint.project_pred(out), pred_p)
            if tdt:
                t = t + torch.where(emit, dur, zero_l)
                guarded = guarded & ~emit
                count = torch.where(emit, torch.where(dur == 0, count + 1, zero_l), count)
            else:
                count = count + emit.long()
            force = count >= max_symbols
            t = t + force.long()
            count = torch.where(force, zero_l, count)
            active = t < lens

        hyps = append_emissions(state.hyps, scores, steps)
        new = DecoderState(
            pred_state=pstate,
            pred_out=pred_p,
            scores=scores,
            hyps=hyps,
            frames_done=state.frames_done + lens,
            skip=t - lens,
            skip_guarded=guarded & (t > lens),
        )
    return hyps, new


def _greedy_rows(head, enc: Tensor, lens: Tensor, state: DecoderState | None, max_symbols: int,
                 jump_ok: Tensor | None = None) -> tuple[list[Hypothesis], DecoderState]:
    """:func:`greedy_search` of a batch as one :func:`_greedy_one` per utterance: the carried
    state is cut into rows and put back together, so chunks may go either way."""
    pred = head.predictor
    parts = []
    for b, n in enumerate(lens.tolist()):
        row = None
        if state is not None:
            i = torch.tensor([b], device=enc.device)
            row = DecoderState(pred.select_state(state.pred_state, i), state.pred_out[b : b + 1], state.scores[b : b + 1],
                               [state.hyps[b]], state.frames_done[b : b + 1], state.skip[b : b + 1],
                               None if state.skip_guarded is None else state.skip_guarded[b : b + 1])
        ok = None if jump_ok is None else jump_ok[b : b + 1, :n]
        parts.append(_greedy_one(head, enc[b : b + 1, :n], n, row, max_symbols, ok)[1])
    hyps = [p.hyps[0] for p in parts]
    return hyps, DecoderState(
        pred_state=pred.cat_state([p.pred_state for p in parts]),
        pred_out=torch.cat([p.pred_out for p in parts]),
        scores=torch.cat([p.scores for p in parts]),
        hyps=hyps,
        frames_done=torch.cat([p.frames_done for p in parts]),
        skip=torch.cat([p.skip for p in parts]),
        skip_guarded=torch.cat([p.skip_guarded for p in parts]),
    )


def _greedy_one(head, enc: Tensor, T: int, state: DecoderState | None, max_symbols: int,
                jump_ok: Tensor | None = None) -> tuple[list[Hypothesis], DecoderState]:
    """:func:`greedy_search` for a batch of one: the same decisions, scores and state, with the
    frame pointer and the symbol count as Python ints. The batched loop's masks (``where``,
    ``any``) cost more than the joint itself at B=1; here a step is one joint call and an argmax
    per output group (tokens; durations), read on the host. Decisions are the argmax of the
    logits (that of their log-softmax); the chosen symbols' log-probs are computed once at the
    end, over all the steps' logits at once, and added in step order as the batched loop adds
    them. A label's prediction step goes through ``head.stepper()`` when the head has one
    (memoized), and so does the first state of a new stream (``state`` None)."""
    pred, jnt = head.predictor, head.joint
    blank, V = head.blank, head.vocab_size
    durs = head.durations
    device = enc.device
    step = head.stepper() if hasattr(head, "stepper") else None
    joint = jnt.forward_fn()
    enc_p = jnt.project_enc(enc)[0]  # (T', J), T' >= T: at B=1 the batched loop's product, bit for bit
    if state is None:  # what _initial_state(head, 1) holds, the prediction through the memo
        if step is not None:
            pred_p, pstate = step(blank, init_pred_state(head, 1, device))
        else:
            pstate, pred_p = initial_pred(head, 1, device)
        base, t, score, prev = 0, 0, 0.0, Hypothesis()
    else:
        pstate, pred_p = state.pred_state, state.pred_out
        base, score, prev = int(state.frames_done[0]), float(state.scores[0]), state.hyps[0]
        t = int(guard_skip(state.skip, state.skip_guarded, None if jump_ok is None else jump_ok[:, :T])[0])
    stops = jump_stops(jump_ok[:, :T])[0].tolist() if jump_ok is not None else None
    # whether t is where a blank's jump landed (carried while the jump still reaches past the chunk)
    guarded = state is not None and state.skip_guarded is not None and bool(state.skip_guarded[0])
    count = 0
    toks: list[int] = []
    frames: list[int] = []
    rows: list[Tensor] = []  # every step's logits (1, V [+ D])
    picks: list[tuple[int, int]] = []  # every step's (token, duration index)
    # the argmax on the host through numpy where the logits live there: a third of torch's
    # per-call cost at this size (both return the first of equal maxima)
    on_host = NUMPY_ARGMAX and enc_p.device.type == "cpu" and enc_p.dtype in (torch.float32, torch.float64)
    while t < T:
        logits = joint(enc_p[t], pred_p)
        rows.append(logits)
        row = logits.numpy()[0] if on_host else logits[0]
        tok = int(row[:V].argmax())
        if durs is not None:
            di = int(row[V:].argmax())
            d = durs[di]
            picks.append((tok, di))
        else:
            picks.append((tok, 0))
        if tok == blank:
            if durs is None:
                t += 1
            else:
                t = min(t + max(d, 1), stops[t]) if stops is not None else t + max(d, 1)
                guarded = True
            count = 0
            continue
        toks.append(tok)
        frames.append(base + t)
        if step is not None:
            pred_p, pstate = step(tok, pstate)
        else:
            out, pstate = pred.step(torch.tensor([tok], device=device), pstate)
            pred_p = jnt.project_pred(out)
        if durs is not None:
            t += d
            guarded = False
            count = count + 1 if d == 0 else 0
        else:
            count += 1
        if count >= max_symbols:
            t, count = t + 1, 0
    if rows:
        logits = torch.cat(rows)
        idx = torch.tensor(picks, device=device)
        lp = logits[:, :V].log_softmax(-1).gather(1, idx[:, :1])[:, 0].double()
        if durs is not None:
            lp = lp + logits[:, V:].log_softmax(-1).gather(1, idx[:, 1:])[:, 0].double()
        for v in lp.tolist():
            score += v
    hyps = [Hypothesis(prev.tokens + toks, prev.frames + frames, score)]
    new = DecoderState(
        pred_state=pstate,
        pred_out=pred_p,
        scores=torch.tensor([score], dtype=torch.float64, device=device),
        hyps=hyps,
        frames_done=torch.tensor([base + T], dtype=torch.long, device=device),
        skip=torch.tensor([t - T], dtype=torch.long, device=device),
        skip_guarded=torch.tensor([guarded and t > T], device=device),
    )
    return hyps, new
