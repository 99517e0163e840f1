"""``Recognizer`` and ``Stream``: live recognition of many streams with batched ONNX calls.

>>> rec = Recognizer("exp/model/onnx", decoding="greedy", num_threads=1)
>>> s = rec.create_stream()
>>> for piece in pieces:                       # float samples in [-1, 1], any size, any rate
...     s.accept_waveform(16000, piece)
...     rec.decode([s])                         # runs every window that is ready
...     print(s.result().text)                  # the current segment, partial
...     for seg in s.pop_segments():            # segments closed by an endpoint
...         print("final:", seg.text)
>>> s.input_finished()                          # the last frames, zero-padded windows
>>> rec.decode([s]); s.result().is_final
True

A stream turns samples into fbank frames as they arrive (kaldi-native-fbank, the training
features) and keeps the frames its encoder has not consumed. A stream is *ready* when it holds
a full window (``window`` frames), or, after ``input_finished()``, any frame at all.
``decode(streams)`` stacks one window of every ready stream into a single encoder call
(``x (N, window, F)``, ``x_lens``, the streams' states concatenated on their batch axes),
continues every stream's decoder on its new encoder frames (batched joiner/decoder calls), and
repeats until no stream is ready; each stream then drops ``shift`` frames. The last partial
window of a finished stream is zero-padded and passed with its valid length, exactly as
``asr.decoding.streaming.StreamingRecognizer.finish`` does, so the last word is decoded
without the caller appending silence.

Segments and endpoints (see :mod:`serve.endpoint`): after every window the endpoint rules
are checked on the current segment. When one fires, the segment is final: its result is
appended to ``stream.segments`` (and handed out once by ``pop_segments()``), and a new
segment starts. State reset policy: the *decoder* restarts from the start-of-sequence state
(an empty hypothesis, prediction network after blank, CTC's previous label blank, no TDT
skip); the *encoder* state and the unconsumed feature frames are kept, so the acoustic
context (attention and convolution caches, LSTM state) runs on uninterrupted and the next
segment decodes exactly what a decoder started on that encoder frame would. Timestamps stay
relative to the start of the stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .decoders import Hyp, check_decoding, make_decoder
from .endpoint import EndpointConfig
from .features import OnlineFeatures, StreamingResampler, check_length, check_sample_rate, check_samples
from .model import OnnxModel

__all__ = ["Recognizer", "Stream", "Result"]


@dataclass(frozen=True)
class Result:
    """The result of one segment of a stream.

    ``timestamps`` are seconds from the start of the stream (the encoder frame of each token
    times the frame duration, as ``ASRModel.hyp_to_transcript``), ``frames`` those frames;
    ``start``/``end`` the segment's span decoded so far; ``is_final``: the segment has ended
    (an endpoint, or the input finished and was decoded to the end); ``endpoint``: the rule
    that ended it (``'rule1'``/``'rule2'``/``'rule3'``), None otherwise."""

    text: str = ""
    tokens: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    segment: int = 0
    is_final: bool = False
    endpoint: str | None = None
    score: float = 0.0

    @property
    def is_endpoint(self) -> bool:
        return self.endpoint is not None


class Stream:
    """One audio stream of a :class:`Recognizer` (create it with ``recognizer.create_stream()``)."""

    def __init__(self, recognizer: "Recognizer"):
        self._rec = recognizer
        m = recognizer.model
        self._features = OnlineFeatures(m.features)
        self._resampler: StreamingResampler | None = None
        self._rate: int | None = None
        self._buf = np.zeros((0, m.feature_dim), np.float32)
        self._enc_state = m.init_encoder_state()
        self._dec = recognizer.decoder.new_state(0)
        self._frames_done = 0  # encoder frames decoded in this stream
        self._seg_start = 0  # encoder frame at which the current segment started
        self._segments: list[Result] = []
        self._unread = 0
        self._input_done = False
        self._final: Result | None = None
        self._last_endpoint = False
        self._enc_out: list[np.ndarray] | None = [] if recognizer.keep_encoder_out else None
        self.samples_received = 0  # at the model's rate
        self.windows_run = 0

    # ------------------------------------------------------------------ input
    def accept_waveform(self, sample_rate, samples) -> None:
        """Append samples (float, in [-1, 1], mono) at ``sample_rate`` Hz; a rate other than the
        model's is resampled (the rate must stay the same within a stream)."""
        if self._input_done:
            raise ValueError("input_finished() was called on this stream: it takes no more audio")
        rate = check_sample_rate(sample_rate)
        x = check_samples(samples)
        if self._rate is None:
            self._rate = rate
            if rate != self._features.sample_rate:
                self._resampler = StreamingResampler(rate, self._features.sample_rate)
        elif rate != self._rate:
            raise ValueError(f"sample rate changed within the stream: {self._rate} Hz before, {rate} Hz now")
        if self._resampler is not None:
            x = self._resampler.process(x)
        self._push(self._features.accept(x), len(x))

    def input_finished(self) -> None:
        """No more audio: the last feature frames are computed; ``decode`` then runs the
        remaining (zero-padded) windows and the result becomes final."""
        if self._input_done:
            return
        tail = self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)
        frames = self._features.accept(tail)
        self._push(np.concatenate([frames, self._features.finish()]), len(tail))
        self._input_done = True
        if len(self._buf) == 0:
            self._finalize()

    def _push(self, frames: np.ndarray, n_samples: int) -> None:
        self.samples_received += n_samples
        if len(frames):
            self._buf = np.concatenate([self._buf, frames]) if len(self._buf) else frames

    # ------------------------------------------------------------------ state
    @property
    def is_ready(self) -> bool:
        return self._rec.is_ready(self)

    @property
    def frames_pending(self) -> int:
        """Feature frames received and not yet moved past by the encoder."""
        return len(self._buf)

    @property
    def is_final(self) -> bool:
        """The input has finished and everything has been decoded."""
        return self._final is not None

    @property
    def is_endpoint(self) -> bool:
        """An endpoint ended a segment during the last window decoded for this stream."""
        return self._last_endpoint

    @property
    def seconds_received(self) -> float:
        return self.samples_received / self._features.sample_rate

    @property
    def seconds_decoded(self) -> float:
        """Seconds of audio the decoded frames cover: never more than was received (the last
        frame, padded at the input's end, may reach past it)."""
        return round(min(self._frames_done * self._rec.frame_seconds, self.seconds_received), 3)

    @property
    def segments(self) -> list[Result]:
        """Every finalized segment so far (endpoints, and the last one when the input ended
        with something decoded)."""
        return list(self._segments)

    def pop_segments(self) -> list[Result]:
        """The segments finalized since the last call."""
        new = self._segments[self._unread :]
        self._unread = len(self._segments)
        return new

    def result(self) -> Result:
        """The current segment: partial while decoding, final once the input has finished and
        been decoded (then its ``is_final`` is True)."""
        if self._final is not None:
            return self._final
        return self._make_result(self._rec.decoder.best(self._dec), is_final=False)

    def transcript(self) -> Result:
        """The whole stream so far as one result: every segment (non-empty ones) joined."""
        parts = [r for r in self._segments if r.token_ids]
        cur = self.result()
        if cur.token_ids and (not parts or parts[-1] is not cur):
            parts.append(cur)
        return Result(
            text=" ".join(r.text for r in parts if r.text),
            tokens=[t for r in parts for t in r.tokens],
            token_ids=[t for r in parts for t in r.token_ids],
            timestamps=[t for r in parts for t in r.timestamps],
            frames=[f for r in parts for f in r.frames],
            start=0.0,
            end=self.seconds_decoded,
            segment=0,
            is_final=self.is_final,
            score=sum(r.score for r in parts),
        )

    def encoder_out(self) -> np.ndarray:
        """(frames, D) every valid encoder output frame so far (``Recognizer(...,
        keep_encoder_out=True)`` only; for checks and debugging)."""
        if self._enc_out is None:
            raise ValueError("create the Recognizer with keep_encoder_out=True to keep encoder outputs")
        if not self._enc_out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(self._enc_out)

    def _make_result(self, hyp: Hyp, is_final: bool, endpoint: str | None = None) -> Result:
        m, fs = self._rec.model, self._rec.frame_seconds
        return Result(
            text=m.text(hyp.tokens),
            tokens=[m.symbols[t] for t in hyp.tokens],
            token_ids=list(hyp.tokens),
            timestamps=[round(f * fs, 3) for f in hyp.frames],
            frames=list(hyp.frames),
            start=round(self._seg_start * fs, 3),
            end=self.seconds_decoded,
            segment=len(self._segments),
            is_final=is_final,
            endpoint=endpoint,
            score=float(hyp.score),
        )

    def _after_window(self) -> None:
        """Endpoint check after a window; the final result when everything is decoded."""
        rec = self._rec
        self._last_endpoint = False
        if rec.endpoint.enabled:
            last = rec.decoder.last_speech(self._dec)
            last = None if last is None else last - self._seg_start
            rule = rec.endpoint.detect(self._frames_done - self._seg_start, last, rec.frame_seconds)
            if rule is not None:
                self._segments.append(self._make_result(rec.decoder.best(self._dec), is_final=True, endpoint=rule))
                self._dec = rec.decoder.new_state(self._frames_done)
                self._seg_start = self._frames_done
                self._last_endpoint = True
        if self._input_done and len(self._buf) == 0:
            self._finalize()

    def _finalize(self) -> None:
        res = self._make_result(self._rec.decoder.best(self._dec), is_final=True)
        if res.token_ids:
            self._segments.append(res)
        self._final = res


class Recognizer:
    """Streaming recognition with the ONNX files of ``asr export`` (onnxruntime + numpy).

    Args:
        model_dir: the export directory (``model.json``, ``tokens.txt``, the graphs).
        decoding: ``"greedy"`` (CTC, RNN-T, TDT) or ``"beam"`` (modified beam search, RNN-T
            and TDT).
        beam: hypotheses kept by beam search.
        num_threads: onnxruntime intra-op threads per graph.
        int8: load the ``*.int8.onnx`` copies (``asr export --int8``).
        use_ctc: decode a hybrid model's CTC head (``ctc.onnx``) instead of its transducer;
            CTC-only models always use it.
        endpoint: endpoint rules (:class:`serve.EndpointConfig`); ``EndpointConfig(enabled=False)``
            or None: a stream is one segment.
        max_symbols: transducer greedy search: labels per frame at most (as torch).
        keep_encoder_out: keep every stream's encoder frames (``stream.encoder_out()``).
        ctc_guard: a hybrid TDT+CTC, greedy: its blank jumps pass only over frames whose CTC
            blank probability exceeds this (``ctc_guard.onnx``; as ``asr decode --ctc-guard``).
        lm: an n-gram LM fused into beam search (``decoding="beam"``, a transducer): an ARPA
            file of ``asr lm`` or a loaded ``asr.decoding`` token LM. ``lm_unit``: ``"token"``
            (the LM's words are the model's tokens) or ``"word"`` (``asr lm --unit word``: the
            search keeps to the LM's vocabulary, spelled by the export's ``bpe.model``).
            ``lm_weight``, ``token_bonus``: as ``asr decode --lm-weight/--token-bonus``.

    Loading checks the directory; a missing or corrupt file and metadata that contradicts
    the graphs are errors naming the file (``FileNotFoundError``/``ValueError``).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        decoding: str = "greedy",
        beam: int = 4,
        num_threads: int = 1,
        int8: bool = False,
        use_ctc: bool = False,
        endpoint: EndpointConfig | None = EndpointConfig(),
        max_symbols: int = 10,
        keep_encoder_out: bool = False,
        ctc_guard: float | None = None,
        lm=None,
        lm_unit: str = "token",
        lm_weight: float = 0.5,
        token_bonus: float = 0.0,
    ):
        if decoding not in ("greedy", "beam"):
            raise ValueError(f"decoding must be 'greedy' or 'beam', got {decoding!r}")
        if lm is not None and decoding != "beam":  # before anything loads
            raise ValueError("an LM is fused into beam search: decoding='beam' (on the command line --method beam)")
        self.model = OnnxModel(model_dir, int8=int8, use_ctc=use_ctc, num_threads=num_threads, ctc_guard=ctc_guard is not None)
        fusion = None
        self.lm_desc = ""
        check_decoding(self.model, decoding, ctc_guard, lm is not None)  # before an LM loads
        if lm is not None:
            name = os.path.basename(os.fspath(lm)) if isinstance(lm, (str, os.PathLike)) else type(lm).__name__
            self.lm_desc = f", {lm_unit} LM {name} (weight {lm_weight}, bonus {token_bonus})"
            from asr.decoding.lm import LMFusion  # numpy only, like the LMs (asr.decoding imports torch lazily)

            LMFusion.check(lm_weight, token_bonus)  # before the LM loads (load_lm checks lm_unit first)
            fusion = LMFusion(self.model.load_lm(lm, lm_unit) if isinstance(lm, (str, os.PathLike)) else lm, lm_weight, token_bonus)
        self.decoder = make_decoder(self.model, decoding, beam, max_symbols, ctc_guard, fusion)
        self.decoding = decoding
        self.endpoint = endpoint if endpoint is not None else EndpointConfig(enabled=False)
        self.keep_encoder_out = keep_encoder_out
        self.window, self.shift = self.model.window, self.model.shift
        self.frame_seconds = self.model.frame_seconds
        self.sample_rate = int(self.model.features["sample_rate"])
        self._batch_axes = [s.batch_axis for s in self.model.states]

    def __repr__(self) -> str:
        m = self.model
        kind = "CTC" if m.use_ctc else m.head.upper()
        return (f"Recognizer({m.dir}, {m.card.get('encoder')} {kind}, {self.decoding}, window {self.window} "
                f"frames, shift {self.shift}, {'int8' if m.int8 else 'fp32'}, {m.num_threads} thread(s){self.lm_desc})")

    @property
    def chunk_seconds(self) -> float:
        """Audio advanced per window."""
        return self.shift * float(self.model.features.get("frame_shift", 0.01))

    @property
    def window_seconds(self) -> float:
        """Audio one window spans (the model's algorithmic latency)."""
        return self.window * float(self.model.features.get("frame_shift", 0.01))

    def create_stream(self) -> Stream:
        return Stream(self)

    def is_ready(self, stream: Stream) -> bool:
        if stream._final is not None:
            return False
        n = len(stream._buf)
        return n >= self.window or (stream._input_done and n > 0)

    def decode(self, streams: Stream | list[Stream]) -> int:
        """Decode every ready window of ``streams``, batching the streams that are ready
        together, until none is ready. Returns the number of batched encoder calls."""
        streams = [streams] if isinstance(streams, Stream) else list(streams)
        calls = 0
        while self.decode_step(streams):
            calls += 1
        return calls

    def decode_step(self, streams: Stream | list[Stream]) -> list[Stream]:
        """One window of every ready stream in one encoder call; returns the streams run."""
        streams = [streams] if isinstance(streams, Stream) else list(dict.fromkeys(streams))  # each stream once
        for s in streams:
            if not isinstance(s, Stream) or s._rec is not self:
                raise ValueError("decode() takes streams created by this recognizer's create_stream()")
        ready = [s for s in streams if self.is_ready(s)]
        if not ready:
            return []
        W, n = self.window, len(ready)
        x = np.zeros((n, W, self.model.feature_dim), np.float32)
        lens = np.zeros(n, np.int64)
        for i, s in enumerate(ready):
            k = min(len(s._buf), W)
            x[i, :k] = s._buf[:k]
            lens[i] = k
        if n == 1:
            states = ready[0]._enc_state
        else:
            states = [np.concatenate([s._enc_state[j] for s in ready], axis=a) for j, a in enumerate(self._batch_axes)]
        enc, enc_lens, new = self.model.run_encoder(x, lens, states)
        for i, s in enumerate(ready):
            s._enc_state = new if n == 1 else [np.take(a, [i], axis=ax) for a, ax in zip(new, self._batch_axes)]
            s._buf = s._buf[self.shift :]
            s.windows_run += 1
            if s._enc_out is not None:
                s._enc_out.append(np.array(enc[i, : int(enc_lens[i])]))
        self.decoder.decode_chunk([s._dec for s in ready], enc, enc_lens)
        for i, s in enumerate(ready):
            s._frames_done += int(enc_lens[i])
            s._after_window()
        return ready

    def transcribe(self, samples, sample_rate: int | None = None) -> Result:
        """A whole recording (float samples at ``sample_rate``, default the model's): its
        :meth:`Stream.transcript` (all segments joined)."""
        return self.transcribe_many([samples], sample_rate)[0]

    def transcribe_many(self, recordings: list, sample_rate: int | None = None) -> list[Result]:
        """Whole recordings decoded together: one stream each, every ready window of all of
        them batched into one encoder call (as a server does); their transcripts, in order.
        A recording shorter than ``MIN_SECONDS`` (50 ms) is refused, as ``ASRModel.transcribe``
        refuses it (a stream may be any length)."""
        rate = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        streams = []
        for i, samples in enumerate(recordings):
            try:
                x = check_samples(samples)
                check_length(len(x), rate)
            except ValueError as e:
                raise ValueError(f"recording {i}: {e}") from None
            s = self.create_stream()
            s.accept_waveform(rate, x)
            s.input_finished()
            streams.append(s)
        self.decode(streams)
        return [s.transcript() for s in streams]
