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
