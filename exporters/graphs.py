"""The modules that ``torch.onnx.export`` traces: one per exported file.

Every graph takes *raw* fbank features: the model's global normalization
(``(x - feat_mean) / feat_std``) is the first operation of each encoder graph, so a runtime
feeds kaldi-native-fbank output directly. Every graph has a dynamic batch axis; the offline
graphs also a dynamic time axis.

Our own contract (the files at the top of an export directory) mirrors the PyTorch API:

- streaming ``encoder.onnx`` / ``ctc.onnx``: ``x (N, window, F)``, ``x_lens (N,)`` (valid
  frames of the window, as ``forward_chunk`` takes them), then the state tensors of
  ``encoder.init_state(N)`` in order -> ``encoder_out (N, chunk, D)`` (or ``log_probs (N,
  chunk, V)``), its lengths, then the new state tensors (named ``new_<name>``);
- offline ``*.offline.onnx``: ``x (N, T, F)``, ``x_lens (N,)`` -> the whole utterance;
- ``decoder.onnx``: one prediction-network step, output projected to the joint dimension;
- ``joiner.onnx``: one raw encoder frame ``(N, D)`` and a decoder output ``(N, J)`` -> logits
  ``(N, V)`` (``(N, V + len(durations))`` for TDT);
- ``ctc_guard.onnx`` (hybrid TDT+CTC only): raw encoder frames ``encoder_out (N, T, D)`` ->
  ``blank_log_prob (N, T)``, the CTC head's blank log-probability of every frame, which
  guards the TDT's blank jumps (``asr.models.ASRModel.jump_guard``).

Two encoder operations are not traceable with a dynamic time axis as written for training,
so the offline graphs replace them with equivalent formulations:

- the Conformer's whole-utterance forward picks its query-group size from the length with
  Python ``min``/``max`` (the tracer would freeze it); :func:`conformer_offline` uses one
  fixed group size (any multiple of the chunk gives the same outputs);
- the SSM's whole-utterance S4D convolution is an FFT, which ONNX opset 17 cannot express;
  :class:`S4DScan` computes the same causal convolution as windows of ``M`` frames joined by
  a log-depth (Hillis-Steele) scan of the carried state.
"""

from __future__ import annotations

import copy
import math
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.encoders.base import mask_frames
from asr.encoders.conformer import query_group

__all__ = [
    "state_names",
    "state_batch_axes",
    "Normalizer",
    "StreamingGraph",
    "OfflineGraph",
    "DecoderGraph",
    "JoinerGraph",
    "CtcGuardGraph",
    "StatePacker",
    "conformer_offline",
    "S4DScan",
    "offline_encoder",
]


# ---------------------------------------------------------------------- states
def state_names(encoder) -> list[str]:
    """ONNX input names of ``encoder.init_state`` (outputs are ``new_<name>``)."""
    fam = encoder.family
    n = len(encoder.state_spec(1))
    if fam == "conformer":
        names = ["cached_attn", "cached_conv", "processed_frames", "cached_feat"]
    elif fam == "lstm":
        names = ["h", "c"]
    elif fam == "ssm":
        names = ["cached_conv", "ssm_state", "cached_feat"]
    elif hasattr(encoder, "state_names"):
        names = ["cache_" + s.replace(".", "_") for s in encoder.state_names()]
    else:
        names = [f"state{i}" for i in range(n)]
    return names[:n]


def state_batch_axes(encoder) -> list[int]:
    """The batch axis of every state tensor (found by comparing batch sizes 1 and 2)."""
    axes = []
    for (s1, _), (s2, _) in zip(encoder.state_spec(1), encoder.state_spec(2)):
        diff = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
        if len(diff) != 1:
            raise ValueError(f"cannot find the batch axis of a state of shapes {s1} and {s2}")
        axes.append(diff[0])
    return axes


class StatePacker:
    """Packs a list of float state tensors (any layout, batch on its own axis) into one
    ``(N, S)`` tensor and back; used where a runtime's contract has fewer state slots than
    an encoder has tensors. ``S >= 1`` (one unused column when there is nothing to pack)."""

    def __init__(self, shapes: list[tuple[int, ...]], batch_axes: list[int]):
        self.shapes = [tuple(s) for s in shapes]  # batch-1 shapes
        self.axes = list(batch_axes)
        self.sizes = [math.prod(s) for s in self.shapes]
        self.width = max(1, sum(self.sizes))

    def pack(self, states: list[Tensor]) -> Tensor:
        if not states:
            raise ValueError("nothing to pack")
        n = states[0].shape[self.axes[0]]
        # explicit sizes, and empty states (a zero left context's attention cache) left out: a
        # reshape to -1 over zero elements is what torch's ONNX shape inference once crashed on
        parts = [s.movedim(a, 0).reshape(n, size) for s, a, size in zip(states, self.axes, self.sizes) if size]
        if self.width > sum(self.sizes):
            parts.append(states[0].new_zeros((n, 1)))  # nothing to carry: one unused column
        return torch.cat(parts, dim=1)

    def unpack(self, packed: Tensor) -> list[Tensor]:
        n = packed.shape[0]
        out, pos = [], 0
        for shape, axis, size in zip(self.shapes, self.axes, self.sizes):
            rest = [d for i, d in enumerate(shape) if i != axis]
            t = packed[:, pos : pos + size].reshape([n] + rest) if size else packed.new_zeros([n] + rest)
            out.append(t.movedim(0, axis))
            pos += size
        return out


# ---------------------------------------------------------------------- pieces
class Normalizer(nn.Module):
    """``(x - mean) / std`` with the model's feature statistics as constants."""

    def __init__(self, model) -> None:
        super().__init__()
        self.register_buffer("mean", model.feat_mean.detach().clone().float())
        self.register_buffer("std", model.feat_std.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class StreamingGraph(nn.Module):
    """One streaming window: raw features + state -> encoder output (or CTC log-probs) + state.

    forward(x (N, W, F), x_lens (N,), *state) -> (out, out_lens, *new_state)."""

    def __init__(self, model, ctc: bool = False) -> None:
        super().__init__()
        self.norm = Normalizer(model)
        self.encoder = model.encoder
        self.ctc = model.ctc if ctc else None

    def forward(self, x: Tensor, x_lens: Tensor, *state: Tensor):
        y, y_lens, new = self.encoder._forward_chunk(self.norm(x), x_lens, list(state))
        if self.ctc is not None:
            y = self.ctc(y)
        return (y, y_lens, *new)


class OfflineGraph(nn.Module):
    """Whole utterances: raw features (N, T, F), x_lens (N,) -> encoder output (or CTC
    log-probs), lengths. ``encoder_forward`` is a traceable whole-utterance forward."""

    def __init__(self, model, encoder_forward, ctc: bool = False) -> None:
        super().__init__()
        self.norm = Normalizer(model)
        self.encoder = model.encoder
        self.encoder_forward = encoder_forward
        self.ctc = model.ctc if ctc else None

    def forward(self, x: Tensor, x_lens: Tensor):
        y, y_lens = self.encoder_forward(self.encoder, self.norm(x), x_lens)
        if self.ctc is not None:
            y = self.ctc(y)
        return y, y_lens


class DecoderGraph(nn.Module):
    """One prediction-network step, output projected by the joint (``project_pred``).

    - LSTM predictor: forward(y (N,) int64, h, c) -> (decoder_out (N, J), new_h, new_c);
    - stateless predictor (icefall's contract): forward(y (N, context_size) int64, the last
      ``context_size`` tokens, oldest first) -> decoder_out (N, J). Ids below 0 (sherpa-onnx
      pads the start of a stream with -1) stand for blank, which starts every stream here.
    """

    def __init__(self, head) -> None:
        super().__init__()
        self.pred = head.predictor
        self.joint = head.joint
        self.blank = head.blank
        self.stateless = not hasattr(self.pred, "lstm")

    def forward(self, y: Tensor, *state: Tensor):
        if self.stateless:
            y = torch.where(y < 0, torch.full_like(y, self.blank), y)
            out, _ = self.pred.forward(y[:, -1:], [y[:, :-1]])
            return self.joint.project_pred(out[:, 0])
        out, new = self.pred.step(y, list(state))
        return (self.joint.project_pred(out), *new)


class JoinerGraph(nn.Module):
    """forward(encoder_out (N, D) raw encoder frames, decoder_out (N, J)) -> logits (N, V(+D))."""

    def __init__(self, head) -> None:
        super().__init__()
        self.joint = head.joint

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.joint(self.joint.project_enc(encoder_out), decoder_out)


class CtcGuardGraph(nn.Module):
    """forward(encoder_out (N, T, D) raw encoder frames) -> blank_log_prob (N, T): the hybrid's
    CTC head's blank log-probability, what ``ASRModel.jump_guard`` compares with log(P)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.proj = model.ctc.proj
        self.blank = model.transducer.blank

    def forward(self, encoder_out: Tensor) -> Tensor:
        return self.proj(encoder_out).log_softmax(-1)[..., self.blank]


# ---------------------------------------------------------------------- offline encoders
def _gather_blocks(self, t: Tensor, n, w: int, group: int) -> Tensor:
    """``ChunkedRelPosAttention._blocks`` by an index gather instead of ``unfold`` (which the
    ONNX exporter cannot express with a dynamic length): (B, left + n*G, D) -> (B, n, H, dk, W)."""
    t = t.reshape(-1, t.size(1), self.h, self.dk)
    idx = torch.arange(n, device=t.device)[:, None] * group + torch.arange(w, device=t.device)[None, :]
    return t[:, idx].permute(0, 1, 3, 4, 2)


def conformer_offline(enc, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
    """``ConformerEncoder._forward`` in eval mode with a query-group size that does not depend
    on the length (traceable with a dynamic time axis; same outputs). Use it on a model from
    :func:`offline_encoder`, whose attention windows are gathered rather than unfolded."""
    left, right = enc.context
    chunk = right + 1
    group = query_group(left, chunk)
    x = enc.subsample(mask_frames(x, x_lens))
    y_lens = enc.output_lengths(x_lens)
    return enc._layers_whole(x, y_lens, group, left, chunk), y_lens


class S4DScan(nn.Module):
    """The whole-sequence S4D convolution of an ``asr.encoders.ssm.S4D`` without FFT.

    The sequence is cut into windows of ``M`` frames. Within a window, the convolution is the
    (M, M) Toeplitz product of the streaming path; across windows, the state entering window
    ``k`` is ``h_k = sum_{j<k} Ab^(M(k-1-j)) v_j`` with ``v_j = sum_s Ab^(M-1-s) u_{j,s}``,
    computed for all windows at once by ``levels`` doubling steps
    ``h_k += Ab^(M 2^i) h_{k-2^i}`` (exact for up to ``2^levels`` windows). The powers
    ``Ab^(M 2^i)`` are formed with their phase reduced modulo 2 pi in float64.
    """

    def __init__(self, ssm, window: int = 32, levels: int = 20) -> None:
        super().__init__()
        self.ssm = ssm
        self.m = window
        self.levels = levels
        with torch.no_grad():
            da_re, da_im, *_ = ssm._discrete()
            re, im = [], []
            for i in range(levels):
                p = float(window * 2**i)
                mag = torch.exp(da_re.double() * p)
                ang = torch.remainder(da_im.double() * p, 2 * math.pi)
                re.append((mag * torch.cos(ang)).float())
                im.append((mag * torch.sin(ang)).float())
        self.register_buffer("pow_re", torch.stack(re))  # (levels, E, N)
        self.register_buffer("pow_im", torch.stack(im))

    def forward(self, u: Tensor) -> Tensor:
        b, e, t = u.shape
        m = self.m
        n = (t + m - 1) // m
        u = F.pad(u, (0, n * m - t))
        uw = u.reshape(b, e, n, m).permute(0, 2, 1, 3)  # (B, n, E, M)
        toeplitz, q_re, q_im, _, _, r_re, r_im = self.ssm._window_constants(m, u.device)
        # per-window contributions to the state carried out of the window: (B, E, N, n)
        v_re = torch.einsum("bkes,ens->benk", uw, r_re)
        v_im = torch.einsum("bkes,ens->benk", uw, r_im)
        h_re, h_im = v_re, v_im
        k = torch.arange(n, device=u.device)
        for i in range(self.levels):
            d = 2**i
            # h shifted by d windows (zeros for k < d), by a gather: O(n) whatever d is
            idx = (k - d).clamp(min=0)
            valid = (k >= d).to(u.dtype)
            s_re = h_re.index_select(3, idx) * valid
            s_im = h_im.index_select(3, idx) * valid
            a_re, a_im = self.pow_re[i][..., None], self.pow_im[i][..., None]
            h_re, h_im = h_re + a_re * s_re - a_im * s_im, h_im + a_re * s_im + a_im * s_re
        # state entering window k: the inclusive scan shifted by one window
        p_re = F.pad(h_re, (1, 0))[..., :n]
        p_im = F.pad(h_im, (1, 0))[..., :n]
        y = torch.einsum("ets,bkes->bket", toeplitz, uw)
        y = y + 2 * (torch.einsum("benk,enm->bkem", p_re, q_re) - torch.einsum("benk,enm->bkem", p_im, q_im))
        y = y + self.ssm.d[:, None] * uw
        return y.permute(0, 2, 1, 3).reshape(b, e, n * m)[:, :, :t]


def _plain_forward(enc, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
    return enc._forward(x, x_lens)


def offline_encoder(model):
    """(model copy, traceable whole-utterance forward) for ``model.encoder``'s family. The
    SSM's S4D modules are swapped for :class:`S4DScan` in a copy; ``model`` is unchanged."""
    fam = model.encoder.family
    if fam == "conformer":
        model = copy.deepcopy(model)
        for layer in model.encoder.layers:
            layer.att._blocks = types.MethodType(_gather_blocks, layer.att)
        return model, conformer_offline
    if fam == "ssm":
        model = copy.deepcopy(model)
        for layer in model.encoder.layers:
            layer.ssm = S4DScan(layer.ssm)
        return model, _plain_forward
    return model, _plain_forward
