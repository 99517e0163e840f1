"""Cache-aware streaming FastConformer with multi-lookahead training.

Following the Stateful Conformer (Noroozi et al. 2023) and FastConformer:

- 8x (or 4x/2x) depthwise-separable striding subsampling (``subsampling.ConvSubsampling``);
- ``num_layers`` macaron blocks: ½ FF, relative-position multi-head self-attention, causal
  depthwise convolution module (LayerNorm, not BatchNorm), ½ FF, final LayerNorm;
- **chunked limited attention**: with context ``(left, right)`` the encoder frames are cut
  into chunks of ``C = right + 1``; every query of chunk ``k`` attends to the keys
  ``[k*C - left, (k+1)*C)``: ``left`` frames of the past plus its own chunk, so the first
  frame of a chunk looks ``right`` frames ahead (``right * 80 ms`` at 8x, NeMo's
  ``att_context_size`` in ``chunked_limited`` mode). The whole-utterance forward computes
  exactly these blocks, so streaming (one chunk per call, ``left`` frames cached) equals it.
- **multi-lookahead**: ``att_contexts`` lists ``[left, right]`` pairs and ``att_context_probs``
  their probabilities; every training forward samples one. At inference one model serves every
  context: ``encoder.set_context(left, right)`` (any non-negative pair, normally one of the
  trained ones; the default is ``inference_context`` or the first trained one).
  Look-ahead at 8x: right=0 -> 0 ms, 1 -> 80 ms, 6 -> 480 ms, 13 -> 1040 ms.

Streaming state (the cache layout) and why
------------------------------------------
``init_state(B)`` returns, in this order::

    attn_cache       (num_layers, left, B, d_model)       float  normed attention inputs
    conv_cache       (num_layers, kernel - 1, B, d_model) float  depthwise-conv inputs
    processed_frames (B,)                                 int64  encoder frames seen so far
    feature_cache    (B, 2*subsampling - 2, input_dim)    float  only if causal_subsampling

The first three are sherpa-onnx's ``OnlineConformerTransducerModel`` contract (icefall
streaming Conformer, read in sherpa-onnx/csrc/online-conformer-transducer-model.cc): its
encoder takes ``x (N, T, 80)``, ``cached_attn (layers, left_context, N, dim)``,
``cached_conv (layers, cnn_module_kernel - 1, N, dim)`` and ``processed_frames (N,)`` and
returns ``encoder_out`` plus the two new caches; the batch axis is 2 so the runtime can
concatenate/unbind streams along it. The attention cache holds the layer-normed attention
*input* (keys and values are recomputed from it), which keeps it at ``dim`` wide as sherpa
expects. ``processed_frames`` masks cache slots that precede the stream's start.

The subsampling needs ``pad = 2*subsampling - 2`` feature frames of context (14 at 8x):

- ``causal_subsampling=True`` (default, lowest latency): output frame ``w`` reads features
  ``[8w - 14, 8w]``, the stream starts on 14 zero frames, and the last 14 frames travel in
  ``feature_cache``. ``window == shift``. An exporter targeting sherpa-onnx must carry this
  fourth tensor itself (sherpa's contract has no slot for it).
- ``causal_subsampling=False``: output ``w`` reads ``[8w, 8w + 14]``; each window is
  ``shift + 14`` frames and overlaps the next by 14 (sherpa's ``T = decode_chunk_len +
  pad_length``, ``pad_length = 14``), no feature cache, exactly the three-tensor contract, at
  140 ms extra latency.

Every operation is either per-frame, causal, or a masked attention over the blocks above, so
padded frames never reach valid outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.config import check_dropout
from asr.encoders.base import StreamingEncoder, last_frames, mask_frames
from asr.encoders.subsampling import ConvSubsampling

__all__ = ["ConformerConfig", "ConformerEncoder", "query_group"]


@dataclass
class ConformerConfig:
    input_dim: int = 80
    d_model: int = 256
    num_layers: int = 16
    num_heads: int = 4
    ff_expansion: int = 4
    conv_kernel: int = 9
    subsampling: int = 8
    subsampling_channels: int = 256
    causal_subsampling: bool = True
    # [left, right] in encoder frames; right = look-ahead, chunk = right + 1.
    att_contexts: list[list[int]] = field(default_factory=lambda: [[70, 0], [70, 1], [70, 6], [70, 13]])
    att_context_probs: list[float] | None = None  # None: uniform
    inference_context: list[int] | None = None  # None: att_contexts[0]
    dropout: float = 0.1
    att_dropout: float = 0.1

    def __post_init__(self) -> None:
        for k in ("input_dim", "d_model", "num_layers", "num_heads", "ff_expansion", "subsampling_channels"):
            if getattr(self, k) < 1:
                raise ValueError(f"ConformerConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"ConformerConfig.d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.conv_kernel < 1:
            raise ValueError(f"ConformerConfig.conv_kernel must be >= 1, got {self.conv_kernel}")
        check_dropout(self, "dropout", "att_dropout")
        if not self.att_contexts:
            raise ValueError("ConformerConfig.att_contexts must list at least one [left, right] pair")
        for c in list(self.att_contexts) + ([] if self.inference_context is None else [self.inference_context]):
            _check_context(c)
        if self.att_context_probs is not None:
            p = self.att_context_probs
            if len(p) != len(self.att_contexts) or not all(math.isfinite(v) and v >= 0 for v in p) or sum(p) <= 0:
                raise ValueError(
                    "ConformerConfig.att_context_probs must give one non-negative probability per "
                    f"att_contexts entry ({len(self.att_contexts)}), got {p}"
                )


#: Target query-group length (encoder frames) of the whole-utterance forward. Each query of a
#: group scores ``left + G`` keys and ``left + 2G - 1`` distances, so per query the cost grows
#: with G, while many tiny groups pay per-group overhead. Measured (Conformer d144 x 8,
#: left 128, 60 s batches, forward + backward, 2 threads): G = 8 / 16 / 32 / ~left cost
#: 0.61 / 0.56 / 0.57 / 1.06 s at 138 encoder frames per utterance and 0.63 / 0.56 / 0.54 /
#: 0.71 s at 250 frames.
GROUP_FRAMES = 16
#: Encoder frames of a long whole-utterance forward run through all layers at once (whole query
#: groups; longer inputs go through in pieces, each layer's caches carried between them).
PIECE_FRAMES = 1024


def query_group(left: int, chunk: int, frames: int | None = None) -> int:
    """The whole-utterance forward's query-group size: the multiple of ``chunk`` nearest
    above :data:`GROUP_FRAMES`, and no longer than ``frames`` (rounded up to the chunk) when
    given. Any multiple of the chunk gives the same outputs; this one is the fastest measured."""
    k = max(1, -(-GROUP_FRAMES // chunk))
    if frames is not None:
        k = min(k, max(1, -(-frames // chunk)))
    return chunk * k


def _check_context(c: Any) -> tuple[int, int]:
    if (
        not isinstance(c, (list, tuple))
        or len(c) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in c)
    ):
        raise ValueError(f"an attention context must be [left, right] with non-negative ints, got {c!r}")
    return int(c[0]), int(c[1])


def rel_positions(num: int, dim: int, start: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Sinusoidal embeddings of the relative distances ``start, start+1, ..., start+num-1``
    -> (num, dim): sin in the even columns, cos in the odd ones. Built from Python ints only
    (no in-place writes), so an ONNX export folds it into one constant."""
    d = torch.arange(start, start + num, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angle = d * freq  # (num, ceil(dim / 2))
    pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(num, -1)[:, :dim]
    return pe.to(dtype)


class FeedForward(nn.Module):
    """x (B, T, D) -> (B, T, D): LayerNorm, Linear, SiLU, Dropout, Linear, Dropout."""

    def __init__(self, d: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, d * expansion),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(d * expansion, d),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ChunkedRelPosAttention(nn.Module):
    """Transformer-XL relative-position attention, computed over query groups.

    Queries come in groups of ``G`` consecutive frames (G a multiple of the chunk size C);
    a group sees the ``W = left + G`` keys ending with its own last frame, and the mask
    narrows each query to ``[chunk_start - left, chunk_start + C)``. Streaming uses ``G = C``
    (one chunk, ``left`` cached frames); the whole-utterance forward uses short groups
    (:func:`query_group`, about 16 frames), so time and memory stay linear in T, close to the
    banded minimum, without a T x T matrix.
    """

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.pos = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d)
        self.bias_u = nn.Parameter(torch.zeros(heads, self.dk))
        self.bias_v = nn.Parameter(torch.zeros(heads, self.dk))
        nn.init.xavier_uniform_(self.bias_u)
        nn.init.xavier_uniform_(self.bias_v)
        self.drop = nn.Dropout(dropout)

    def _blocks(self, t: Tensor, n: int, w: int, group: int) -> Tensor:
        """(B, left + n*G, D) -> overlapping windows (B, n, H, dk, W), W = left + G."""
        t = t.reshape(-1, w - group + n * group, self.h, self.dk)
        if n == 1:  # streaming: one window, no unfold (simpler ONNX graph)
            return t.permute(0, 2, 3, 1).unsqueeze(1)
        return t.unfold(1, w, group)

    def forward(self, x: Tensor, seq: Tensor, win: "AttentionWindow") -> Tensor:
        """x (B, n*G, D) queries; seq (B, left + n*G, D) keys/values (left memory first);
        ``win`` the geometry, mask and position tables shared by all layers -> (B, n*G, D).

        Every reshape names all sizes but the batch (Python ints from ``win``), so a traced
        streaming graph has no shape arithmetic left in it."""
        n, group, left = win.n, win.group, win.left
        w, r, d = left + group, left + 2 * group - 1, self.h * self.dk
        q = self.q(x).reshape(-1, n, group, self.h, self.dk)
        k = self._blocks(self.k(seq), n, w, group)  # (B, n, H, dk, W)
        v = self._blocks(self.v(seq), n, w, group)
        content = torch.einsum("bnihd,bnhdj->bnhij", q + self.bias_u, k)  # (B, n, H, G, W)
        # query i -> key j of a group is at distance i - j + left in [-(G-1), left + G - 1]
        pe = self.pos(win.pe).reshape(r, self.h, self.dk)
        by_distance = torch.einsum("bnihd,rhd->bnhir", q + self.bias_v, pe)  # (B, n, H, G, R)
        # win.pe runs from the largest distance down, so column c of query i's row holds the
        # distance i - j + left for key j = c - (G - 1 - i): a row shifted left by G - 1 - i.
        # Padded to R + 1 columns and read flat from G - 1 in rows of R, row i starts at
        # column G - 1 - i of its own padded row (views and one pad: no gather, no scatter back).
        flat = F.pad(by_distance, (0, 1)).reshape(-1, n, self.h, group * (r + 1))
        position = flat[..., group - 1 : group - 1 + group * r].reshape(-1, n, self.h, group, r)[..., :w]
        scores = (content + position) / math.sqrt(self.dk)
        scores = scores.masked_fill(win.blocked, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1) * win.visible  # rows with no visible key become 0
        out = torch.einsum("bnhij,bnhdj->bnihd", self.drop(attn), v)
        return self.out(out.reshape(-1, n * group, d))


class AttentionWindow(NamedTuple):
    """What every layer of one forward shares (built once by ``ConformerEncoder._window``):
    ``n`` query groups of ``group`` frames, each seeing ``left + group`` keys; ``visible``
    (B, n, 1, G, W) float 1/0 and ``blocked`` its boolean complement; ``pe`` (R, D) the
    sinusoids of the R = left + 2G - 1 distances, from the largest (left + G - 1) down."""

    n: int
    group: int
    left: int
    visible: Tensor
    blocked: Tensor
    pe: Tensor


class ConvModule(nn.Module):
    """Pointwise + GLU, causal depthwise conv (kernel K), LayerNorm, SiLU, pointwise."""

    def __init__(self, d: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, kernel, groups=d)
        self.dw_norm = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.kernel = kernel

    def forward(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, T, D); cache (B, D, K-1) or None (zeros: utterance start)
        -> (B, T, D), new cache (B, D, K-1)."""
        h = F.glu(self.pw1(self.norm(x)), dim=-1).transpose(1, 2)  # (B, D, T)
        if cache is None:
            h = F.pad(h, (self.kernel - 1, 0))
        else:
            h = torch.cat([cache, h], dim=2)
        new_cache = last_frames(h, self.kernel - 1, dim=2)
        h = self.dw(h).transpose(1, 2)
        return self.drop(self.pw2(F.silu(self.dw_norm(h)))), new_cache


class ConformerLayer(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ff_expansion, cfg.dropout)
        self.att_norm = nn.LayerNorm(d)
        self.att = ChunkedRelPosAttention(d, cfg.num_heads, cfg.att_dropout)
        self.att_drop = nn.Dropout(cfg.dropout)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ff_expansion, cfg.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(
        self, x: Tensor, win: AttentionWindow, att_cache: Tensor | None, conv_cache: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, n*G, D); att_cache (B, left, D) or None (zeros); conv_cache (B, D, K-1) or
        None -> x, new att cache (B, left, D), new conv cache."""
        x = x + 0.5 * self.ff1(x)
        h = self.att_norm(x)
        if att_cache is None:
            att_cache = h.new_zeros(h.size(0), win.left, h.size(2))
        seq = torch.cat([att_cache, h], dim=1)
        x = x + self.att_drop(self.att(h, seq, win))
        c, new_conv = self.conv(x, conv_cache)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.norm(x), last_frames(seq, win.left, dim=1), new_conv


class ConformerEncoder(StreamingEncoder):
    """Cache-aware FastConformer. x (B, T, F) -> y (B, ceil(T/s), d_model).

    Pick the attention context at inference with ``set_context(left, right)`` (encoder
    frames); ``streaming_params()`` and ``init_state()`` follow the current context.
    """

    family = "conformer"

    def __init__(self, config: ConformerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ConformerConfig()
        self.input_dim = cfg.input_dim
        self.output_dim = cfg.d_model
        self.subsampling = cfg.subsampling
        self.subsample = ConvSubsampling(
            cfg.input_dim, cfg.d_model, cfg.subsampling, cfg.subsampling_channels, cfg.causal_subsampling
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_layers))
        self.contexts = [_check_context(c) for c in cfg.att_contexts]
        probs = cfg.att_context_probs or [1.0] * len(self.contexts)
        self.register_buffer("context_probs", torch.tensor(probs, dtype=torch.float64) / sum(probs), persistent=False)
        self.context = _check_context(cfg.att_contexts[0] if cfg.inference_context is None else cfg.inference_context)

    # ---- context selection ------------------------------------------------------------
    def set_context(self, left: int, right: int) -> None:
        """Inference attention context in encoder frames: ``left`` past frames, look-ahead
        ``right`` (chunk of ``right + 1`` frames). Changes streaming_params() and state shapes."""
        self.context = _check_context([left, right])

    def set_chunk_size(self, chunk_size: int) -> None:
        """The Conformer's chunk is part of its attention context: use ``set_context``."""
        raise ValueError(
            "the Conformer's chunk size is right_context + 1 and changes its outputs; "
            "call set_context(left, right) instead"
        )

    def _active_context(self) -> tuple[int, int]:
        """Training: one of ``att_contexts`` (drawn per step when there are several); otherwise
        the inference context (``inference_context``, ``set_context``)."""
        if not self.training:
            return self.context
        if len(self.contexts) == 1:  # not self.context: a single-context model trained at its inference context
            return self.contexts[0]
        return self.contexts[int(torch.multinomial(self.context_probs, 1))]

    def streaming_params(self) -> dict[str, Any]:
        left, right = self.context
        shift = (right + 1) * self.subsampling
        pad = 0 if self.config.causal_subsampling else self.subsample.pad
        p = self._base_params(window=shift + pad, shift=shift)
        p.update(
            left_context=left,
            right_context=right,
            attention_lookahead_ms=right * self.subsampling * p["frame_shift_ms"],
            pad_length=pad,
        )
        return p

    def state_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        cfg, dt = self.config, self._dtype()
        left = self.context[0]
        spec = [
            ((cfg.num_layers, left, batch_size, cfg.d_model), dt),
            ((cfg.num_layers, cfg.conv_kernel - 1, batch_size, cfg.d_model), dt),
            ((batch_size,), torch.int64),
        ]
        if cfg.causal_subsampling:
            spec.append(((batch_size, self.subsample.pad, cfg.input_dim), dt))
        return spec

    # ---- forward ------------------------------------------------------------------------
    @staticmethod
    def _attention_mask(start: Tensor, end: Tensor, n: int, group: int, left: int, chunk: int) -> Tensor:
        """Which keys each query sees. Query i of group k is frame ``q = start + k*G + i`` of
        chunk ``[c, c + C)``, ``c = start + floor((k*G + i) / C) * C``; key j of that group is
        frame ``p = start + k*G - left + j``. Visible iff ``0 <= p < end`` and
        ``c - left <= p < c + C``. start, end (B,) -> (B, n, G, left + G) bool."""
        dev = start.device
        rel_q = torch.arange(n, device=dev)[:, None] * group + torch.arange(group, device=dev)[None, :]  # (n, G)
        c = torch.div(rel_q, chunk, rounding_mode="floor") * chunk  # (n, G) chunk start, relative
        rel_p = (
            torch.arange(n, device=dev)[:, None] * group - left + torch.arange(left + group, device=dev)[None, :]
        )  # (n, W)
        p = start[:, None, None] + rel_p[None, :, :]  # (B, n, W)
        in_stream = (p >= 0) & (p < end[:, None, None])  # (B, n, W)
        in_chunk = (rel_p[:, None, :] >= c[:, :, None] - left) & (rel_p[:, None, :] < c[:, :, None] + chunk)
        return in_stream[:, :, None, :] & in_chunk[None]

    def _window(self, start: Tensor, end: Tensor, n: int, group: int, left: int, chunk: int, dtype) -> AttentionWindow:
        """The :class:`AttentionWindow` of one forward: streams at frames ``[start, end)`` (B,)."""
        visible = self._attention_mask(start, end, n, group, left, chunk)[:, :, None]
        dev = start.device
        pe = rel_positions(left + 2 * group - 1, self.config.d_model, -(group - 1), dev, dtype).flip(0)
        return AttentionWindow(n, group, left, visible.to(dtype), ~visible, pe)

    def _forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        left, right = self._active_context()
        chunk = right + 1
        x = self.drop(self.subsample(mask_frames(x, x_lens)))  # (B, T', D)
        y_lens = self.output_lengths(x_lens)
        return self._layers_whole(x, y_lens, query_group(left, chunk, x.size(1)), left, chunk), y_lens

    def _layers_whole(self, x: Tensor, y_lens: Tensor, group: int, left: int, chunk: int) -> Tensor:
        """Every layer over whole utterances: subsampled x (B, T', D) is padded to whole query
        groups of ``group`` frames, run with zero caches, and cut back to T' frames. Shared with
        the offline ONNX graph (``exporters.graphs.conformer_offline``)."""
        t = x.size(1)
        n = (t + group - 1) // group
        x = F.pad(x, (0, 0, 0, n * group - t))
        per_piece = max(1, PIECE_FRAMES // group)
        if n <= per_piece or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            win = self._window(torch.zeros_like(y_lens), y_lens, n, group, left, chunk, x.dtype)
            for layer in self.layers:
                x, _, _ = layer(x, win, None, None)
            return x[:, :t]
        # A long input in pieces of per_piece groups, every layer's caches carried from one
        # piece to the next as streaming carries them: the same blocks, so the same outputs,
        # with activations held for one piece at a time (30 minutes of the mini Conformer in one
        # go peaked 1.1 GB higher).
        att: list[Tensor | None] = [None] * len(self.layers)
        conv: list[Tensor | None] = [None] * len(self.layers)
        out = []
        for g in range(0, n, per_piece):
            m = min(n, g + per_piece) - g
            h = x[:, g * group:(g + m) * group]
            win = self._window(torch.full_like(y_lens, g * group), y_lens, m, group, left, chunk, x.dtype)
            for i, layer in enumerate(self.layers):
                h, att[i], conv[i] = layer(h, win, att[i], conv[i])
            out.append(h)
        return torch.cat(out, 1)[:, :t]

    def _forward_chunk(
        self, x: Tensor, x_lens: Tensor, state: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        left, right = self.context
        chunk = right + 1
        att_cache, conv_cache, processed = state[:3]
        feat_cache = state[3] if self.config.causal_subsampling else None
        x, feat_cache = self.subsample.forward_chunk(mask_frames(x, x_lens), feat_cache)
        y_lens = self.chunk_output_lengths(x_lens)
        win = self._window(processed, processed + y_lens, 1, chunk, left, chunk, x.dtype)
        new_att, new_conv = [], []
        for i, layer in enumerate(self.layers):
            x, a, c = layer(x, win, att_cache[i].transpose(0, 1), conv_cache[i].permute(1, 2, 0))
            new_att.append(a.transpose(0, 1))
            new_conv.append(c.permute(2, 0, 1))
        new_state = [torch.stack(new_att), torch.stack(new_conv), processed + chunk]
        if feat_cache is not None:
            new_state.append(feat_cache)
        return x, y_lens, new_state
