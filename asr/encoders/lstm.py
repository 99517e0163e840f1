"""Stacked unidirectional LSTM encoder with projection and frame-stacking subsampling.

``subsampling`` consecutive feature frames are stacked into one (B, T/s, s*F) frame, mapped
by a Linear to ``input_size`` and run through ``num_layers`` LSTM layers that each end in a
projection to ``proj_size``. Everything is causal, so a window of ``subsampling *
chunk_size`` features gives ``chunk_size`` outputs that equal the whole-utterance ones.

Two projection layouts (``projection``):

- ``"linear"`` (default): each layer is a one-layer ``nn.LSTM(hidden_size)`` followed by
  ``Linear(hidden_size -> proj_size)``; the recurrence runs on the full hidden state.
  ``torch.onnx.export(dynamo=False)`` exports it as ONNX ``LSTM`` ops with a dynamic time axis.
- ``"recurrent"``: LSTMP, ``nn.LSTM(..., proj_size=proj_size)``, whose recurrence runs on the
  projected state (fewer parameters). The TorchScript ONNX exporter refuses LSTMs with
  projections (checked with torch 2.13: "ONNX export of operator LSTM, LSTMs with
  projections" is unsupported), so pick it only for PyTorch-side use.

State: ``[h (num_layers, B, H_h), c (num_layers, B, hidden_size)]`` with ``H_h =
hidden_size`` for "linear" and ``proj_size`` for "recurrent" (``nn.LSTM``'s own layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from asr.config import check_dropout
from asr.encoders.base import StreamingEncoder, mask_frames, run_lstm
from asr.encoders.subsampling import stack_frames

__all__ = ["LSTMConfig", "LSTMEncoder"]


@dataclass
class LSTMConfig:
    input_dim: int = 80
    subsampling: int = 4  # feature frames stacked into one LSTM frame
    input_size: int = 512  # Linear(subsampling * input_dim -> input_size) before the LSTM
    hidden_size: int = 1024
    proj_size: int = 256  # 0: no projection, output_dim = hidden_size
    projection: str = "linear"  # "linear" (ONNX-exportable) or "recurrent" (LSTMP)
    num_layers: int = 4
    dropout: float = 0.1
    chunk_size: int = 4  # encoder frames per forward_chunk window

    def __post_init__(self) -> None:
        for k in ("input_dim", "subsampling", "input_size", "hidden_size", "num_layers", "chunk_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"LSTMConfig.{k} must be >= 1, got {getattr(self, k)}")
        if not 0 <= self.proj_size < self.hidden_size:
            raise ValueError(f"LSTMConfig.proj_size must be in [0, hidden_size), got {self.proj_size}")
        if self.projection not in ("linear", "recurrent"):
            raise ValueError(f"LSTMConfig.projection must be 'linear' or 'recurrent', got {self.projection!r}")
        check_dropout(self, "dropout")


class LSTMEncoder(StreamingEncoder):
    """Frame stacking + LSTMP stack. x (B, T, F) -> y (B, ceil(T/s), proj_size or hidden)."""

    family = "lstm"

    def __init__(self, config: LSTMConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LSTMConfig()
        self.input_dim = cfg.input_dim
        self.subsampling = cfg.subsampling
        self.output_dim = cfg.proj_size or cfg.hidden_size
        self.chunk_size = cfg.chunk_size
        self.input_proj = nn.Linear(cfg.subsampling * cfg.input_dim, cfg.input_size)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.projection == "recurrent":
            self.lstm = nn.LSTM(
                cfg.input_size,
                cfg.hidden_size,
                num_layers=cfg.num_layers,
                batch_first=True,
                dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
                proj_size=cfg.proj_size,
            )
            self.state_dim = self.output_dim
        else:
            self.lstms = nn.ModuleList()
            self.projs = nn.ModuleList()
            d = cfg.input_size
            for _ in range(cfg.num_layers):
                self.lstms.append(nn.LSTM(d, cfg.hidden_size, batch_first=True))
                self.projs.append(nn.Linear(cfg.hidden_size, cfg.proj_size) if cfg.proj_size else nn.Identity())
                d = self.output_dim
            self.state_dim = cfg.hidden_size

    def streaming_params(self) -> dict[str, Any]:
        n = self.chunk_size * self.subsampling
        return self._base_params(window=n, shift=n)

    def state_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        cfg, dt = self.config, self._dtype()
        return [
            ((cfg.num_layers, batch_size, self.state_dim), dt),
            ((cfg.num_layers, batch_size, cfg.hidden_size), dt),
        ]

    def _frames(self, x: Tensor, x_lens: Tensor) -> Tensor:
        x = mask_frames(x, x_lens)
        extra = -x.size(1) % self.subsampling
        x = torch.nn.functional.pad(x, (0, 0, 0, extra))
        return self.input_proj(stack_frames(x, self.subsampling))

    def _layers(self, x: Tensor, h: Tensor | None, c: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T', input_size); h, c as in the state (or None: zeros) -> y, new h, new c."""
        if self.config.projection == "recurrent":
            y, (h, c) = run_lstm(self.lstm, x, None if h is None else (h.contiguous(), c.contiguous()))
            return y, h, c
        hs, cs = [], []
        for i, (lstm, proj) in enumerate(zip(self.lstms, self.projs)):
            if i > 0:
                x = self.dropout(x)
            x, (hi, ci) = run_lstm(lstm, x, None if h is None else (h[i : i + 1].contiguous(), c[i : i + 1].contiguous()))
            x = proj(x)
            hs.append(hi)
            cs.append(ci)
        return x, torch.cat(hs), torch.cat(cs)

    def _forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        y, _, _ = self._layers(self._frames(x, x_lens), None, None)
        return self.dropout(y), self.output_lengths(x_lens)

    def _forward_chunk(
        self, x: Tensor, x_lens: Tensor, state: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        y, h, c = self._layers(self._frames(x, x_lens), state[0], state[1])
        return self.dropout(y), self.chunk_output_lengths(x_lens), [h, c]
