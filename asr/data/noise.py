"""Locally made noise for augmentation: coloured noise and TTS babble.

- ``coloured_noise``: white, pink (1/f power) and brown (1/f^2 power) noise, shaped in the
  frequency domain from a seeded ``numpy.random.Generator``.
- ``mix_babble``: several talkers (TTS voices reading sentences held out of every corpus split)
  overlapped with random circular offsets and gains.

The corpus builder writes them as 16 kHz FLAC under ``<out>/noise/`` and lists them in a lhotse
``RecordingSet`` (``<out>/noise/recordings.jsonl.gz``); a MUSAN RecordingSet can be used in its
place, since augmentation only reads a RecordingSet.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["NOISE_COLOURS", "coloured_noise", "mix_babble", "peak_normalize", "write_recording_set"]

NOISE_COLOURS: tuple[str, ...] = ("white", "pink", "brown")
_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^exponent


def peak_normalize(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale (T,) ``x`` so that its largest absolute sample is ``peak_dbfs`` dB full scale."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak <= 0.0:
        return x.astype(np.float32)
    return (x * (10.0 ** (peak_dbfs / 20.0) / peak)).astype(np.float32)


def coloured_noise(
    colour: str, num_samples: int, rng: np.random.Generator, sample_rate: int = 16000,
    rms_dbfs: float = -20.0,
) -> np.ndarray:
    """White, pink or brown noise: (num_samples,) float32 with the given RMS (dB full scale).

    Gaussian white noise is shaped in the frequency domain by ``f^(-exponent/2)`` in amplitude
    (exponent 0, 1, 2); the lowest bins (below 20 Hz) are flattened so brown noise has no DC
    drift. Samples are clipped to [-1, 1] (a no-op at the default level).
    """
    if colour not in _EXPONENT:
        raise ValueError(f"unknown noise colour {colour!r}; expected one of {list(NOISE_COLOURS)}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    white = rng.standard_normal(num_samples)
    exponent = _EXPONENT[colour]
    if exponent == 0.0:
        x = white
    else:
        spec = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(num_samples, d=1.0 / sample_rate)
        freqs = np.maximum(freqs, 20.0)
        spec *= freqs ** (-exponent / 2.0)
        x = np.fft.irfft(spec, n=num_samples)
    x = x - x.mean()
    x *= 10.0 ** (rms_dbfs / 20.0) / max(float(np.sqrt(np.mean(x * x))), 1e-12)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def mix_babble(
    talkers: Sequence[np.ndarray], num_samples: int, rng: np.random.Generator, peak_dbfs: float = -3.0
) -> np.ndarray:
    """Overlap talkers into babble: (num_samples,) float32.

    Each talker (T_i,) is tiled or cut to ``num_samples``, rolled by a random offset and scaled
    by a random gain in [-6, 0] dB; the sum is peak-normalized to ``peak_dbfs``.
    """
    if not talkers:
        raise ValueError("babble needs at least one talker")
    out = np.zeros(num_samples, dtype=np.float64)
    for x in talkers:
        if x.size == 0:
            continue
        reps = -(-num_samples // x.size)
        track = np.tile(x.astype(np.float64), reps)[:num_samples]
        track = np.roll(track, int(rng.integers(0, num_samples)))
        track /= max(float(np.sqrt(np.mean(track * track))), 1e-12)
        out += track * 10.0 ** (rng.uniform(-6.0, 0.0) / 20.0)
    return peak_normalize(out, peak_dbfs)


def write_recording_set(paths: Sequence[Path], manifest: Path) -> int:
    """Write a lhotse RecordingSet (jsonl.gz) for audio files ``paths``; returns the count.

    Recording ids are the file stems and sources are absolute paths (move the directory, write
    it again). The gzip header carries no time stamp, so the same files give the same bytes.
    Read it back with ``lhotse.RecordingSet.from_file``.
    """
    from lhotse import Recording

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        for path in paths:
            rec = Recording.from_file(Path(path).resolve(), recording_id=Path(path).stem)
            gz.write((json.dumps(rec.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(manifest)
    return len(paths)
