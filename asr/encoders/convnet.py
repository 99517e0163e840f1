"""QuartzNet and Citrinet: 1D time-channel separable convolutions, made causal and streamable.

A *sub-block* is depthwise Conv1d (kernel k, dilation d, stride s) -> pointwise Conv1d ->
BatchNorm -> ReLU -> Dropout. A *block* repeats R sub-blocks; the last one adds the residual
(pointwise Conv1d with the block's stride + BatchNorm of the block input) before its ReLU
(QuartzNet BxR). Citrinet adds squeeze-and-excitation to every residual block and strides
three times (8x); QuartzNet strides once, in the prologue (2x).

Streaming changes, all applied in the whole-utterance forward too, so both agree:

- every depthwise convolution is **causal**: ``(k-1)*d`` frames of left padding, none on the
  right; a stride-s convolution's output ``u`` reads inputs up to ``s*u``, and the strided
  residual reads input ``s*u``. In streaming the padding becomes a cache of the last
  ``(k-1)*d`` inputs of each convolution.
- **squeeze-and-excitation over a limited past**: the squeeze is the mean of the last
  ``se_window`` frames (at that block's frame rate; frames before the start count as
  zeros) instead of the whole utterance, cached as the last ``se_window - 1`` frames.
- BatchNorm is per frame in eval mode; inputs past each length are zeroed before every
  convolution (as NeMo's masked convolutions do), which keeps BatchNorm statistics clean.

State: one tensor per causal convolution, (B, channels, (k-1)*d), then one per SE,
(B, channels, se_window - 1), in module order (``state_names()`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.config import check_dropout
from asr.encoders.base import StreamingEncoder, ceil_div, make_pad_mask, mask_frames

__all__ = [
    "BlockSpec",
    "QuartzNetConfig",
    "CitrinetConfig",
    "ConvEncoder",
    "QuartzNetEncoder",
    "CitrinetEncoder",
]


@dataclass(frozen=True)
class BlockSpec:
    """One (residual) block: ``repeat`` separable sub-blocks of ``channels``."""

    channels: int
    kernel: int
    repeat: int = 1
    stride: int = 1
    dilation: int = 1
    residual: bool = True
    se: bool = False


@dataclass
class QuartzNetConfig:
    """QuartzNet BxR: ``num_blocks`` blocks (each group of ``channels``/``kernels`` repeated
    ``num_blocks / len(channels)`` times), ``repeat`` sub-blocks per block."""

    input_dim: int = 80
    num_blocks: int = 15
    repeat: int = 5
    channels: list[int] = field(default_factory=lambda: [256, 256, 512, 512, 512])
    kernels: list[int] = field(default_factory=lambda: [33, 39, 51, 63, 75])
    prologue_channels: int = 256
    prologue_kernel: int = 33
    epilogue_channels: list[int] = field(default_factory=lambda: [512, 1024])
    epilogue_kernels: list[int] = field(default_factory=lambda: [87, 1])
    epilogue_dilations: list[int] = field(default_factory=lambda: [2, 1])
    dropout: float = 0.0
    chunk_size: int = 8  # encoder frames per forward_chunk window

    def __post_init__(self) -> None:
        if not self.channels or len(self.channels) != len(self.kernels):
            raise ValueError("QuartzNetConfig.channels and kernels must be non-empty and of equal length")
        if self.num_blocks < 1 or self.num_blocks % len(self.channels):
            raise ValueError(
                f"QuartzNetConfig.num_blocks={self.num_blocks} must be a positive multiple of "
                f"len(channels)={len(self.channels)}"
            )
        if not len(self.epilogue_channels) == len(self.epilogue_kernels) == len(self.epilogue_dilations):
            raise ValueError("QuartzNetConfig.epilogue_channels/kernels/dilations must have equal lengths")
        _check_positive(self, ["input_dim", "repeat", "prologue_channels", "prologue_kernel", "chunk_size"])
        _check_positive(self, ["channels", "kernels", "epilogue_channels", "epilogue_kernels", "epilogue_dilations"])
        check_dropout(self, "dropout")

    def blocks(self) -> list[BlockSpec]:
        per = self.num_blocks // len(self.channels)
        out = [BlockSpec(self.prologue_channels, self.prologue_kernel, stride=2, residual=False)]
        for c, k in zip(self.channels, self.kernels):
            out += [BlockSpec(c, k, repeat=self.repeat)] * per
        for c, k, d in zip(self.epilogue_channels, self.epilogue_kernels, self.epilogue_dilations):
            out.append(BlockSpec(c, k, dilation=d, residual=False))
        return out


@dataclass
class CitrinetConfig:
    """Citrinet-C: prologue, three mega-blocks (the first block of each strides by 2), epilogue;
    every residual block has ``repeat`` sub-blocks and squeeze-and-excitation."""

    input_dim: int = 80
    channels: int = 256
    repeat: int = 5
    kernels: list[list[int]] = field(
        default_factory=lambda: [
            [11, 13, 15, 17, 19, 21],
            [13, 15, 17, 19, 21, 23, 25],
            [25, 27, 29, 31, 33, 35, 37, 39],
        ]
    )
    prologue_kernel: int = 5
    epilogue_channels: int = 640
    epilogue_kernel: int = 41
    se_reduction: int = 8
    se_window: int = 64  # frames of past averaged by SE, at the block's frame rate
    dropout: float = 0.0
    chunk_size: int = 4  # encoder frames per forward_chunk window

    def __post_init__(self) -> None:
        if not self.kernels or any(not ks for ks in self.kernels):
            raise ValueError("CitrinetConfig.kernels must list at least one non-empty mega-block")
        _check_positive(
            self,
            ["input_dim", "channels", "repeat", "prologue_kernel", "epilogue_channels", "epilogue_kernel"],
        )
        _check_positive(self, ["se_reduction", "se_window", "chunk_size"])
        check_dropout(self, "dropout")
        if any(k < 1 for ks in self.kernels for k in ks):
            raise ValueError(f"CitrinetConfig.kernels must be positive, got {self.kernels}")

    def blocks(self) -> list[BlockSpec]:
        c = self.channels
        out = [BlockSpec(c, self.prologue_kernel, residual=False)]
        for mega in self.kernels:
            for i, k in enumerate(mega):
                out.append(BlockSpec(c, k, repeat=self.repeat, stride=2 if i == 0 else 1, se=True))
        out.append(BlockSpec(self.epilogue_channels, self.epilogue_kernel, residual=False))
        return out


def _check_positive(cfg: Any, keys: list[str]) -> None:
    for k in keys:
        v = getattr(cfg, k)
        vals = v if isinstance(v, list) else [v]
        if any(x < 1 for x in vals):
            raise ValueError(f"{type(cfg).__name__}.{k} must be >= 1, got {v}")


class CausalConv(nn.Module):
    """Causal depthwise-separable conv: x (B, C_in, T) -> (B, C_out, T / stride).

    The depthwise part reads ``(k-1)*d`` past frames: zeros at the start, a cache in streaming.
    ``k == 1`` is a plain pointwise conv (no cache).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.context = (kernel - 1) * dilation
        self.stride = stride
        self.dw = (
            nn.Conv1d(c_in, c_in, kernel, stride=stride, dilation=dilation, groups=c_in, bias=False)
            if kernel > 1
            else None
        )
        self.pw = nn.Conv1d(c_in, c_out, 1, stride=stride if kernel == 1 else 1, bias=False)

    def forward(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.dw is None:
            return self.pw(x), None
        x = F.pad(x, (self.context, 0)) if cache is None else torch.cat([cache, x], dim=2)
        new_cache = x[:, :, x.size(2) - self.context :]
        return self.pw(self.dw(x)), new_cache


class LimitedSE(nn.Module):
    """Squeeze-and-excitation whose squeeze is the mean of the last ``window`` frames.

    x (B, C, T) -> x * sigmoid(W2 relu(W1 mean_{t-window+1..t} x)), cache (B, C, window-1).
    """

    def __init__(self, channels: int, reduction: int, window: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv1d(channels, hidden, 1)
        self.fc2 = nn.Conv1d(hidden, channels, 1)
        self.window = window

    def forward(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        t = x.size(2)
        h = F.pad(x, (self.window - 1, 0)) if cache is None else torch.cat([cache, x], dim=2)
        new_cache = h[:, :, h.size(2) - (self.window - 1) :]
        mean = F.avg_pool1d(h, self.window, stride=1)  # (B, C, T), zeros before start counted
        assert mean.size(2) == t
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(mean))))
        return x * gate, new_cache


class ConvBlock(nn.Module):
    """``repeat`` x [causal separable conv, BN, ReLU, Dropout] with optional SE + residual."""

    def __init__(self, c_in: int, spec: BlockSpec, dropout: float, se_reduction: int, se_window: int) -> None:
        super().__init__()
        self.spec = spec
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c = c_in
        for i in range(spec.repeat):
            stride = spec.stride if i == 0 else 1
            self.convs.append(CausalConv(c, spec.channels, spec.kernel, stride, spec.dilation))
            self.norms.append(nn.BatchNorm1d(spec.channels))
            c = spec.channels
        self.se = LimitedSE(spec.channels, se_reduction, se_window) if spec.se else None
        self.res = (
            nn.Sequential(nn.Conv1d(c_in, spec.channels, 1, stride=spec.stride, bias=False), nn.BatchNorm1d(spec.channels))
            if spec.residual
            else None
        )
        self.drop = nn.Dropout(dropout)

    def num_caches(self) -> int:
        return sum(c.dw is not None for c in self.convs) + (self.se is not None)

    def forward(
        self, x: Tensor, lens: Tensor, caches: list[Tensor | None]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x (B, C_in, T), lens (B,) at this block's input rate; caches: one per cached module
        (None entries: utterance start) -> (B, C_out, T / stride), output lens, new caches."""
        inp = x
        out_lens = ceil_div(lens, self.spec.stride)
        new: list[Tensor] = []
        it = iter(caches)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            in_lens = lens if i == 0 else out_lens
            x = x * make_pad_mask(in_lens, x.size(2)).unsqueeze(1).to(x.dtype)
            x, c = conv(x, next(it) if conv.dw is not None else None)
            if c is not None:
                new.append(c)
            x = norm(x)
            if i < len(self.convs) - 1 or self.res is None:
                x = self.drop(F.relu(x))
        if self.se is not None:
            x, c = self.se(x, next(it))
            new.append(c)
        if self.res is not None:
            masked = inp * make_pad_mask(lens, inp.size(2)).unsqueeze(1).to(inp.dtype)
            x = self.drop(F.relu(x + self.res(masked)))
        return x, out_lens, new


class ConvEncoder(StreamingEncoder):
    """A stack of causal separable conv blocks. x (B, T, F) -> y (B, ceil(T/s), C_last)."""

    def __init__(self, input_dim: int, blocks: list[BlockSpec], dropout: float, chunk_size: int,
                 se_reduction: int = 8, se_window: int = 64) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.chunk_size = chunk_size
        self.blocks = nn.ModuleList()
        c = input_dim
        sub = 1
        for spec in blocks:
            self.blocks.append(ConvBlock(c, spec, dropout, se_reduction, se_window))
            c = spec.channels
            sub *= spec.stride
        self.output_dim = c
        self.subsampling = sub

    def streaming_params(self) -> dict[str, Any]:
        n = self.chunk_size * self.subsampling
        return self._base_params(window=n, shift=n)

    def _cache_shapes(self) -> list[tuple[str, int, int]]:
        out = []
        for b, block in enumerate(self.blocks):
            for i, conv in enumerate(block.convs):
                if conv.dw is not None:
                    out.append((f"block{b}.conv{i}", conv.dw.in_channels, conv.context))
            if block.se is not None:
                out.append((f"block{b}.se", block.spec.channels, block.se.window - 1))
        return out

    def state_names(self) -> list[str]:
        """Name of each state tensor, in ``init_state`` order."""
        return [n for n, _, _ in self._cache_shapes()]

    def state_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        dt = self._dtype()
        return [((batch_size, c, t), dt) for _, c, t in self._cache_shapes()]

    def _run(self, x: Tensor, x_lens: Tensor, state: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        extra = -x.size(1) % self.subsampling
        x = mask_frames(x, x_lens)  # padding is zero, NaN there too (the blocks mask by multiplying)
        h = F.pad(x, (0, 0, 0, extra)).transpose(1, 2)  # (B, F, T)
        lens = x_lens
        new: list[Tensor] = []
        pos = 0
        for block in self.blocks:
            n = block.num_caches()
            caches = state[pos : pos + n] if state is not None else [None] * n
            pos += n
            h, lens, c = block(h, lens, caches)
            new += c
        return h.transpose(1, 2), new

    def _forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        y, _ = self._run(x, x_lens, None)
        return y, self.output_lengths(x_lens)

    def _forward_chunk(
        self, x: Tensor, x_lens: Tensor, state: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        y, new = self._run(x, x_lens, state)
        return y, self.chunk_output_lengths(x_lens), new


class QuartzNetEncoder(ConvEncoder):
    """QuartzNet BxR (2x subsampling in the prologue), causal and streamable."""

    family = "quartznet"

    def __init__(self, config: QuartzNetConfig | None = None) -> None:
        cfg = config or QuartzNetConfig()
        super().__init__(cfg.input_dim, cfg.blocks(), cfg.dropout, cfg.chunk_size)
        self.config = cfg


class CitrinetEncoder(ConvEncoder):
    """Citrinet (8x subsampling, SE over a limited past window), causal and streamable."""

    family = "citrinet"

    def __init__(self, config: CitrinetConfig | None = None) -> None:
        cfg = config or CitrinetConfig()
        super().__init__(
            cfg.input_dim, cfg.blocks(), cfg.dropout, cfg.chunk_size, cfg.se_reduction, cfg.se_window
        )
        self.config = cfg
