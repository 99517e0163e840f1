"""Reading one audio file for inference, with errors that name the file.

Used by ``asr transcribe`` and ``ASRModel.transcribe``: any format soundfile reads (WAV, FLAC,
OGG, ...), any rate (resampled to 16 kHz), any channel count (downmixed to mono).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serve.features import MIN_SECONDS, check_length  # one limit for the API, the CLI and the runtime

__all__ = ["MIN_SECONDS", "read_audio", "resample"]

log = logging.getLogger(__name__)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of (N,) float samples."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return samples
    from scipy.signal import resample_poly

    from serve.features import resampling_ratio

    up, down = resampling_ratio(int(from_rate), int(to_rate))  # refuses ratios too fine to filter, as the runtime does
    return resample_poly(samples, up, down).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """(N,) float32 mono samples in [-1, 1] at ``sample_rate``.

    Raises FileNotFoundError or ValueError naming ``path`` for a missing, unreadable, empty or
    too short file, or one with NaN/inf samples or samples beyond +-2 (``SAMPLE_LIMIT``).
    """
    import soundfile as sf

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an audio file")
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise ValueError(
            f"cannot read audio file {path}: {str(e).rstrip('.')}. Expected a format soundfile reads (WAV, FLAC, OGG, MP3); convert others first"
        ) from None
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} contains no samples")
    if data.shape[1] > 1:
        log.info("%s: %d channels, downmixing to mono", path, data.shape[1])
    samples = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(samples).all():
        raise ValueError(f"audio file {path} has NaN or inf samples")
    if sr != sample_rate:
        log.info("%s: resampling %d Hz -> %d Hz", path, sr, sample_rate)
        samples = resample(samples, sr, sample_rate)
    from serve.features import SAMPLE_LIMIT

    peak = float(np.abs(samples).max())
    if peak > SAMPLE_LIMIT:  # what the runtime and the API refuse in arrays: refused here with the file's name
        raise ValueError(f"audio file {path} has samples up to {peak:.3g}, beyond +-{SAMPLE_LIMIT:g} (float audio is in "
                         "[-1, 1]: an unnormalized float WAV? scale it first)")
    check_length(samples.shape[0], sample_rate, f"audio file {path}")
    return np.ascontiguousarray(samples, dtype=np.float32)
