"""Chunk-wise (real streaming) recognition: encoder caches and decoder state carried across chunks.

Two entry points share one chunk loop:

- :func:`chunkwise_decode` decodes a padded batch window by window exactly as a live stream
  would (``asr decode --chunkwise``): the encoder runs ``forward_chunk`` with its caches, and
  the decoder (CTC greedy, transducer greedy or modified beam search) continues from its state
  on every chunk of encoder frames. Because the encoders stream exactly and the decoders carry
  their state, the result equals whole-utterance decoding under the same context; the tests
  check that.
- :class:`StreamingRecognizer` is the same loop for live input: feed feature frames as they
  arrive (``accept_features``), read the partial hypothesis at any time, and ``finish()`` at the
  end of the stream (the last window is zero-padded). Timestamps are global encoder frames.

CTC prefix beam search needs every frame's distribution before it can commit, so the
streaming CTC path is greedy (its state: the previous frame's label, for merging repeats
across chunk boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .ctc import Hypothesis

if TYPE_CHECKING:
    from .lm import LMFusion

__all__ = ["CTCStreamState", "ctc_greedy_chunk", "chunkwise_decode", "StreamingRecognizer"]


@dataclass
class CTCStreamState:
    """Greedy CTC across chunks: the label of each stream's last frame, frames consumed, hyps."""

    prev: Tensor  # (B,) label (blank included) of the last decoded frame
    frames_done: Tensor  # (B,)
    hyps: list[Hypothesis] = field(default_factory=list)


def ctc_greedy_chunk(log_probs: Tensor, lens: Tensor, state: CTCStreamState | None = None, blank: int = 0) -> tuple[list[Hypothesis], CTCStreamState]:
    """Greedy CTC on one chunk (B, T, V) with ``lens`` (B,) valid frames, continuing ``state``.
    Chunk by chunk equals :func:`asr.decoding.ctc.ctc_greedy` on the whole sequence."""
    B, T, _ = log_probs.shape
    device = log_probs.device
    if state is None:
        state = CTCStreamState(torch.full((B,), blank, dtype=torch.long, device=device),
                               torch.zeros(B, dtype=torch.long, device=device), [Hypothesis() for _ in range(B)])
    best, idx = log_probs.max(dim=-1)
    lens = lens.to(device)
    valid = torch.arange(T, device=device)[None, :] < lens[:, None]
    prev = torch.cat([state.prev[:, None], idx[:, :-1]], dim=1)
    emit = (idx != blank) & (idx != prev) & valid
    scores = (best * valid).sum(dim=1)
    for b in range(B):
        frames = emit[b].nonzero().flatten()
        h = state.hyps[b]
        h.tokens.extend(idx[b, frames].tolist())
        h.frames.extend((frames + state.frames_done[b]).tolist())
        h.score += float(scores[b])
    last = (lens - 1).clamp(min=0)
    new_prev = torch.where(lens > 0, idx.gather(1, last[:, None])[:, 0] if T else state.prev, state.prev)
    state.prev = new_prev
    state.frames_done = state.frames_done + lens
    # snapshots, as the transducer searches return: a partial result handed out must not change
    return [Hypothesis(list(h.tokens), list(h.frames), h.score) for h in state.hyps], state


class _ChunkDecoder:
    """Dispatch to the decoder of a model's head, carrying its state between chunks."""

    def __init__(self, model, method: str = "greedy", beam: int = 4, use_ctc: bool = False, fusion: "LMFusion | None" = None,
                 ctc_guard: float | None = None):
        model._check_decoding(method, beam, use_ctc, fusion, ctc_guard)
        self.model, self.method, self.beam, self.fusion, self.ctc_guard = model, method, beam, fusion, ctc_guard
        self.use_ctc = use_ctc or model.transducer is None
        if self.use_ctc and method == "beam":
            raise ValueError("streaming CTC decoding is greedy (prefix beam search needs the whole utterance)")
        self.state = None
        self.hyps: list[Hypothesis] | None = None

    def __call__(self, enc: Tensor, lens: Tensor) -> list[Hypothesis]:
        if self.use_ctc:
            self.hyps, self.state = ctc_greedy_chunk(self.model.ctc(enc), lens, self.state)
        elif self.method == "greedy":
            from .transducer import greedy_search

            jump_ok = self.model.jump_guard(enc, self.ctc_guard) if self.ctc_guard is not None else None
            self.hyps, self.state = greedy_search(self.model.transducer, enc, lens, state=self.state, jump_ok=jump_ok)
        else:
            from .beam import modified_beam_search

            lm = self.fusion.kwargs() if self.fusion is not None else {}
            self.hyps, self.state = modified_beam_search(self.model.transducer, enc, lens, beam=self.beam, state=self.state, **lm)
        return self.hyps


@torch.no_grad()
def chunkwise_decode(model, x: Tensor, x_lens: Tensor, method: str = "greedy", beam: int = 4, use_ctc: bool = False,
                     fusion: "LMFusion | None" = None, ctc_guard: float | None = None) -> list[Hypothesis]:
    """Decode a padded batch of features (B, T, F) window by window through the encoder's
    ``forward_chunk`` and the decoder's state (the encoder's current context/chunk size).
    ``fusion``: an n-gram LM for the transducer beam search (:mod:`asr.decoding.lm`);
    ``ctc_guard``: a hybrid TDT's blank jumps checked by its CTC head (``ASRModel.jump_guard``)."""
    from ..encoders.base import stream_chunks

    decoder = _ChunkDecoder(model, method, beam, use_ctc, fusion, ctc_guard)
    hyps = [Hypothesis() for _ in range(x.shape[0])]
    for y, yl in stream_chunks(model.encoder, model.normalize(x), x_lens, "chunkwise_decode"):
        hyps = decoder(y, yl)
    return hyps


class StreamingRecognizer:
    """One live stream: feature frames in, partial hypotheses out.

    >>> rec = StreamingRecognizer(model)              # model in eval mode
    >>> for feats in feature_chunks:                   # (n, F) raw fbank frames, any n
    ...     hyp = rec.accept_features(feats)           # partial result so far
    >>> hyp = rec.finish()                             # flushes the last partial window
    >>> model.hyp_to_transcript(hyp).text

    Latency is the encoder's: ``model.encoder.streaming_params()["window"]`` feature frames
    (set the Conformer's look-ahead with ``model.encoder.set_context(left, right)`` first).
    """

    def __init__(self, model, method: str = "greedy", beam: int = 4, use_ctc: bool = False, fusion: "LMFusion | None" = None,
                 ctc_guard: float | None = None):
        self.model = model
        self.method, self.beam, self.use_ctc, self.fusion, self.ctc_guard = method, beam, use_ctc, fusion, ctc_guard
        self.reset()

    def reset(self) -> None:
        self.params = p = self.model.encoder.streaming_params()
        self.window, self.shift = p["window"], p["shift"]
        self.enc_state = self.model.encoder.init_state(1)
        self.decoder = _ChunkDecoder(self.model, self.method, self.beam, self.use_ctc, self.fusion, self.ctc_guard)
        mean = self.model.feat_mean
        self.buffer = torch.zeros(0, self.model.features.num_mel_bins, device=mean.device, dtype=mean.dtype)
        self.hyp = Hypothesis()
        self.finished = False

    def _check_context(self) -> None:
        if self.model.encoder.streaming_params() != self.params:
            raise ValueError("the encoder's streaming settings changed since this stream started (set_context?): "
                             "call reset() to start a new stream with them")

    @property
    def frames_pending(self) -> int:
        return int(self.buffer.shape[0])

    @torch.no_grad()
    def _run(self, window: Tensor, valid: int) -> None:
        y, yl, self.enc_state = self.model.encoder.forward_chunk(window[None], torch.tensor([valid], device=window.device), self.enc_state)
        self.hyp = self.decoder(y, yl)[0]

    @torch.no_grad()
    def accept_features(self, feats: Tensor) -> Hypothesis:
        """Append raw feature frames (n, F); run every complete window; the partial result."""
        if self.finished:
            raise ValueError("this stream has finished; call reset() to start a new one")
        self._check_context()
        feats = torch.as_tensor(feats, device=self.buffer.device)
        if feats.dim() != 2 or feats.shape[1] != self.buffer.shape[1] or not feats.is_floating_point():
            raise ValueError(f"expected float features of shape (n, {self.buffer.shape[1]}), got {tuple(feats.shape)} {feats.dtype}")
        feats = feats.float()
        if not torch.isfinite(feats).all():
            raise ValueError(f"features hold NaN or inf (first at frame {int((~torch.isfinite(feats)).any(1).nonzero()[0])} of this piece)")
        self.buffer = torch.cat([self.buffer, self.model.normalize(feats)])
        while self.buffer.shape[0] >= self.window:
            self._run(self.buffer[: self.window], self.window)
            self.buffer = self.buffer[self.shift :]
        return self.hyp

    @torch.no_grad()
    def finish(self) -> Hypothesis:
        """End of stream: the remaining frames are decoded in zero-padded windows."""
        if not self.finished:
            self._check_context()
            # as in asr.encoders.stream: every window that starts before the end runs, padded
            while self.buffer.shape[0] > 0:
                valid = min(self.buffer.shape[0], self.window)
                pad = self.window - valid
                win = torch.nn.functional.pad(self.buffer[: self.window], (0, 0, 0, pad))
                self._run(win, valid)
                self.buffer = self.buffer[self.shift :]
            self.finished = True
        return self.hyp
