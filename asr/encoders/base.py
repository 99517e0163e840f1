"""The streaming interface shared by every encoder family, and ``stream()``.

Every encoder is a :class:`StreamingEncoder`:

- ``forward(x, x_lens) -> (y, y_lens)``: a whole (padded) batch, ``x`` (B, T, F) float,
  ``x_lens`` (B,) int64; ``y`` (B, T', D) with ``T' = ceil(T / subsampling)`` and
  ``y_lens = ceil(x_lens / subsampling)``. The whole-utterance forward runs under exactly
  the context limits that streaming has, so its outputs equal the streamed ones.
- ``streaming_params() -> dict``: how a caller cuts the feature stream into windows. The
  fields every family returns (all counts are integers):

  ``window``
      feature frames passed to each ``forward_chunk`` call;
  ``shift``
      feature frames the caller advances between calls (``window - shift`` frames of each
      window are seen again by the next call);
  ``lookahead``
      ``window - shift``: future feature frames beyond the shift that a call needs before
      it can run (0 for the strictly causal layouts);
  ``chunk_size``
      encoder output frames produced per call (``shift / subsampling``);
  ``subsampling``
      feature frames per encoder output frame;
  ``frame_shift_ms``
      milliseconds per feature frame (10);
  ``latency_ms``
      algorithmic latency: how long the first feature frame of a window waits before the
      window can be processed, ``window * frame_shift_ms``.

  Family-specific fields:

  ``left_context`` / ``right_context`` (Conformer)
      attention context in encoder frames: keys ``left`` frames before the chunk start, and a
      chunk of ``right + 1`` frames, so the chunk's first frame sees ``right`` frames ahead;
  ``attention_lookahead_ms`` (Conformer)
      ``right * subsampling * frame_shift_ms`` (NeMo's "look-ahead": 0, 80, 480, 1040 ms);
  ``pad_length`` (Conformer, SSM)
      feature frames of subsampling context carried by overlapping windows (0 with the
      default causal subsampling, which keeps them in a state tensor instead); equals
      sherpa-onnx's ``pad_length`` metadata, with ``T = window`` and
      ``decode_chunk_len = shift``.

  How to choose the latency: ``ConformerEncoder.set_context(left, right)``; the causal
  families (LSTM, QuartzNet, Citrinet, SSM) have ``set_chunk_size(n)``, which changes only
  the window, never the outputs.
- ``init_state(batch_size) -> list[Tensor]``: zero-initialised state tensors of fixed
  shapes that never grow with the stream.
- ``forward_chunk(x, x_lens, state) -> (y, y_lens, new_state)``: ``x`` (B, window, F) with
  ``x_lens`` (B,) the valid frames of this window (0 for a stream that has ended);
  ``y`` (B, chunk_size, D), ``y_lens`` (B,) the valid output frames of this window.

:func:`stream` runs a padded batch through ``forward_chunk`` window by window and
concatenates the outputs; it is the reference a streaming runtime must reproduce.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["StreamingEncoder", "stream", "stream_chunks", "make_pad_mask", "mask_frames", "ceil_div", "run_lstm"]

FRAME_SHIFT_MS = 10


def ceil_div(x: Tensor, d: int) -> Tensor:
    """``ceil(x / d)`` for non-negative integer tensors."""
    return torch.div(x + (d - 1), d, rounding_mode="floor")


def make_pad_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def mask_frames(x: Tensor, lengths: Tensor) -> Tensor:
    """x (B, T, ...) -> x with frames at or past ``lengths`` (B,) set to 0 (NaN-safe)."""
    valid = make_pad_mask(lengths, x.size(1))[(...,) + (None,) * (x.dim() - 2)]
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def last_frames(t: Tensor, k: int, dim: int = 1) -> Tensor:
    """The last ``k`` entries of ``t`` along ``dim`` (``k`` may be 0). A slice with constant
    bounds, so a traced graph needs no Shape arithmetic for it."""
    index = [slice(None)] * t.dim()
    index[dim] = slice(-k, None) if k > 0 else slice(0, 0)
    return t[tuple(index)]


class StreamingEncoder(nn.Module):
    """Base class: input validation, state construction and the shared docstring contract.

    Subclasses set ``input_dim``, ``output_dim`` and ``subsampling`` in ``__init__`` and
    implement ``_forward``, ``_forward_chunk``, ``streaming_params`` and ``state_spec``.
    """

    input_dim: int
    output_dim: int
    subsampling: int
    family: str = ""

    # ---- to implement -------------------------------------------------------------------
    def _forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _forward_chunk(
        self, x: Tensor, x_lens: Tensor, state: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        raise NotImplementedError

    def streaming_params(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_spec(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of each state tensor for ``batch_size`` streams."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------
    def set_chunk_size(self, chunk_size: int) -> None:
        """Encoder frames per streaming window for the causal families: changes latency and
        ``streaming_params()``, never the outputs."""
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.chunk_size = chunk_size

    def _base_params(self, window: int, shift: int) -> dict[str, Any]:
        return {
            "window": window,
            "shift": shift,
            "lookahead": window - shift,
            "chunk_size": shift // self.subsampling,
            "subsampling": self.subsampling,
            "frame_shift_ms": FRAME_SHIFT_MS,
            "latency_ms": window * FRAME_SHIFT_MS,
        }

    def output_lengths(self, x_lens: Tensor) -> Tensor:
        """(B,) feature lengths -> (B,) encoder output lengths, ``ceil(x_lens / subsampling)``."""
        return ceil_div(x_lens, self.subsampling)

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def init_state(self, batch_size: int) -> list[Tensor]:
        """Zero state for ``batch_size`` new streams; shapes never depend on stream length."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        dev = self._device()
        return [torch.zeros(shape, dtype=dt, device=dev) for shape, dt in self.state_spec(batch_size)]

    def check_input(self, x: Tensor, x_lens: Tensor, where: str = "forward") -> None:
        """ValueError unless ``x`` is (B, T, input_dim) float and ``x_lens`` (B,) ints in [0, T]."""
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{where}: x must be a (B, T, {self.input_dim}) float tensor, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{where}: x must be a float tensor, got dtype {x.dtype}")
        if x.dtype != self._dtype() and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"{where}: x is {x.dtype} but the encoder's weights are {self._dtype()}: "
                             f"convert one of them (x.to({self._dtype()}))")
        if x.size(2) != self.input_dim:
            raise ValueError(
                f"{where}: expected {self.input_dim} features per frame (x of shape (B, T, "
                f"{self.input_dim})), got x of shape {tuple(x.shape)}; set input_dim in the "
                "encoder config to match the features"
            )
        if not isinstance(x_lens, Tensor) or x_lens.dim() != 1 or x_lens.size(0) != x.size(0):
            shape = tuple(x_lens.shape) if isinstance(x_lens, Tensor) else type(x_lens).__name__
            raise ValueError(f"{where}: x_lens must be a (B,) = ({x.size(0)},) integer tensor, got {shape}")
        if x_lens.is_floating_point() or x_lens.dtype == torch.bool:
            raise ValueError(f"{where}: x_lens must be an integer tensor, got dtype {x_lens.dtype}")
        if x_lens.numel() and (int(x_lens.min()) < 0 or int(x_lens.max()) > x.size(1)):
            raise ValueError(
                f"{where}: x_lens must lie in [0, T={x.size(1)}], got min {int(x_lens.min())} "
                f"max {int(x_lens.max())}"
            )

    def check_state(self, state: list[Tensor], batch_size: int) -> None:
        """ValueError unless ``state`` has the shapes and dtypes of ``init_state(batch_size)``."""
        spec = self.state_spec(batch_size)
        if not isinstance(state, (list, tuple)) or len(state) != len(spec):
            n = len(state) if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(
                f"forward_chunk: expected a state list of {len(spec)} tensors from "
                f"init_state({batch_size}) of this {type(self).__name__}, got {n}"
            )
        for i, (s, (shape, dt)) in enumerate(zip(state, spec)):
            if not isinstance(s, Tensor) or tuple(s.shape) != tuple(shape) or s.dtype != dt:
                got = f"{tuple(s.shape)} {s.dtype}" if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(
                    f"forward_chunk: state[{i}] is {got}, expected {tuple(shape)} {dt} for "
                    f"batch_size={batch_size} and this {type(self).__name__}'s config "
                    f"({self.streaming_params()}); was the state made for another batch size, "
                    "encoder or context? Call init_state(batch_size) for new streams."
                )

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Whole utterances. x (B, T, F), x_lens (B,) -> y (B, ceil(T/s), D), y_lens (B,)."""
        self.check_input(x, x_lens, "forward")
        if x.size(1) == 0:  # no frames: no outputs (the convolutions cannot run on nothing)
            return x.new_zeros(x.size(0), 0, self.output_dim), torch.zeros_like(x_lens, dtype=torch.int64)
        return self._forward(x, x_lens.to(torch.int64))

    def forward_chunk(
        self, x: Tensor, x_lens: Tensor, state: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One window. x (B, window, F), x_lens (B,) valid frames of the window, state from
        ``init_state``/a previous call -> y (B, chunk_size, D), y_lens (B,), new state."""
        self.check_input(x, x_lens, "forward_chunk")
        p = self.streaming_params()
        if x.size(1) != p["window"]:
            raise ValueError(
                f"forward_chunk: expected x with window={p['window']} frames (see "
                f"streaming_params()), got {x.size(1)}; pad the last window with zeros"
            )
        self.check_state(state, x.size(0))
        return self._forward_chunk(x, x_lens.to(torch.int64), list(state))

    def chunk_output_lengths(self, x_lens: Tensor) -> Tensor:
        """Valid outputs of one window whose first ``x_lens`` frames are valid."""
        shift = self.streaming_params()["shift"]
        return ceil_div(x_lens.clamp(max=shift), self.subsampling)


@torch.no_grad()
def stream_chunks(encoder: StreamingEncoder, x: Tensor, x_lens: Tensor, where: str = "stream"):
    """Yield ``(y, y_lens)`` of every ``forward_chunk`` call over a padded batch, in order:
    frames past each length are zeroed, the last window is zero-padded to ``window`` frames,
    and the encoder state is carried. The chunk loop of :func:`stream` and of chunk-wise
    decoding (``asr.decoding.streaming``)."""
    encoder.check_input(x, x_lens, where)
    x_lens = x_lens.to(torch.int64)
    p = encoder.streaming_params()
    window, shift = p["window"], p["shift"]
    b, t, _ = x.shape
    n = max(1, math.ceil(t / shift))
    x = torch.nn.functional.pad(mask_frames(x, x_lens), (0, 0, 0, (n - 1) * shift + window - t))
    state = encoder.init_state(b)
    for i in range(n):
        lens = (x_lens - i * shift).clamp(0, window)
        y, yl, state = encoder.forward_chunk(x[:, i * shift : i * shift + window], lens, state)
        yield y, yl


@torch.no_grad()
def stream(encoder: StreamingEncoder, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
    """Run a padded batch window by window through ``encoder.forward_chunk``.

    x (B, T, F), x_lens (B,) -> y (B, ceil(T / subsampling), D), y_lens (B,). Frames past
    each utterance's length are replaced by zeros, as in ``forward``; the last window is
    zero-padded to ``window`` frames. In eval mode the result equals ``encoder(x, x_lens)`` on
    the valid frames. Runs under ``torch.no_grad()``; uses the encoder's current context.
    """
    ys, y_lens = [], torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for y, yl in stream_chunks(encoder, x, x_lens):
        ys.append(y)
        y_lens = y_lens + yl
    y = torch.cat(ys, dim=1)[:, : math.ceil(x.shape[1] / encoder.subsampling)]
    return y, y_lens


def run_lstm(lstm: torch.nn.LSTM, x: Tensor, state: tuple[Tensor, Tensor] | None = None):
    """``lstm(x, state)``, except under CUDA autocast to bfloat16, where it runs in float32:
    PyTorch's autocast of cuDNN RNNs casts them to float16 whatever dtype autocast was asked
    for, and a bf16 run has no GradScaler to keep float16 gradients from underflowing. (fp16
    autocast keeps float16, with its scaler; the CPU's autocast runs the LSTM in bf16.)"""
    if x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16:
        with torch.autocast("cuda", enabled=False):
            return lstm(x.float(), None if state is None else (state[0].float(), state[1].float()))
    return lstm(x, state)
