"""Endpoint detection: when has the speaker finished a segment?

The rules are sherpa-onnx's (``sherpa-onnx/csrc/endpoint.{h,cc}``), restated here. A rule
fires when all of its conditions hold:

- ``must_contain_nonsilence``: the segment has decoded something (sherpa: utterance length >
  trailing silence);
- trailing silence >= ``min_trailing_silence`` seconds, where trailing silence is the time
  since the last decoded token that writes something (transducer: the frame of the last such
  label; CTC: the last frame whose argmax is one; a lone word boundary or ``<unk>`` is not
  speech: ``OnnxModel.silent_ids``), or since the segment start when nothing was decoded;
- segment length >= ``min_utterance_length`` seconds.

Defaults (sherpa-onnx's): rule1 = 2.4 s of silence with nothing decoded, rule2 = 1.2 s of
silence after something was decoded, rule3 = a segment of 20 s. Silence is measured in
encoder frames (``frame_seconds`` each, the model's real frame rate, not sherpa's hard-coded
40 ms), after each decoded window.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EndpointRule", "EndpointConfig"]


@dataclass(frozen=True)
class EndpointRule:
    must_contain_nonsilence: bool
    min_trailing_silence: float  # seconds
    min_utterance_length: float  # seconds

    def __post_init__(self) -> None:
        if not (self.min_trailing_silence >= 0 and self.min_utterance_length >= 0):  # NaN too
            raise ValueError(f"endpoint rule thresholds must be >= 0 seconds, got {self}")

    def activated(self, trailing_silence: float, utterance_length: float) -> bool:
        nonsilence = utterance_length > trailing_silence
        eps = 1e-9  # frames * frame_seconds: 15 * 0.08 must count as 1.2 s
        return (
            (nonsilence or not self.must_contain_nonsilence)
            and trailing_silence + eps >= self.min_trailing_silence
            and utterance_length + eps >= self.min_utterance_length
        )


@dataclass(frozen=True)
class EndpointConfig:
    """``enabled=False`` turns endpointing off: a stream is one segment until it finishes."""

    enabled: bool = True
    rule1: EndpointRule = EndpointRule(False, 2.4, 0.0)
    rule2: EndpointRule = EndpointRule(True, 1.2, 0.0)
    rule3: EndpointRule = EndpointRule(False, 0.0, 20.0)

    def detect(self, segment_frames: int, last_speech: int | None, frame_seconds: float) -> str | None:
        """The first rule that fires ('rule1', 'rule2', 'rule3') or None. ``segment_frames``:
        encoder frames decoded in the segment; ``last_speech``: the segment-relative frame of
        the last decoded token (None: nothing decoded)."""
        if not self.enabled or segment_frames <= 0:
            return None
        length = segment_frames * frame_seconds
        silent = segment_frames if last_speech is None else segment_frames - (last_speech + 1)
        trailing = silent * frame_seconds
        for name in ("rule1", "rule2", "rule3"):
            if getattr(self, name).activated(trailing, length):
                return name
        return None
