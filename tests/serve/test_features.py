"""The runtime's audio front end: kaldi-native-fbank gives training's (lhotse) features, streams
give the same frames however the audio is cut, and the streaming resampler is resample_poly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.signal import resample_poly

from asr.data.audio import read_audio
from asr.data.features import FeatureConfig
from serve.features import OnlineFeatures, StreamingResampler

from ..conftest import speak


def _online(features: FeatureConfig, samples: np.ndarray, pieces: list[int]) -> np.ndarray:
    f = OnlineFeatures(dataclasses.asdict(features))
    out, pos = [], 0
    for n in pieces:
        out.append(f.accept(samples[pos : pos + n]))
        pos += n
    out.append(f.accept(samples[pos:]))
    out.append(f.finish())
    return np.concatenate(out)


def test_kaldi_native_fbank_matches_lhotse_on_speech(tmp_path):
    """Training computes fbank with lhotse, the runtime with kaldi-native-fbank. On real speech
    (espeak-ng) they agree to max |diff| <= 1e-3 in log-mel, i.e. 0.1 % in mel energy.

    Why that tolerance: both are float32 implementations of the same kaldi recipe (povey
    window, pre-emphasis, DC removal, 512-point FFT, mel bank, log), so they differ by float32
    rounding only, largest in the weakest bins (about -14 in log-mel) where rounding of the
    FFT of a 0.1-amplitude frame is a larger share of the energy. The bound is also checked to
    be an order of magnitude below a change no one would call a different feature: requantizing
    the same audio to 16 bits (what writing it to a WAV file does) moves lhotse's own features
    by more than ten times that."""
    wav = speak("the quick brown fox jumps over the lazy dog", tmp_path / "fox.wav")
    x = read_audio(wav, 16000)
    cfg = FeatureConfig()
    ref = cfg.compute(x)
    got = _online(cfg, x, [1000, 3, 4567, 160, 8000])
    assert got.shape == ref.shape
    diff = np.abs(got - ref)
    assert diff.max() <= 1e-3, f"max |kaldi-native-fbank - lhotse| = {diff.max():.2e}"
    assert diff.mean() <= 2e-5
    requantized = np.round(x * 32768 + np.random.default_rng(0).uniform(-0.5, 0.5, x.shape)) / 32768
    wav_noise = np.abs(cfg.compute(requantized.astype(np.float32)) - ref).max()
    assert diff.max() * 10 <= wav_noise, f"the two implementations differ by {diff.max():.2e}, 16-bit requantization by {wav_noise:.2e}"


def test_online_features_do_not_depend_on_the_pieces():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)
    cfg = FeatureConfig()
    whole = _online(cfg, x, [])
    cuts = rng.integers(0, 900, size=60).tolist()
    assert np.array_equal(_online(cfg, x, cuts), whole)
    assert whole.shape == (cfg.num_frames(len(x)), 80)


def test_a_long_recording_is_given_to_the_extractor_in_pieces():
    """A whole recording at once went to kaldi-native-fbank as one Python list (32 bytes a
    sample: 0.9 GB for 30 minutes, `asr transcribe --onnx`); now in pieces, same frames."""
    import tracemalloc

    from serve.features import _ACCEPT_PIECE

    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal(16000 * 60)).astype(np.float32)
    cfg = FeatureConfig()
    f = OnlineFeatures(dataclasses.asdict(cfg))
    tracemalloc.start()
    try:
        frames = f.accept(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    frames = np.concatenate([frames, f.finish()])
    assert np.array_equal(frames, _online(cfg, x, [_ACCEPT_PIECE // 3] * 40))
    # the frames themselves (6000 x 80 float32, 1.9 MB) and their copies, not 31 MB of list
    assert peak < 3 * frames.nbytes + 64 * _ACCEPT_PIECE, (peak, frames.nbytes)


def test_features_follow_the_model_settings():
    """Another FeatureConfig (40 bins, other band) is honoured, not kaldi-native-fbank's defaults."""
    cfg = FeatureConfig(num_mel_bins=40, low_freq=60.0, high_freq=-1000.0)
    x = (0.1 * np.random.default_rng(1).standard_normal(8000)).astype(np.float32)
    got = _online(cfg, x, [2000])
    ref = cfg.compute(x)
    assert got.shape == ref.shape == (cfg.num_frames(len(x)), 40)
    assert np.abs(got - ref).max() <= 1e-3
    with pytest.raises(ValueError, match="features"):
        OnlineFeatures({"sample_rate": 16000, "num_bins": 80})


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_streaming_resampler_equals_resample_poly(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(int(rate * 0.6))).astype(np.float32)
    r = StreamingResampler(rate, 16000)
    out, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(0, 2500))
        out.append(r.process(x[pos : pos + n]))
        pos += n
    out.append(r.flush())
    got = np.concatenate(out)
    g = np.gcd(rate, 16000)
    ref = resample_poly(x, 16000 // g, rate // g)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-6
    assert r.flush().size == 0


def test_streaming_resampler_takes_a_long_piece_in_blocks():
    """One piece far longer than the resampler's output block (a million filter products) gives
    what many small pieces give, and resample_poly's samples; streams at one rate share the
    filter table (built once) instead of each building its own."""
    rng = np.random.default_rng(3)
    x = (0.3 * rng.standard_normal(44100 * 3)).astype(np.float32)
    r = StreamingResampler(44100, 16000)
    assert (1 << 20) // r.taps < 16000 * 3  # the piece spans several blocks
    whole = np.concatenate([r.process(x), r.flush()])
    small = StreamingResampler(44100, 16000)
    assert small.table is r.table and not small.table.flags.writeable
    pieces = np.concatenate([small.process(x[i : i + 441]) for i in range(0, len(x), 441)] + [small.flush()])
    assert np.array_equal(whole, pieces)
    assert np.abs(whole - resample_poly(x, 160, 441)).max() <= 1e-6


def test_rates_too_fine_to_filter_are_refused():
    """191999 Hz -> 16 kHz is the ratio 16000/191999: a 3.8M-tap filter, half a second to build
    and 30 MB per stream. It is refused by name; every common rate passes."""
    from serve.features import resampling_ratio

    for rate in (8000, 11025, 22050, 32000, 44100, 48000, 96000, 192000):
        up, down = resampling_ratio(rate, 16000)
        assert rate * up == 16000 * down
    with pytest.raises(ValueError, match="191999 Hz to 16000 Hz.*common rate"):
        StreamingResampler(191999, 16000)
    from serve.features import check_sample_rate, check_samples

    with pytest.raises(ValueError, match="positive"):
        check_sample_rate(10**400)  # beyond any float: an error, not an OverflowError
    with pytest.raises(ValueError, match=r"\[-1, 1\], got 300 at index 2.*32768"):
        check_samples(np.array([0.0, 0.5, 300.0], np.float32))
