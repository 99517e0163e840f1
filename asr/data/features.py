"""One description of the acoustic features, read by training, export and the runtime.

80-bin kaldi-compatible log-mel filterbank, 25 ms window, 10 ms shift, 16 kHz, samples in
[-1, 1]. Training computes them with lhotse's ``Fbank``; the ONNX runtime with
kaldi-native-fbank configured from ``FeatureConfig.kaldi_native_options()``. The numbers below
are lhotse's defaults; kaldi-native-fbank's own defaults differ (low/high freq, dither,
snip_edges), which is why the runtime must be configured from here, never from its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from functools import lru_cache

import numpy as np

__all__ = ["FeatureConfig"]


# FeatureConfig.compute: frames per piece of a long recording, and frames of margin each side.
_PIECE_FRAMES = 6000
_MARGIN_FRAMES = 4


@lru_cache(maxsize=8)
def _extractor(config: "FeatureConfig"):
    return config._make_extractor()


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length: float = 0.025  # seconds
    frame_shift: float = 0.010  # seconds
    dither: float = 0.0
    preemph_coeff: float = 0.97
    window_type: str = "povey"
    low_freq: float = 20.0
    high_freq: float = -400.0
    snip_edges: bool = False
    energy_floor: float = 1e-10

    @property
    def window_samples(self) -> int:
        return int(round(self.frame_length * self.sample_rate))

    @property
    def shift_samples(self) -> int:
        return int(round(self.frame_shift * self.sample_rate))

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (snip_edges=False rounding)."""
        if self.snip_edges:
            return max(0, 1 + (num_samples - self.window_samples) // self.shift_samples)
        return int((num_samples + self.shift_samples // 2) // self.shift_samples)

    def lhotse_extractor(self):
        """A lhotse ``Fbank`` extractor with exactly these settings (built once, cached)."""
        return _extractor(self)

    def _make_extractor(self):
        from lhotse import Fbank, FbankConfig

        return Fbank(
            FbankConfig(
                sampling_rate=self.sample_rate,
                num_mel_bins=self.num_mel_bins,
                frame_length=self.frame_length,
                frame_shift=self.frame_shift,
                dither=self.dither,
                preemph_coeff=self.preemph_coeff,
                window_type=self.window_type,
                low_freq=self.low_freq,
                high_freq=self.high_freq,
                snip_edges=self.snip_edges,
                energy_floor=self.energy_floor,
            )
        )

    def compute(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """(N,) float samples in [-1, 1] -> (T, num_mel_bins) float32 log-mel features."""
        sr = sample_rate or self.sample_rate
        if sr != self.sample_rate:
            raise ValueError(f"features expect {self.sample_rate} Hz audio, got {sr} Hz: resample first")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples of shape (N,), got shape {samples.shape}")
        total = self.num_frames(len(samples))
        if total <= _PIECE_FRAMES + 2 * _MARGIN_FRAMES:
            return self._extract(samples)
        # A long recording in pieces of _PIECE_FRAMES frames: every frame reads only its own
        # window of samples, so a piece cut with a margin on each side and trimmed back gives
        # the frames the whole recording would (lhotse holds every frame's samples and spectrum
        # at once: 30 minutes in one go peaked 1.1 GB above the audio, in pieces nothing visible).
        out = np.empty((total, self.num_mel_bins), dtype=np.float32)
        for a in range(0, total, _PIECE_FRAMES):
            b = min(total, a + _PIECE_FRAMES)
            first = max(0, a - _MARGIN_FRAMES)  # the piece's samples start on a frame boundary
            lo = first * self.shift_samples
            hi = min(len(samples), (b + _MARGIN_FRAMES) * self.shift_samples + self.window_samples)
            piece = self._extract(samples[lo:hi])
            out[a:b] = piece[a - first:b - first]
        return out

    def _extract(self, samples: np.ndarray) -> np.ndarray:
        return self.lhotse_extractor().extract(samples, self.sample_rate).astype(np.float32)

    def kaldi_native_options(self) -> dict:
        """Settings for kaldi-native-fbank's FbankOptions that reproduce these features."""
        return {
            "frame_opts.samp_freq": float(self.sample_rate),
            "frame_opts.frame_length_ms": self.frame_length * 1000.0,
            "frame_opts.frame_shift_ms": self.frame_shift * 1000.0,
            "frame_opts.dither": self.dither,
            "frame_opts.preemph_coeff": self.preemph_coeff,
            "frame_opts.window_type": self.window_type,
            "frame_opts.snip_edges": self.snip_edges,
            "mel_opts.num_bins": self.num_mel_bins,
            "mel_opts.low_freq": self.low_freq,
            "mel_opts.high_freq": self.high_freq,
            "energy_floor": self.energy_floor,
        }
