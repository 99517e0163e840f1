"""Tiny models, features and audio for the exporter tests."""

from __future__ import annotations

import functools

import numpy as np
import torch

from asr.data.features import FeatureConfig
from asr.data.tokenizer import Tokenizer
from asr.heads.transducer import TransducerConfig
from asr.models import ASRModel, ModelConfig

ATOL = 1e-4

# Tiny encoders (80 mel bins in): seconds to export, milliseconds to run.
ENCODERS: dict[str, dict] = {
    "conformer": dict(d_model=32, num_layers=2, num_heads=4, conv_kernel=5, subsampling_channels=8,
                      att_contexts=[[6, 0], [6, 1], [4, 3], [0, 2]], inference_context=[6, 1]),
    "lstm": dict(input_size=24, hidden_size=32, proj_size=16, num_layers=2, chunk_size=3),
    "quartznet": dict(num_blocks=2, repeat=2, channels=[16, 24], kernels=[5, 7], prologue_channels=16,
                      prologue_kernel=5, epilogue_channels=[24, 32], epilogue_kernels=[5, 1],
                      epilogue_dilations=[2, 1], chunk_size=3),
    "citrinet": dict(channels=16, repeat=2, kernels=[[3, 5], [5], [7]], prologue_kernel=3, epilogue_channels=24,
                     epilogue_kernel=5, se_window=6, se_reduction=4, chunk_size=2),
    "ssm": dict(d_model=16, num_layers=2, d_state=4, expand=2, conv_kernel=3, subsampling=4,
                subsampling_channels=8, chunk_size=3),
}
FAMILIES = list(ENCODERS)


@functools.lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    texts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"]
    return Tokenizer.train(texts, model_type="char")


def tiny_model(family: str, head: str = "rnnt", predictor: str = "stateless", ctc_weight: float = 0.0,
               context_size: int = 2, pred_dim: int = 16, joint_dim: int = 24, activation: str = "tanh",
               seed: int = 0, **encoder) -> ASRModel:
    """A tiny eval-mode model with non-trivial feature statistics and BatchNorm statistics."""
    torch.manual_seed(seed)
    tok = tokenizer()
    cfg = ModelConfig(
        encoder=family, encoder_config={**ENCODERS[family], **encoder}, head=head, ctc_weight=ctc_weight,
        transducer=TransducerConfig(predictor=predictor, pred_dim=pred_dim, joint_dim=joint_dim,
                                    context_size=context_size, activation=activation, durations=[0, 1, 2]),
    )
    model = ASRModel(cfg, FeatureConfig(), tok)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.feat_mean.copy_(torch.randn(80, generator=g) - 8.0)
        model.feat_std.copy_(torch.rand(80, generator=g) * 2 + 1.0)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


def synthetic_audio(seconds: float = 2.5, seed: int = 0, sr: int = 16000) -> np.ndarray:
    """Deterministic 'speech-like' audio: 120 ms segments of random tones, chirps and noise."""
    rng = np.random.default_rng(seed)
    seg = int(0.12 * sr)
    out = []
    for _ in range(int(seconds * sr) // seg):
        t = np.arange(seg) / sr
        kind = rng.integers(3)
        f0 = rng.uniform(100, 3000)
        if kind == 0:
            x = np.sin(2 * np.pi * f0 * t)
        elif kind == 1:
            x = np.sin(2 * np.pi * (f0 + rng.uniform(-2000, 2000) * t / t[-1] / 2) * t)
        else:
            x = rng.standard_normal(seg)
        out.append(rng.uniform(0.02, 0.4) * x * np.hanning(seg))
    return np.concatenate(out).astype(np.float32)


def knf_features(samples: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """kaldi-native-fbank with FeatureConfig.kaldi_native_options(): the runtime's features."""
    import kaldi_native_fbank as knf

    from serve.features import fbank_options

    fb = knf.OnlineFbank(fbank_options(features))
    fb.accept_waveform(features.sample_rate, samples.tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)]).astype(np.float32)


def _standardized(model, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        enc, _ = model.encode(feats[None], torch.tensor([feats.shape[0]]))
    enc = enc[0]
    mu, sd = enc.mean(0), enc.std(0) + 1e-3
    return enc, mu, sd


def make_emitting_transducer(model, feats: torch.Tensor, gain: float = 8.0, quantile: float = 0.9,
                             beta: float = 0.5, seed: int = 1) -> None:
    """Set the prediction network and joint of ``model`` (stateless predictor with
    context_size=1, pred_dim=V, joint_dim=2V, relu) so that it emits tokens like a trained
    model, with clear margins, and never more than one symbol per frame.

    Token ``v`` has two joint units fed by the same projection ``a_v(t)`` of the (standardized)
    encoder frame: ``A_v``, also fed ``-1000`` when ``v`` was the last token, and ``B_v``, not.
    ``logit_v = relu(A_v) - sum_{u != v} relu(B_u)``, ``logit_blank = beta``. After a token
    at frame t every logit at t is <= 0 < beta: the next symbol at t is blank (so greedy search
    with any max_symbols gives the same result), and a token never repeats back to back.
    ``a_v`` crosses 0 on the top ``1 - quantile`` of frames of ``feats``."""
    head = model.transducer
    V = head.vocab_size
    assert head.cfg.predictor == "stateless" and head.predictor.context_size == 1
    assert head.predictor.output_dim == V and head.joint.enc_proj.out_features == 2 * V
    assert head.cfg.activation == "relu"
    enc, mu, sd = _standardized(model, feats)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(V, enc.shape[1], generator=g)
    u = u / u.norm(dim=1, keepdim=True) / sd  # directions in standardized space
    proj = (enc - mu) @ u.T  # (T', V)
    thr = torch.quantile(proj, quantile, dim=0)
    w = gain * u
    b = -gain * (u @ mu + thr)
    w[:2], b[:2] = 0.0, -10 * gain  # blank and <unk> units never fire
    with torch.no_grad():
        head.predictor.embed.weight.copy_(torch.eye(V))
        jp = head.joint
        jp.enc_proj.weight.copy_(torch.cat([w, w]))
        jp.enc_proj.bias.copy_(torch.cat([b, b]))
        jp.pred_proj.weight.copy_(torch.cat([-1000 * torch.eye(V), torch.zeros(V, V)]))
        jp.pred_proj.bias.zero_()
        out = torch.cat([torch.eye(V), torch.eye(V) - 1], dim=1)  # A_v - sum_{u != v} B_u
        out[0] = 0.0
        jp.out.weight.copy_(out)
        jp.out.bias.zero_()
        jp.out.bias[0] = beta


def make_emitting_ctc(model, feats: torch.Tensor, gain: float = 6.0, blank_share: float = 0.5, seed: int = 2) -> None:
    """Set the CTC head so that non-blank tokens win on about ``1 - blank_share`` of the frames
    of ``feats``, with clear margins (random directions in standardized encoder space)."""
    proj = model.ctc.proj
    V, D = proj.weight.shape
    enc, mu, sd = _standardized(model, feats)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(V, D, generator=g)
    u = u / u.norm(dim=1, keepdim=True) / sd
    w, b = gain * u, -gain * (u @ mu)
    w[0], w[1], b[1] = 0.0, 0.0, -100.0  # blank: a constant; <unk>: never
    best = ((enc @ w.T) + b)[:, 2:].max(dim=1).values.sort().values
    # halfway between two frames' best scores: a quantile can equal one frame's score, a tie
    # that float rounding (any change in an exported graph) could break either way
    k = min(max(int(blank_share * len(best)), 1), len(best) - 1)
    b[0] = (best[k - 1] + best[k]) / 2
    with torch.no_grad():
        proj.weight.copy_(w)
        proj.bias.copy_(b)
