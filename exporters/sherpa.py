"""Graphs and metadata in the contracts that sherpa-onnx's online recognizers load unmodified.

Contracts (read in sherpa-onnx's ``sherpa-onnx/csrc``; see ``exporters/README.md``):

- **transducer** (``OnlineRecognizer.from_transducer``): sherpa picks its icefall-style
  implementation when ``decoder.onnx`` has exactly one output. That decoder is *stateless*:
  ``y (N, context_size) int64 -> decoder_out (N, J)``, the last ``context_size`` tokens with
  ``-1, ..., -1, 0`` (blank = 0) at the start of a stream. The joiner maps ``(encoder_out
  frame (N, D), decoder_out (N, J)) -> logits (N, V)``. A decoder with more outputs selects
  NeMo's implementation, which computes librosa-style mel features and wants the blank last,
  so an LSTM prediction network cannot be reproduced there (see the README).
  The encoder's ``model_type`` metadata selects the state layout:

  * ``conformer`` (``OnlineConformerTransducerModel``): inputs ``x (N, T, F)``,
    ``cached_attn (layers, left_context, N, encoder_dim)``, ``cached_conv (layers,
    cnn_module_kernel - 1, N, encoder_dim)``, ``processed_frames (N,)`` int64 (feature frames
    consumed before this window); outputs ``encoder_out``, the two new caches. Our Conformer's
    feature cache (``causal_subsampling=True``) has no slot there, so it travels in extra rows
    of ``cached_conv`` (layer 0), and ``cnn_module_kernel`` counts them (the runtime only uses
    that number to shape the zero state).
  * ``lstm`` (``OnlineLstmTransducerModel``): inputs ``x``, ``h (layers, N, d_model)``, ``c
    (layers, N, rnn_hidden_size)``; outputs ``encoder_out``, new ``h``, new ``c``. Our LSTM's
    state is exactly that; the other causal families (QuartzNet, Citrinet, SSM) pack all their
    state tensors into ``h`` of shape ``(1, N, S)`` (``c`` is a ``(1, N, 1)`` placeholder).

- **CTC** (``OnlineRecognizer.from_zipformer2_ctc``, ``OnlineZipformer2CtcModel``): inputs
  ``x (N, T, F)`` and, per encoder layer, six caches of shapes set by metadata (batch on axis
  1 for the first four, 0 for the two conv caches), then ``embed_states (N, 128, 3, 19)`` and
  ``processed_lens (N,)`` int64; outputs ``log_probs (N, T', V)`` and the new states. One
  pseudo-layer suffices: its key cache ``(1, N, S)`` carries all our float state packed, and
  ``processed_lens`` the Conformer's ``processed_frames``. Every family fits. The blank is read
  from ``<blk>`` in tokens.txt. (The NeMo CTC contract, ``from_nemo_ctc``, would fit the states
  too, but sherpa-onnx 2.0.1 computes NeMo's librosa-style features for it; checked with a
  probe graph whose log-probs are its input features.)

sherpa-onnx feeds windows of ``T`` frames advanced by ``decode_chunk_len`` (``window_size`` /
``chunk_shift`` for NeMo) and only full windows (``IsReady``: ``processed + T < ready``), so
these graphs have no ``x_lens`` input; a stream must end with some silence (tail padding), as
in sherpa-onnx's examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .graphs import Normalizer, StatePacker, state_batch_axes

__all__ = ["SherpaPlan", "plan", "ConformerEncoderGraph", "LstmEncoderGraph", "Zipformer2CtcGraph", "RECOGNIZER_FEATURES"]

# FeatureConfig fields -> what sherpa-onnx's Python API lets a caller set. from_transducer
# takes sample_rate, feature_dim, low_freq, high_freq, dither, snip_edges; from_zipformer2_ctc only
# sample_rate and feature_dim (the rest stay at sherpa's FeatureExtractorConfig defaults).
# Fields not listed are fixed in sherpa-onnx at these values.
SHERPA_FIXED = {"frame_length": 0.025, "frame_shift": 0.010, "preemph_coeff": 0.97, "window_type": "povey"}
SHERPA_DEFAULTS = {"low_freq": 20.0, "high_freq": -400.0, "dither": 0.0, "snip_edges": False}
RECOGNIZER_FEATURES = {
    "transducer": ("sample_rate", "num_mel_bins", "low_freq", "high_freq", "dither", "snip_edges"),
    "ctc": ("sample_rate", "num_mel_bins"),
}


@dataclass
class SherpaPlan:
    """What can be exported for sherpa-onnx, and why not where it cannot."""

    transducer: str | None  # "conformer" or "lstm" (sherpa's model_type), or None
    transducer_reason: str  # why not (empty when possible)
    ctc: bool
    ctc_reason: str
    transducer_kwargs: dict
    ctc_kwargs: dict
    offline_features_ok: bool = False  # the offline APIs set only sample_rate and feature_dim


def _feature_problems(features, kind: str) -> list[str]:
    settable = RECOGNIZER_FEATURES[kind]
    out = []
    for k, v in SHERPA_FIXED.items():
        if getattr(features, k) != v:
            out.append(f"FeatureConfig.{k}={getattr(features, k)!r} (sherpa-onnx always uses {v!r})")
    for k, v in SHERPA_DEFAULTS.items():
        if k not in settable and getattr(features, k) != v:
            out.append(f"FeatureConfig.{k}={getattr(features, k)!r} (sherpa-onnx's {kind} API fixes it at {v!r})")
    return out


def _kwargs(features, kind: str) -> dict:
    kw = {"sample_rate": features.sample_rate, "feature_dim": features.num_mel_bins}
    if kind == "transducer":
        kw.update(low_freq=features.low_freq, high_freq=features.high_freq, dither=features.dither,
                  snip_edges=features.snip_edges)
    return kw


def plan(model) -> SherpaPlan:
    enc, head = model.encoder, model.transducer
    t_type, t_reason = None, ""
    if head is None:
        t_reason = "the model has no transducer head"
    elif head.durations is not None:
        t_reason = ("TDT: sherpa-onnx's online transducer search advances one frame per symbol and "
                    "reads only the first vocab_size logits (no durations); its TDT support is the "
                    "offline NeMo recognizer, which computes NeMo's librosa-style features")
    elif head.cfg.predictor != "stateless":
        t_reason = ("LSTM prediction network: sherpa-onnx's icefall-style online transducer needs a "
                    "stateless decoder (one output, the last context_size tokens); a decoder with "
                    "state outputs selects its NeMo implementation, which computes librosa-style mel "
                    "features (hann window, no DC removal) and requires <blk> as the last token, so "
                    "our kaldi-fbank model cannot reproduce its transcripts there; train with "
                    "transducer.predictor=stateless for sherpa-onnx")
    else:
        probs = _feature_problems(model.features, "transducer")
        if probs:
            t_reason = "features sherpa-onnx cannot compute: " + "; ".join(probs)
        else:
            t_type = "conformer" if enc.family == "conformer" else "lstm"
    c_ok, c_reason = model.ctc is not None, "" if model.ctc is not None else "the model has no CTC head"
    if c_ok:
        probs = _feature_problems(model.features, "ctc")
        if probs:
            c_ok, c_reason = False, "features sherpa-onnx's CTC API cannot set: " + "; ".join(probs)
    return SherpaPlan(t_type, t_reason, c_ok, c_reason, _kwargs(model.features, "transducer"),
                      _kwargs(model.features, "ctc"), not _feature_problems(model.features, "ctc"))


def _full_lens(ref: Tensor, window: int) -> Tensor:
    """(N,) int64 filled with ``window``, N taken from ``ref`` (any tensor with batch first)."""
    return torch.zeros_like(ref[:, 0, 0], dtype=torch.int64) + window


class ConformerEncoderGraph(nn.Module):
    """sherpa-onnx ``conformer``: forward(x (N, T, F), cached_attn, cached_conv,
    processed_frames (N,)) -> (encoder_out, new_cached_attn, new_cached_conv)."""

    def __init__(self, model) -> None:
        super().__init__()
        enc = model.encoder
        self.norm = Normalizer(model)
        self.encoder = enc
        cfg = enc.config
        p = enc.streaming_params()
        self.window, self.sub = p["window"], enc.subsampling
        self.left = enc.context[0]
        self.k1 = cfg.conv_kernel - 1
        self.d = cfg.d_model
        self.layers = cfg.num_layers
        self.feat_shape = (enc.subsample.pad, cfg.input_dim) if cfg.causal_subsampling else None
        feat = math.prod(self.feat_shape) if self.feat_shape else 0
        self.extra = -(-feat // self.d)  # rows of layer 0 holding the feature cache
        self.attn_rows = max(1, self.left)  # sherpa cannot hold a zero-size state
        self.conv_rows = max(1, self.k1 + self.extra)

    def metadata(self) -> dict:
        return {
            "model_type": "conformer",
            "num_encoder_layers": self.layers,
            "T": self.window,
            "decode_chunk_len": self.encoder.streaming_params()["shift"],
            "left_context": self.attn_rows,
            "encoder_dim": self.d,
            "pad_length": self.encoder.streaming_params()["pad_length"],
            "cnn_module_kernel": self.conv_rows + 1,
        }

    def state_shapes(self) -> list[tuple[int, ...]]:
        return [(self.layers, self.attn_rows, 1, self.d), (self.layers, self.conv_rows, 1, self.d)]

    def forward(self, x: Tensor, cached_attn: Tensor, cached_conv: Tensor, processed_frames: Tensor):
        n = x.size(0)
        lens = _full_lens(x, self.window)
        attn = cached_attn[:, : self.left]
        conv = cached_conv[:, : self.k1]
        state = [attn, conv, torch.div(processed_frames, self.sub, rounding_mode="floor")]
        if self.feat_shape is not None:
            rows = cached_conv[0, self.k1 : self.k1 + self.extra]  # (E, N, d)
            flat = rows.permute(1, 0, 2).reshape(n, self.extra * self.d)
            state.append(flat[:, : math.prod(self.feat_shape)].reshape(n, *self.feat_shape))
        y, _, new = self.encoder._forward_chunk(self.norm(x), lens, state)
        new_attn = new[0] if self.left > 0 else torch.zeros_like(cached_attn)
        parts = [new[1]]
        if self.feat_shape is not None:
            flat = new[3].reshape(n, -1)
            flat = torch.cat([flat, x.new_zeros((n, self.extra * self.d - flat.size(1)))], 1)
            rows = flat.reshape(n, self.extra, self.d).permute(1, 0, 2)[None]  # (1, E, N, d)
            rest = x.new_zeros((self.layers - 1, self.extra, n, self.d))
            parts.append(torch.cat([rows, rest], 0))
        new_conv = torch.cat(parts, 1)
        if self.k1 + self.extra == 0:
            new_conv = torch.zeros_like(cached_conv)
        return y, new_attn, new_conv


class LstmEncoderGraph(nn.Module):
    """sherpa-onnx ``lstm``: forward(x (N, T, F), h, c) -> (encoder_out, new_h, new_c). Our
    LSTM uses h, c as they are; other families pack their state into h (1, N, S)."""

    def __init__(self, model) -> None:
        super().__init__()
        enc = model.encoder
        self.norm = Normalizer(model)
        self.encoder = enc
        self.window = enc.streaming_params()["window"]
        self.native = enc.family == "lstm"
        if not self.native:
            spec = enc.state_spec(1)
            if any(dt != torch.float32 for _, dt in spec):
                raise ValueError(f"{enc.family}: only float32 states can be packed for sherpa-onnx's lstm contract")
            self.packer = StatePacker([s for s, _ in spec], state_batch_axes(enc))

    def metadata(self) -> dict:
        p = self.encoder.streaming_params()
        shapes = self.state_shapes()
        return {
            "model_type": "lstm",
            "num_encoder_layers": shapes[0][0],
            "T": p["window"],
            "decode_chunk_len": p["shift"],
            "d_model": shapes[0][2],
            "rnn_hidden_size": shapes[1][2],
        }

    def state_shapes(self) -> list[tuple[int, ...]]:
        if self.native:
            return [tuple(s) for s, _ in self.encoder.state_spec(1)]
        return [(1, 1, self.packer.width), (1, 1, 1)]

    def forward(self, x: Tensor, h: Tensor, c: Tensor):
        lens = _full_lens(x, self.window)
        if self.native:
            y, _, new = self.encoder._forward_chunk(self.norm(x), lens, [h, c])
            return y, new[0], new[1]
        state = self.packer.unpack(h[0])
        y, _, new = self.encoder._forward_chunk(self.norm(x), lens, state)
        return y, self.packer.pack(new)[None], torch.zeros_like(c)


class Zipformer2CtcGraph(nn.Module):
    """sherpa-onnx ``zipformer2_ctc`` (``OnlineZipformer2CtcModel``) with one pseudo-layer whose
    state slots carry ours: forward(x (N, T, F), cached_key (1, N, S), cached_nonlin_attn
    (1, N, 1, 3), cached_val1 (1, N, 1), cached_val2 (1, N, 1), cached_conv1 (N, 4, 1),
    cached_conv2 (N, 4, 1), embed_states (N, 128, 3, 19), processed_lens (N,)) ->
    (log_probs (N, chunk, V), the eight new states). ``cached_key`` holds every float state
    of our encoder packed (``S`` wide); ``processed_lens`` the Conformer's ``processed_frames``;
    the other slots are placeholders that sherpa-onnx's state stacking requires."""

    SLOTS = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2", "cached_conv1",
             "cached_conv2", "embed_states", "processed_lens")
    BATCH_AXES = (1, 1, 1, 1, 0, 0, 0, 0)
    DIM = 4  # encoder_dims: 3 * DIM / 4 = 3 wide nonlin-attention slot, DIM-wide conv slots

    def __init__(self, model) -> None:
        super().__init__()
        enc = model.encoder
        self.norm = Normalizer(model)
        self.encoder = enc
        self.ctc = model.ctc
        self.window = enc.streaming_params()["window"]
        spec = enc.state_spec(1)
        axes = state_batch_axes(enc)
        self.float_idx = [i for i, (_, dt) in enumerate(spec) if dt.is_floating_point]
        self.int_idx = [i for i, (_, dt) in enumerate(spec) if not dt.is_floating_point]
        if len(self.int_idx) > 1 or any(len(spec[i][0]) != 1 for i in self.int_idx):
            raise ValueError(f"{enc.family}: more integer state than sherpa-onnx's processed_lens holds")
        self.packer = StatePacker([spec[i][0] for i in self.float_idx], [axes[i] for i in self.float_idx])

    def metadata(self) -> dict:
        p = self.encoder.streaming_params()
        return {
            "encoder_dims": str(self.DIM),
            "query_head_dims": str(self.packer.width),
            "value_head_dims": "1",
            "num_heads": "1",
            "num_encoder_layers": "1",
            "cnn_module_kernels": "2",
            "left_context_len": "1",
            "T": p["window"],
            "decode_chunk_len": p["shift"],
        }

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Batch-1 shapes of the eight state inputs."""
        d = self.DIM
        return [(1, 1, self.packer.width), (1, 1, 1, 3 * d // 4), (1, 1, 1), (1, 1, 1), (1, d, 1), (1, d, 1),
                (1, 128, 3, 19), (1,)]

    def forward(self, x: Tensor, cached_key: Tensor, cached_nonlin_attn: Tensor, cached_val1: Tensor,
                cached_val2: Tensor, cached_conv1: Tensor, cached_conv2: Tensor, embed_states: Tensor,
                processed_lens: Tensor):
        floats = self.packer.unpack(cached_key[0])
        state: list[Tensor] = [None] * (len(self.float_idx) + len(self.int_idx))  # type: ignore[list-item]
        for i, t in zip(self.float_idx, floats):
            state[i] = t
        for i in self.int_idx:
            state[i] = processed_lens
        y, _, new = self.encoder._forward_chunk(self.norm(x), _full_lens(x, self.window), state)
        packed = self.packer.pack([new[i] for i in self.float_idx])[None]
        new_len = new[self.int_idx[0]] if self.int_idx else processed_lens + 0
        rest = [t * 1.0 for t in (cached_nonlin_attn, cached_val1, cached_val2, cached_conv1, cached_conv2, embed_states)]
        return (self.ctc(y), packed, *rest, new_len)
