"""Gated diagonal state-space encoder (S4D kernels in a Mamba-style block), streamable.

Front end: the causal depthwise-separable ``ConvSubsampling`` (4x by default). Then
``num_layers`` residual blocks, each::

    h = LayerNorm(x); a, z = Linear(h).chunk(2)          # (B, T, E), E = expand * d_model
    a = SiLU(causal depthwise Conv1d(a, conv_kernel))
    s = S4D(a)                                           # per channel, N complex modes
    x = x + Dropout(Linear(s * SiLU(z)))

and a final LayerNorm. S4D (diagonal state space, Gu et al. 2022; LSSL/S4 line): per channel
``e`` and mode ``n`` a continuous system with ``A = -exp(log_a_re) + i*a_im``, ``B = 1`` and
learned complex ``C`` is discretised with step ``dt = exp(log_dt)`` (zero-order hold):
``Ab = exp(dt*A)``, ``Bb = (Ab - 1)/A``. The output is
``y_t = 2*Re(sum_n C_n Bb_n h_{n,t}) + D*u_t`` with ``h_t = Ab*h_{t-1} + u_t``, i.e. a causal
convolution with kernel ``K_l = 2*Re(sum_n C_n Bb_n Ab_n^l)``.

- **Training / whole utterance**: the convolution, by FFT (O(T log T)).
- **Streaming**: the recurrence in closed form per window of M frames (no Python loop over
  time): ``y = conv(u, K[:M]) + 2*Re(C Bb Ab^(t+1) h_prev)`` and
  ``h_new = Ab^M h_prev + sum_s Ab^(M-1-s) u_s``. Complex numbers are carried as (re, im)
  pairs of real tensors, so the streaming path uses only real exp/cos/sin/matmul ops and
  exports to ONNX without complex types or custom kernels.

State, in order::

    conv_cache    (num_layers, B, E, conv_kernel - 1)   depthwise conv inputs
    ssm_state     (num_layers, 2, B, E, d_state)         (re, im) of h
    feature_cache (B, 2*subsampling - 2, input_dim)      only if causal_subsampling
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.config import check_dropout
from asr.encoders.base import StreamingEncoder, mask_frames
from asr.encoders.subsampling import ConvSubsampling

__all__ = ["SSMConfig", "SSMEncoder", "S4D"]


@dataclass
class SSMConfig:
    input_dim: int = 80
    d_model: int = 256
    num_layers: int = 12
    d_state: int = 32  # complex modes per channel
    expand: int = 2
    conv_kernel: int = 4
    subsampling: int = 4
    subsampling_channels: int = 128
    causal_subsampling: bool = True
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dropout: float = 0.1
    chunk_size: int = 4  # encoder frames per forward_chunk window

    def __post_init__(self) -> None:
        for k in ("input_dim", "d_model", "num_layers", "d_state", "expand", "conv_kernel", "subsampling_channels", "chunk_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"SSMConfig.{k} must be >= 1, got {getattr(self, k)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"SSMConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        check_dropout(self, "dropout")


#: Encoder frames an :class:`S4D` convolves at once; a longer sequence goes through in pieces.
PIECE_FRAMES = 1024


class S4D(nn.Module):
    """Diagonal SSM per channel. u (B, E, T) -> y (B, E, T); state (2, B, E, N)."""

    def __init__(self, channels: int, d_state: int, dt_min: float, dt_max: float) -> None:
        super().__init__()
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_a_re = nn.Parameter(torch.full((channels, d_state), math.log(0.5)))  # S4D-Lin
        self.a_im = nn.Parameter(math.pi * torch.arange(d_state, dtype=torch.float32).repeat(channels, 1))
        self.c = nn.Parameter(torch.randn(2, channels, d_state) * math.sqrt(0.5))  # (re, im)
        self.d = nn.Parameter(torch.ones(channels))

    def _discrete(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> dtA (re, im) (E, N) and C*Bb (re, im) (E, N), plus Ab (re, im)."""
        dt = torch.exp(self.log_dt)[:, None]
        a_re, a_im = -torch.exp(self.log_a_re), self.a_im
        da_re, da_im = a_re * dt, a_im * dt
        mag = torch.exp(da_re)
        ab_re, ab_im = mag * torch.cos(da_im), mag * torch.sin(da_im)
        # Bb = (Ab - 1) / A
        den = a_re * a_re + a_im * a_im
        num_re, num_im = ab_re - 1.0, ab_im
        bb_re = (num_re * a_re + num_im * a_im) / den
        bb_im = (num_im * a_re - num_re * a_im) / den
        c_re, c_im = self.c[0], self.c[1]
        cb_re = c_re * bb_re - c_im * bb_im
        cb_im = c_re * bb_im + c_im * bb_re
        return da_re, da_im, cb_re, cb_im, ab_re, ab_im

    @staticmethod
    def _powers(da_re: Tensor, da_im: Tensor, exponents: Tensor) -> tuple[Tensor, Tensor]:
        """Ab^l for the given exponents (L,) -> (re, im) (E, N, L)."""
        l = exponents.to(da_re.dtype)
        mag = torch.exp(da_re[..., None] * l)
        ang = da_im[..., None] * l
        return mag * torch.cos(ang), mag * torch.sin(ang)

    def kernel(self, n: int) -> Tensor:
        """K (E, n): K_l = 2 Re(sum_n C Bb Ab^l).

        The phase ``l * dt * a_im`` reaches thousands of radians on long utterances, where
        float32 loses ~1e-3 rad; it is formed and reduced modulo 2 pi in float64, so the
        whole-utterance kernel matches the streaming recurrence (which only uses l <= M). The
        sum over states stays float32 under autocast.
        """
        da_re, da_im, cb_re, cb_im, _, _ = self._discrete()
        l = torch.arange(n, device=da_re.device)
        mag = torch.exp(da_re[..., None] * l.to(da_re.dtype))
        ang = torch.remainder(da_im.double()[..., None] * l.double(), 2 * math.pi).to(da_re.dtype)
        p_re, p_im = mag * torch.cos(ang), mag * torch.sin(ang)
        with torch.autocast(l.device.type, enabled=False):  # autocast would round K to bf16/fp16 before the float32 FFT
            return 2 * (torch.einsum("en,enl->el", cb_re, p_re) - torch.einsum("en,enl->el", cb_im, p_im))

    def forward(self, u: Tensor) -> Tensor:
        """Whole sequence from a zero state, FFT convolution. u (B, E, T) -> (B, E, T).

        The kernel holds E x N x T powers (in float64 for their phase): for 10 minutes the mini
        SSM's S4D (E 512, N 32, 15000 frames) raised the peak by 4 GB. Past :data:`PIECE_FRAMES` frames the sequence goes through
        in pieces of that many, each an FFT convolution from a zero state plus the state the
        pieces before it left, carried as :meth:`forward_chunk` carries it."""
        t = u.size(2)
        if t <= PIECE_FRAMES or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._convolve(u, self.kernel(t))
        p = PIECE_FRAMES
        k = self.kernel(p)
        da_re, da_im, cb_re, cb_im, _, _ = self._discrete()
        r_re, r_im = self._powers(da_re, da_im, torch.arange(p - 1, -1, -1, device=u.device))  # Ab^(P-1-s)
        f_re, f_im = self._powers(da_re, da_im, torch.arange(1, p + 1, device=u.device))  # Ab^(t+1)
        q_re = cb_re[..., None] * f_re - cb_im[..., None] * f_im
        q_im = cb_re[..., None] * f_im + cb_im[..., None] * f_re
        h_re = h_im = u.new_zeros(u.size(0), *da_re.shape)  # (B, E, N)
        out = []
        for a in range(0, t, p):
            x = u[:, :, a:a + p]
            m = x.size(2)
            y = self._convolve(x, k[:, :m])
            if a:
                y = y + 2 * (torch.einsum("ben,enm->bem", h_re, q_re[..., :m])
                             - torch.einsum("ben,enm->bem", h_im, q_im[..., :m]))
            if a + p < t:
                h_re, h_im = (f_re[..., -1] * h_re - f_im[..., -1] * h_im + torch.einsum("bes,ens->ben", x, r_re),
                              f_re[..., -1] * h_im + f_im[..., -1] * h_re + torch.einsum("bes,ens->ben", x, r_im))
            out.append(y)
        return torch.cat(out, 2)

    def _convolve(self, u: Tensor, k: Tensor) -> Tensor:
        """u (B, E, T) from a zero state through kernel k (E, T), plus D u."""
        t = u.size(2)
        n = 2 * t
        ft = torch.float64 if u.dtype == torch.float64 else torch.float32  # no half-precision FFT
        y = torch.fft.irfft(torch.fft.rfft(u.to(ft), n=n) * torch.fft.rfft(k.to(ft), n=n), n=n)[..., :t]
        return y.to(u.dtype) + self.d[:, None] * u

    def _window_constants(self, m: int, device: torch.device) -> tuple[Tensor, ...]:
        """Everything a window of M frames needs that depends only on the parameters:
        toeplitz (E, M, M), q_re/q_im (E, N, M), am_re/am_im (E, N), r_re/r_im (E, N, M).
        Cached while gradients are off and the parameters are unchanged (inference)."""
        key = (m, device, tuple(p._version for p in self.parameters()), tuple(p.data_ptr() for p in self.parameters()))
        cache = getattr(self, "_const_cache", None)
        if cache is not None and cache[0] == key and not torch.is_grad_enabled():
            return cache[1]
        da_re, da_im, cb_re, cb_im, _, _ = self._discrete()
        # Ab^(M-1-s) for s = 0..M-1 (descending exponents: no flip, exports cleanly)
        r_re, r_im = self._powers(da_re, da_im, torch.arange(m - 1, -1, -1, device=device))
        # within the window y_t = sum_{s<=t} K_{t-s} u_s: a (M, M) lower-triangular Toeplitz
        # matrix per channel, K gathered by the constant index t - s (no data-dependent conv
        # weights, which ONNX cannot export). k[:, j] = K_{M-1-j} since r holds Ab^(M-1-j).
        k = 2 * (torch.einsum("en,enl->el", cb_re, r_re) - torch.einsum("en,enl->el", cb_im, r_im))
        t_idx = torch.arange(m, device=device)
        lag = t_idx[:, None] - t_idx[None, :]  # (M, M) t - s
        toeplitz = k[:, (m - 1 - lag).clamp(min=0, max=m - 1)] * (lag >= 0).to(k.dtype)
        # the carried state reaches output t through C Bb Ab^(t+1), t = 0..M-1
        f_re, f_im = self._powers(da_re, da_im, torch.arange(1, m + 1, device=device))
        q_re = cb_re[..., None] * f_re - cb_im[..., None] * f_im
        q_im = cb_re[..., None] * f_im + cb_im[..., None] * f_re
        out = (toeplitz, q_re, q_im, f_re[..., m - 1], f_im[..., m - 1], r_re, r_im)
        if not torch.is_grad_enabled() and not torch.jit.is_tracing():
            self._const_cache = (key, out)
        return out

    def forward_chunk(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, E, M), state (2, B, E, N) -> y (B, E, M), new state (2, B, E, N).

        y_t = sum_{s<=t} K_{t-s} u_s + 2 Re(C Bb Ab^(t+1) h_prev) + D u_t;
        h_new = Ab^M h_prev + sum_s Ab^(M-1-s) u_s.
        """
        toeplitz, q_re, q_im, am_re, am_im, r_re, r_im = self._window_constants(u.size(2), u.device)
        h_re, h_im = state[0], state[1]
        y = torch.einsum("ets,bes->bet", toeplitz, u)
        y = y + 2 * (torch.einsum("ben,enm->bem", h_re, q_re) - torch.einsum("ben,enm->bem", h_im, q_im))
        y = y + self.d[:, None] * u
        new_re = am_re * h_re - am_im * h_im + torch.einsum("bes,ens->ben", u, r_re)
        new_im = am_re * h_im + am_im * h_re + torch.einsum("bes,ens->ben", u, r_im)
        return y, torch.stack([new_re, new_im])


class SSMBlock(nn.Module):
    """Pre-norm gated S4D block. x (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: SSMConfig) -> None:
        super().__init__()
        e = cfg.expand * cfg.d_model
        self.norm = nn.LayerNorm(cfg.d_model)
        self.in_proj = nn.Linear(cfg.d_model, 2 * e)
        self.conv = nn.Conv1d(e, e, cfg.conv_kernel, groups=e)
        self.ssm = S4D(e, cfg.d_state, cfg.dt_min, cfg.dt_max)
        self.out_proj = nn.Linear(e, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.context = cfg.conv_kernel - 1

    def forward(
        self, x: Tensor, conv_cache: Tensor | None, ssm_state: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """conv_cache (B, E, K-1) and ssm_state (2, B, E, N), or None for a whole utterance."""
        a, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        a = a.transpose(1, 2)  # (B, E, T)
        a = F.pad(a, (self.context, 0)) if conv_cache is None else torch.cat([conv_cache, a], dim=2)
        new_cache = a[:, :, a.size(2) - self.context :]
        a = F.silu(self.conv(a))
        if ssm_state is None:
            s, new_state = self.ssm(a), None
        else:
            s, new_state = self.ssm.forward_chunk(a, ssm_state)
        y = s.transpose(1, 2) * F.silu(z)
        return x + self.drop(self.out_proj(y)), new_cache, new_state


class SSMEncoder(StreamingEncoder):
    """Conv subsampling + gated S4D blocks. x (B, T, F) -> y (B, ceil(T/s), d_model)."""

    family = "ssm"

    def __init__(self, config: SSMConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SSMConfig()
        self.input_dim = cfg.input_dim
        self.output_dim = cfg.d_model
        self.subsampling = cfg.subsampling
        self.chunk_size = cfg.chunk_size
        self.subsample = ConvSubsampling(
            cfg.input_dim, cfg.d_model, cfg.subsampling, cfg.subsampling_channels, cfg.causal_subsampling
        )
        self.layers = nn.ModuleList(SSMBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def streaming_params(self) -> dict[str, Any]:
        shift = self.chunk_size * self.subsampling
        pad = 0 if self.config.causal_subsampling else self.subsample.pad
        p = self._base_params(window=shift + pad, shift=shift)
        p["pad_length"] = pad
        return p

    def state_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        cfg, dt = self.config, self._dtype()
        e = cfg.expand * cfg.d_model
        spec = [
            ((cfg.num_layers, batch_size, e, cfg.conv_kernel - 1), dt),
            ((cfg.num_layers, 2, batch_size, e, cfg.d_state), dt),
        ]
        if cfg.causal_subsampling:
            spec.append(((batch_size, self.subsample.pad, cfg.input_dim), dt))
        return spec

    def _forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        x = self.drop(self.subsample(mask_frames(x, x_lens)))
        for layer in self.layers:
            x, _, _ = layer(x, None, None)
        return self.norm(x), self.output_lengths(x_lens)

    def _forward_chunk(
        self, x: Tensor, x_lens: Tensor, state: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        conv_cache, ssm_state = state[0], state[1]
        feat_cache = state[2] if self.config.causal_subsampling else None
        x, feat_cache = self.subsample.forward_chunk(mask_frames(x, x_lens), feat_cache)
        convs, ssms = [], []
        for i, layer in enumerate(self.layers):
            x, c, s = layer(x, conv_cache[i], ssm_state[i])
            convs.append(c)
            ssms.append(s)
        new_state = [torch.stack(convs), torch.stack(ssms)]
        if feat_cache is not None:
            new_state.append(feat_cache)
        return self.norm(x), self.chunk_output_lengths(x_lens), new_state
