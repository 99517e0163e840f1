"""Long recordings: features, subsampling, the Conformer's layers and the SSM's convolutions go
through a long input in pieces, with the same outputs as in one go and memory that does not
grow with the recording."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import asr.data.features as features
import asr.encoders.conformer as conformer
import asr.encoders.ssm as ssm
import asr.encoders.subsampling as subsampling
from asr.data.features import FeatureConfig
from asr.encoders import build_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("snip_edges", [False, True])
def test_features_in_pieces_equal_features_in_one_go(monkeypatch, snip_edges):
    cfg = FeatureConfig(snip_edges=snip_edges)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(features, "_PIECE_FRAMES", 30)
    seen = []
    extract = FeatureConfig._extract
    monkeypatch.setattr(FeatureConfig, "_extract", lambda self, x: (seen.append(len(x)), extract(self, x))[1])
    for n in (16000 + 37, 32000 + 159, 48000 + 80, 48000 + 81, 80000 + 400, 112000 - 1):
        x = (rng.standard_normal(n) * 0.1).astype(np.float32)
        seen.clear()
        got = cfg.compute(x)
        assert len(seen) > 2 and max(seen) < n  # it did go in pieces
        want = extract(cfg, x)
        assert got.shape == want.shape == (cfg.num_frames(n), 80)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_subsampling_in_pieces_equals_one_go(monkeypatch, causal, factor):
    torch.manual_seed(0)
    m = subsampling.ConvSubsampling(80, 32, factor, 8, causal).eval()
    for t in (7, 50, 129, 333):
        x = torch.randn(2, t, 80)
        monkeypatch.setattr(subsampling, "_PIECE", 10**9)
        want = m(x)
        monkeypatch.setattr(subsampling, "_PIECE", 5)
        got = m(x)
        assert got.shape == want.shape == (2, -(-t // factor), 32)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("context", [[6, 0], [6, 1], [4, 3], [0, 2], [40, 5]])
def test_conformer_layers_in_pieces_equal_one_go(monkeypatch, context):
    """Pieces of one query group (the worst case): every layer's attention and convolution
    caches carry across, padded frames of the shorter streams included."""
    torch.manual_seed(0)
    enc = build_encoder("conformer", d_model=32, num_layers=2, num_heads=4, conv_kernel=5, subsampling_channels=8,
                        att_contexts=[context]).eval()
    windows = []
    make_window = conformer.ConformerEncoder._window
    monkeypatch.setattr(conformer.ConformerEncoder, "_window", lambda self, *a: (windows.append(a[2]), make_window(self, *a))[1])
    x, lens = torch.randn(3, 333, 80), torch.tensor([333, 313, 9])
    with torch.no_grad():
        want, want_lens = enc(x, lens)
        assert len(windows) == 1  # one go
        monkeypatch.setattr(conformer, "PIECE_FRAMES", 1)
        windows.clear()
        got, got_lens = enc(x, lens)
    assert len(windows) >= 3 and set(windows) == {1}
    assert torch.equal(got_lens, want_lens)
    valid = (torch.arange(want.size(1))[None, :] < want_lens[:, None])[..., None]
    torch.testing.assert_close(got * valid, want * valid, rtol=0, atol=1e-5)


def test_ssm_in_pieces_equals_one_go(monkeypatch):
    """Pieces of 7 frames: each piece's FFT convolution plus the state the pieces before it left."""
    torch.manual_seed(0)
    enc = build_encoder("ssm", d_model=16, num_layers=2, d_state=4, expand=2, conv_kernel=3, subsampling=4,
                        subsampling_channels=8).eval()
    x, lens = torch.randn(3, 333, 80), torch.tensor([333, 313, 9])
    with torch.no_grad():
        want, want_lens = enc(x, lens)
        monkeypatch.setattr(ssm, "PIECE_FRAMES", 7)
        got, got_lens = enc(x, lens)
    assert torch.equal(got_lens, want_lens)
    valid = (torch.arange(want.size(1))[None, :] < want_lens[:, None])[..., None]
    torch.testing.assert_close(got * valid, want * valid, rtol=0, atol=1e-5)
    s4 = ssm.S4D(8, 4, 1e-3, 1e-1)  # and it trains: the same gradients through the carried state
    u = torch.randn(2, 8, 100, requires_grad=True)
    grads = []
    for piece in (10**9, 7):
        monkeypatch.setattr(ssm, "PIECE_FRAMES", piece)
        grads.append(torch.autograd.grad(s4(u).square().sum(), [u, s4.log_dt]))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def peak_growth_mb(setup: str, measured: str) -> int:
    """In a fresh Python (one thread, at the repository root): run ``setup`` (its warm-up
    included), then ``measured``; -> how many MB ``measured`` raised the process's peak RSS."""
    code = "import resource, torch\ntorch.set_num_threads(1)\n" + textwrap.dedent(setup) + (
        "\nbefore = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n" + textwrap.dedent(measured)
        + "\nprint((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=conformer.__file__.rsplit("/asr/", 1)[0])
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_a_long_ssm_convolution_holds_one_pieces_powers():
    """The mini SSM's S4D (512 channels, 32 states) over 15000 frames (10 minutes at 4x): the
    whole-sequence kernel's powers alone were 2 GB in float64 and three times 1 GB in float32
    (the peak grew by 4065 MB)."""
    grew_mb = peak_growth_mb("""
        from asr.encoders.ssm import S4D
        s4 = S4D(512, 32, 1e-3, 1e-1).eval().requires_grad_(False)
        u = torch.randn(1, 512, 15000)
        s4(u[:, :, :2000])
    """, "s4(u)")
    assert grew_mb < 500, f"peak memory grew by {grew_mb} MB"


def test_transcribing_ten_minutes_does_not_hold_the_whole_recordings_activations():
    """The mini recipe's Conformer (64 subsampling channels, 8 layers), random weights, on a
    10-minute recording. Before the pieces its peak grew by 727 MB (features 460 MB of it, the
    first subsampling convolution and the layers the rest); in pieces by about 250 MB, most of it
    the recording's features and the decoder's tables."""
    grew_mb = peak_growth_mb("""
        import numpy as np
        from asr.config import load_yaml
        from asr.data.features import FeatureConfig
        from asr.data.tokenizer import Tokenizer
        from asr.models import ASRModel
        from asr.training.trainer import TrainConfig
        cfg = load_yaml(TrainConfig, "recipes/mini/conf/conformer.yaml")
        tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog"], model_type="char")
        m = ASRModel(cfg.model, FeatureConfig(), tok).eval()
        rng = np.random.default_rng(0)
        minute = (np.sin(np.arange(16000 * 60) * 0.05) * rng.uniform(0.01, 0.3, 16000 * 60)).astype(np.float32)
        m.transcribe(minute)
        audio = np.tile(minute, 10)
    """, "m.transcribe(audio)")
    assert grew_mb < 400, f"peak memory grew by {grew_mb} MB transcribing 10 minutes"
