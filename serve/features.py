"""Audio in, fbank frames out, incrementally: input checks, a streaming resampler, kaldi-native-fbank.

- :func:`check_samples` turns whatever the caller passed into float32 mono samples or raises a
  ``ValueError`` naming the problem (NaN/inf, integer PCM, several channels, a bad rate).
- :class:`StreamingResampler` is a polyphase FIR resampler that keeps its input history
  between pieces. Fed in pieces of any size and flushed at the end, it returns exactly what
  ``scipy.signal.resample_poly`` returns on the whole signal (same Kaiser-window filter, same
  centring, zeros beyond both ends), so a live stream at 8/44.1/48 kHz gets the features a
  file resampled by ``asr.data.audio.read_audio`` gets.
- :class:`OnlineFeatures` wraps ``kaldi_native_fbank.OnlineFbank`` configured from the model's
  ``features`` (``asr.data.features.FeatureConfig.kaldi_native_options()``, the settings that
  reproduce training's lhotse fbank), hands out new frames as they become ready and frees them
  inside kaldi-native-fbank.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

__all__ = ["SAMPLE_LIMIT", "MIN_SECONDS", "check_length", "check_sample_rate", "check_samples", "resampling_ratio", "StreamingResampler", "OnlineFeatures"]


def check_sample_rate(sample_rate) -> int:
    """A positive integer rate in Hz, or ValueError naming the value."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    try:
        finite = math.isfinite(float(sample_rate))
    except OverflowError:  # an int beyond any float
        finite = False
    if not finite or sample_rate <= 0:
        shown = str(sample_rate)
        raise ValueError(f"sample_rate must be positive, got {shown if len(shown) <= 20 else shown[:17] + '...'}")
    if float(sample_rate) != int(sample_rate):
        raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate}")
    return int(sample_rate)


MIN_RATE, MAX_RATE = 8000, 192000  # rates of audio given as samples (the server's start, ASRModel.transcribe's arrays)


def check_input_rate(sample_rate, to_rate: int) -> int:
    """``sample_rate`` of audio given as samples: a whole number of Hz in MIN_RATE..MAX_RATE
    (16 is kHz given as Hz, and would resample 6 s into hours) that converts to ``to_rate``
    (:func:`resampling_ratio`); a ValueError otherwise."""
    rate = check_sample_rate(sample_rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"sample_rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
    resampling_ratio(rate, to_rate)
    return rate


SAMPLE_LIMIT = 2.0  # |sample| above this is not float audio in [-1, 1] (integer PCM as floats?)
MIN_SECONDS = 0.05  # a whole recording shorter than this has too few feature frames for any encoder here


def check_length(n_samples: int, sample_rate: int, what: str = "audio") -> None:
    """ValueError when a whole recording of ``n_samples`` at ``sample_rate`` is shorter than
    ``MIN_SECONDS`` (what ``ASRModel.transcribe``, ``Recognizer.transcribe`` and ``read_audio``
    refuse alike; a live stream may be any length)."""
    if n_samples < MIN_SECONDS * sample_rate:
        raise ValueError(f"{what} is too short: {n_samples / sample_rate * 1000:.1f} ms ({n_samples} samples at "
                         f"{sample_rate} Hz; need at least {MIN_SECONDS * 1000:g} ms)")


def check_samples(samples) -> np.ndarray:
    """(N,) float32 samples in [-1, 1] from an array or sequence; ValueError otherwise (integer
    dtypes, more than one channel, NaN or inf, beyond +-``SAMPLE_LIMIT``)."""
    arr = np.asarray(samples)
    if arr.dtype == object:
        raise ValueError("samples must be numbers (a 1-D float array), got objects")
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"expected mono samples of shape (N,), got shape {arr.shape}; downmix first (e.g. x.mean(axis=1))")
    if arr.dtype.kind in "iub":
        raise ValueError(
            f"expected float samples in [-1, 1], got {arr.dtype} samples; divide integer PCM by its full scale (32768 for int16)"
        )
    if arr.dtype.kind == "c":
        raise ValueError("expected real samples, got complex numbers")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"audio has NaN or inf samples (first at index {i} of this piece of {arr.size} samples)")
    loud = np.abs(arr) > SAMPLE_LIMIT
    if loud.any():
        i = int(np.argmax(loud))
        raise ValueError(f"expected float samples in [-1, 1], got {arr[i]:.6g} at index {i} of this piece of {arr.size} "
                         "samples; integer PCM stored as floats? divide it by its full scale (32768 for int16)")
    return arr


MAX_RATIO_TERM = 10_000  # largest up or down of a rate conversion: its filter has 20x as many taps


def resampling_ratio(from_rate: int, to_rate: int) -> tuple[int, int]:
    """(up, down) of resampling ``from_rate`` to ``to_rate``, or a ValueError when the ratio is
    too fine to filter in reasonable time and memory (e.g. 191999 Hz to 16000 Hz: 16000/191999,
    a 3.8M-tap filter). Every common rate is far inside (44100 -> 16000 is 160/441)."""
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    if max(up, down) > MAX_RATIO_TERM:
        raise ValueError(f"resampling {from_rate} Hz to {to_rate} Hz is a ratio of {up}/{down}, whose filter would need "
                         f"{20 * max(up, down) + 1} taps: send audio at a common rate (8000, 16000, 22050, 44100, 48000 Hz ...)")
    return up, down


@functools.lru_cache(maxsize=16)
def _polyphase_table(up: int, down: int) -> tuple[int, int, np.ndarray]:
    """(half, taps per phase, read-only (up, taps) table) of ``resample_poly``'s filter, built
    once per ratio and shared by every stream at that rate."""
    from scipy.signal import firwin

    half = 10 * max(up, down)
    h = firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", 5.0)) * up
    taps = -(-len(h) // up)
    table = np.zeros((up, taps))
    for p in range(up):
        coeffs = h[p::up]
        table[p, : len(coeffs)] = coeffs
    table.setflags(write=False)
    return half, taps, table


class StreamingResampler:
    """Resample a stream piece by piece; the concatenated output equals
    ``scipy.signal.resample_poly(whole, up, down)`` (float64 arithmetic, float32 out).

    Output sample ``n`` is ``sum_j h[j] u[n*down + L - j]`` where ``u`` is the input upsampled by
    zero insertion and ``h`` the ``2L+1``-tap low-pass of ``resample_poly`` (``L = 10 max(up,
    down)``, Kaiser beta 5, gain ``up``). It needs input up to index ``(n*down + L) // up``, so
    the output lags the input by about ``L / up`` input samples (0.6 ms for 8 kHz -> 16 kHz,
    1.7 ms from 44.1 kHz) until :meth:`flush` pads the end with zeros.
    """

    def __init__(self, from_rate: int, to_rate: int):
        from_rate, to_rate = check_sample_rate(from_rate), check_sample_rate(to_rate)
        self.up, self.down = resampling_ratio(from_rate, to_rate)
        self.from_rate, self.to_rate = from_rate, to_rate
        self.half, self.taps, self.table = _polyphase_table(self.up, self.down)
        self.buf = np.zeros(0)  # input samples [base, base + len(buf))
        self.base = 0
        self.n_in = 0  # input samples received
        self.n_out = 0  # output samples produced
        self.flushed = False

    def _emit(self, n_end: int) -> np.ndarray:
        """Output samples [n_out, n_end) from the buffered input (zeros outside it), in blocks
        of about a million filter products, so a long piece costs no more memory than a short one."""
        if n_end <= self.n_out:
            return np.zeros(0, np.float32)
        block = max(1, (1 << 20) // self.taps)
        out = []
        for lo in range(self.n_out, n_end, block):
            n = np.arange(lo, min(lo + block, n_end), dtype=np.int64)
            pos = n * self.down + self.half
            i0, phase = pos // self.up, pos % self.up
            idx = i0[:, None] - np.arange(self.taps)[None, :] - self.base
            ok = (idx >= 0) & (idx < len(self.buf))
            vals = np.where(ok, self.buf[np.clip(idx, 0, max(len(self.buf) - 1, 0))] if len(self.buf) else 0.0, 0.0)
            out.append((self.table[phase] * vals).sum(axis=1).astype(np.float32))
        self.n_out = n_end
        # keep only the history the next output needs
        need = (self.n_out * self.down + self.half) // self.up - (self.taps - 1)
        drop = min(max(0, need - self.base), len(self.buf))
        if drop:
            self.buf = self.buf[drop:]
            self.base += drop
        return out[0] if len(out) == 1 else np.concatenate(out)

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.flushed:
            raise ValueError("the resampler was flushed; create a new one")
        if len(x):
            self.buf = np.concatenate([self.buf, np.asarray(x, dtype=np.float64)])
            self.n_in += len(x)
        # outputs whose newest input sample has arrived: (n*down + half) // up < n_in
        n_end = max(0, -(-(self.n_in * self.up - self.half) // self.down))
        return self._emit(n_end)

    def flush(self) -> np.ndarray:
        """The remaining output (input treated as zero past its end), ``ceil(n_in * up / down)``
        samples in all."""
        if self.flushed:
            return np.zeros(0, np.float32)
        self.flushed = True
        return self._emit(-(-(self.n_in * self.up) // self.down))


_ACCEPT_PIECE = 1 << 16  # samples given to kaldi-native-fbank at a time (4 s at 16 kHz)


class OnlineFeatures:
    """kaldi-native-fbank's OnlineFbank with the model's feature settings.

    ``accept(samples)`` (float32 at the model's rate) and ``finish()`` return the frames that
    became ready, ``(n, num_mel_bins)`` float32, copied out and released inside the extractor.
    """

    def __init__(self, features: dict):
        import kaldi_native_fbank as knf

        from asr.data.features import FeatureConfig

        try:
            config = FeatureConfig(**features)
        except TypeError as e:
            raise ValueError(f"model.json 'features' does not describe FeatureConfig: {e}") from None
        opts = fbank_options(config)
        self.config = config
        self.sample_rate = config.sample_rate
        self.dim = config.num_mel_bins
        self._fbank = knf.OnlineFbank(opts)
        self._next = 0  # index of the next frame to hand out
        self.finished = False

    def _take(self) -> np.ndarray:
        ready = self._fbank.num_frames_ready
        if ready <= self._next:
            return np.zeros((0, self.dim), np.float32)
        # get_frame returns a view of the extractor's storage: copy before pop() frees it
        frames = np.stack([np.array(self._fbank.get_frame(i), dtype=np.float32) for i in range(self._next, ready)])
        self._fbank.pop(ready - self._next)
        self._next = ready
        return frames

    def accept(self, samples: np.ndarray) -> np.ndarray:
        # a list converts faster than an array through the binding's Sequence[float]; in pieces,
        # since a list holds 32 bytes a sample (a 30-minute recording at once took 0.9 GB)
        for i in range(0, len(samples), _ACCEPT_PIECE):
            self._fbank.accept_waveform(self.sample_rate, samples[i : i + _ACCEPT_PIECE].tolist())
        return self._take()

    def finish(self) -> np.ndarray:
        if not self.finished:
            self.finished = True
            self._fbank.input_finished()
        return self._take()


def fbank_options(config):
    """``kaldi_native_fbank.FbankOptions`` set from a ``FeatureConfig`` (its
    ``kaldi_native_options()``, dotted keys such as ``frame_opts.dither``)."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    for key, value in config.kaldi_native_options().items():
        obj = opts
        *path, last = key.split(".")
        for p in path:
            obj = getattr(obj, p)
        setattr(obj, last, value)
    return opts
