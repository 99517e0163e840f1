"""Live streaming simulated from a recording: pieces in, partial and final results out, timings.

Used by ``asr stream`` and by the benchmark. Audio is fed in pieces of ``piece_seconds`` (100 ms
by default, what a microphone callback delivers), each followed by ``recognizer.decode``;
with ``realtime=True`` every piece is fed no earlier than the moment it would have been
recorded.

Measured:

- **RTF**: compute time (feeding + decoding, all pieces and the final flush) / audio duration;
- **piece latency**: compute time of each piece (p50/p95/max), what a live caller waits after
  each callback;
- **window latency**: the time of every encoder window and its decoding, from the timings
  the pieces give (a piece may run 0, 1 or several windows);
- **token latency** (p50/p95): for every token, when it first appeared in a result minus the
  end of its encoder frame in the audio, on the simulated clock (a piece becomes available when
  its last sample has been recorded, waits for the pieces before it, then takes its compute
  time). It includes the model's look-ahead, the window size, the piece size, the compute time
  and, when compute falls behind the audio, the queue: what a user would see.
- **final latency**: compute time from the end of the input to the final result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["StreamStats", "simulate"]


def _pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x), q)) if x else 0.0


@dataclass
class StreamStats:
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    piece_seconds: list[float] = field(default_factory=list)
    window_seconds: list[float] = field(default_factory=list)
    token_latency: list[float] = field(default_factory=list)
    final_seconds: float = 0.0
    windows: int = 0

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def summary(self) -> dict:
        def ms(v: float) -> float:
            return round(1000 * v, 2)

        return {
            "audio_s": round(self.audio_seconds, 3),
            "compute_s": round(self.compute_seconds, 4),
            "rtf": round(self.rtf, 4),
            "windows": self.windows,
            "piece_ms_p50": ms(_pct(self.piece_seconds, 50)),
            "piece_ms_p95": ms(_pct(self.piece_seconds, 95)),
            "piece_ms_max": ms(max(self.piece_seconds, default=0.0)),
            "window_ms_p50": ms(_pct(self.window_seconds, 50)),
            "window_ms_p95": ms(_pct(self.window_seconds, 95)),
            "token_latency_ms_p50": ms(_pct(self.token_latency, 50)),
            "token_latency_ms_p95": ms(_pct(self.token_latency, 95)),
            "final_ms": ms(self.final_seconds),
        }


def simulate(recognizer, samples: np.ndarray, sample_rate: int, piece_seconds: float = 0.1, realtime: bool = False,
             on_partial=None, on_final=None, stream=None) -> tuple[StreamStats, object]:
    """Stream ``samples`` through ``recognizer`` piece by piece. ``on_partial(result)`` is
    called when the current segment's text changes, ``on_final(result)`` for every finalized
    segment (endpoints, then the last one). Returns (stats, stream)."""
    if piece_seconds <= 0:
        raise ValueError(f"piece_seconds must be positive, got {piece_seconds}")
    s = stream if stream is not None else recognizer.create_stream()
    step = max(1, int(round(piece_seconds * sample_rate)))
    stats = StreamStats(audio_seconds=len(samples) / sample_rate)
    fs = recognizer.frame_seconds
    s.accept_waveform(sample_rate, samples[:0])  # set-up (a resampler's filter) before the clock starts
    seen = 0  # tokens of the stream already reported (finished segments + current)
    busy_until = 0.0  # simulated clock: when the pieces so far are decoded (one decoder: a piece waits for the last)
    done_tokens = 0
    last_text = ""
    start = time.perf_counter()

    def run_windows() -> None:
        while True:
            t0 = time.perf_counter()
            ran = recognizer.decode_step([s])
            if not ran:
                return
            stats.window_seconds.append(time.perf_counter() - t0)
            stats.windows += 1

    def report(done_at: float) -> None:
        nonlocal seen, done_tokens, last_text
        popped = s.pop_segments()
        for seg in popped:
            new = len(seg.frames) - (seen - done_tokens)
            for f in seg.frames[len(seg.frames) - max(new, 0):]:
                stats.token_latency.append(done_at - (f + 1) * fs)
            done_tokens += len(seg.frames)
            seen = done_tokens
            last_text = ""
            if on_final is not None:
                on_final(seg)
        res = s.result()
        if popped and popped[-1] is res:  # the final segment, counted above
            return
        cur = len(res.frames)
        if cur > seen - done_tokens:
            for f in res.frames[seen - done_tokens:]:
                stats.token_latency.append(done_at - (f + 1) * fs)
            seen = done_tokens + cur
        if res.text != last_text and not res.is_final:
            last_text = res.text
            if on_partial is not None:
                on_partial(res)

    for i in range(0, len(samples), step):
        piece = samples[i : i + step]
        available_at = (i + len(piece)) / sample_rate  # audio time when the piece is complete
        if realtime:
            wait = start + available_at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        t0 = time.perf_counter()
        s.accept_waveform(sample_rate, piece)
        run_windows()
        dt = time.perf_counter() - t0
        stats.piece_seconds.append(dt)
        stats.compute_seconds += dt
        busy_until = max(available_at, busy_until) + dt
        report(busy_until)
    t0 = time.perf_counter()
    s.input_finished()
    run_windows()
    dt = time.perf_counter() - t0
    stats.final_seconds = dt
    stats.compute_seconds += dt
    report(max(stats.audio_seconds, busy_until) + dt)
    final = s.result()
    if on_final is not None and final.token_ids and (not s.segments or s.segments[-1] is not final):
        on_final(final)
    return stats, s
