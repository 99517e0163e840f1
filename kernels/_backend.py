"""Device dispatch: one small interface, implemented by numba (CPU) and Triton (GPU).

Every loss is written against `Backend`; `get_backend(device)` picks numba for CPU tensors and
Triton for CUDA tensors. `use_backend("triton")` forces a backend (the tests use it to run the
Triton kernels under TRITON_INTERPRET=1 on CPU tensors).

Threads: the numba kernels run on as many threads as torch's intra-op pool (why: the package
docstring, ``kernels/__init__.py``).

Shapes: rows are flat (N, V + D) blocks of logits with (N,) int64 row-label codes (>= 0 label,
-1 no label, -2 padding); stats (N, 4 + D) and lattice arrays (B, T, U+1) are float64.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol

import torch
from torch import Tensor

from . import _numba_ops as nops


class Backend(Protocol):
    name: str
    reads_half: bool  # whether rows_forward/rows_backward take fp16/bf16 rows as they are

    def rows_forward(self, x: Tensor, labels: Tensor, blank: int, V: int, D: int) -> Tensor: ...

    def rows_backward(
        self, x: Tensor, labels: Tensor, blank: int, V: int, D: int, stats: Tensor, w: Tensor, out: Tensor
    ) -> Tensor: ...

    def rnnt_lattice(
        self, lpb: Tensor, lpl: Tensor, T_lens: Tensor, U_lens: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def tdt_lattice(
        self, lpb: Tensor, lpl: Tensor, lpd: Tensor, durations: Tensor, sigma: float, stops: Tensor, T_lens: Tensor,
        U_lens: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def tdt_weights(
        self, lpb: Tensor, lpl: Tensor, lpd: Tensor, durations: Tensor, sigma: float, stops: Tensor, T_lens: Tensor,
        U_lens: Tensor, alpha: Tensor, beta: Tensor, ll: Tensor, scale: Tensor,
    ) -> Tensor: ...


class NumbaBackend:
    """CPU: numba kernels, parallel over rows / utterances, on torch's number of threads."""

    name = "numba"
    reads_half = False  # row kernels take float32/float64 rows: fp16/bf16 logits are copied to float32 first

    def __init__(self) -> None:
        import numba

        n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != n:
            numba.set_num_threads(n)  # this thread's setting: what its parallel kernels launch

    def rows_forward(self, x: Tensor, labels: Tensor, blank: int, V: int, D: int) -> Tensor:
        stats = torch.empty(x.shape[0], 4 + D, dtype=torch.float64)
        if x.shape[0]:
            nops.rows_forward(x.numpy(), labels.numpy(), blank, V, D, stats.numpy())
        return stats

    def rows_backward(
        self, x: Tensor, labels: Tensor, blank: int, V: int, D: int, stats: Tensor, w: Tensor, out: Tensor
    ) -> Tensor:
        if x.shape[0]:
            nops.rows_backward(x.numpy(), labels.numpy(), blank, V, D, stats.numpy(), w.numpy(), out.numpy())
        return out

    def rnnt_lattice(self, lpb: Tensor, lpl: Tensor, T_lens: Tensor, U_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha = torch.full_like(lpb, float("-inf"))
        beta = torch.full_like(lpb, float("-inf"))
        ll = torch.empty(lpb.shape[0], dtype=torch.float64)
        nops.rnnt_lattice(lpb.numpy(), lpl.numpy(), T_lens.numpy(), U_lens.numpy(), alpha.numpy(), beta.numpy(), ll.numpy())
        return alpha, beta, ll

    def rnnt_weights(
        self, lpb: Tensor, lpl: Tensor, T_lens: Tensor, U_lens: Tensor, alpha: Tensor, beta: Tensor, ll: Tensor,
        scale: Tensor, label_scale: float,
    ) -> Tensor:
        w = torch.empty(*lpb.shape, 3, dtype=torch.float64)
        nops.rnnt_weights(
            lpb.numpy(), lpl.numpy(), T_lens.numpy(), U_lens.numpy(), alpha.numpy(), beta.numpy(), ll.numpy(),
            scale.numpy(), float(label_scale), w.numpy(),
        )
        return w

    def tdt_lattice(
        self, lpb: Tensor, lpl: Tensor, lpd: Tensor, durations: Tensor, sigma: float, stops: Tensor, T_lens: Tensor,
        U_lens: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        alpha = torch.full_like(lpb, float("-inf"))
        beta = torch.full_like(lpb, float("-inf"))
        ll = torch.empty(lpb.shape[0], dtype=torch.float64)
        nops.tdt_lattice(
            lpb.numpy(), lpl.numpy(), lpd.numpy(), durations.numpy(), float(sigma), stops.numpy(), T_lens.numpy(),
            U_lens.numpy(), alpha.numpy(), beta.numpy(), ll.numpy(),
        )
        return alpha, beta, ll

    def tdt_weights(
        self, lpb: Tensor, lpl: Tensor, lpd: Tensor, durations: Tensor, sigma: float, stops: Tensor, T_lens: Tensor,
        U_lens: Tensor, alpha: Tensor, beta: Tensor, ll: Tensor, scale: Tensor,
    ) -> Tensor:
        w = torch.empty(*lpb.shape, 3 + lpd.shape[-1], dtype=torch.float64)
        nops.tdt_weights(
            lpb.numpy(), lpl.numpy(), lpd.numpy(), durations.numpy(), float(sigma), stops.numpy(), T_lens.numpy(),
            U_lens.numpy(), alpha.numpy(), beta.numpy(), ll.numpy(), scale.numpy(), w.numpy(),
        )
        return w


_FORCED: list[str] = []


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force "numba" or "triton" inside the block, whatever the tensors' device."""
    if name not in ("numba", "triton"):
        raise ValueError(f"backend {name!r} is not one of ('numba', 'triton')")
    _FORCED.append(name)
    try:
        yield
    finally:
        _FORCED.pop()


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def get_backend(device: torch.device):
    name = _FORCED[-1] if _FORCED else ("triton" if device.type == "cuda" else "numba")
    if name == "numba":
        if device.type != "cpu":
            raise ValueError(f"the numba backend runs on CPU tensors, got device {device}")
        return NumbaBackend()
    if not triton_available():
        raise ValueError(f"tensors on {device} need the Triton backend, but triton is not importable")
    from ._triton_ops import TritonBackend

    return TritonBackend()


def as_index(x: Tensor) -> Tensor:
    """Lengths / durations as contiguous int64 on their device."""
    return x.to(torch.int64).contiguous()



def torch_rows_forward_(x: Tensor, labels: Tensor, blank: int, V: int, D: int) -> Tensor:
    """`rows_forward` with in-place torch ops; destroys x. Used for the CPU fused tiles.

    Vectorized torch ops on torch's own thread pool: alternating numba's and torch's OpenMP
    pools tile after tile makes each spin-wait for the other (measured 3x slower on 2 cores).
    """
    N = x.shape[0]
    stats = torch.empty(N, 4 + D, dtype=torch.float64, device=x.device)
    invalid = labels == -2
    lab = labels.clamp(min=0)[:, None]
    tok = x[:, :V]
    m = tok.amax(1, keepdim=True)
    tok.sub_(m)
    xb = tok[:, blank].to(torch.float64, copy=True)
    xl = tok.gather(1, lab)[:, 0].to(torch.float64)
    ls = tok.exp_().sum(1).to(torch.float64).log_()
    stats[:, 0] = m[:, 0].to(torch.float64) + ls
    stats[:, 1] = xb - ls
    stats[:, 2] = torch.where(labels >= 0, xl - ls, torch.full_like(ls, float("-inf")))
    if D > 0:
        dur = x[:, V:]
        md = dur.amax(1, keepdim=True)
        dur.sub_(md)
        lsd = dur.exp().sum(1, keepdim=True).log_()
        stats[:, 3] = (md + lsd)[:, 0].to(torch.float64)
        stats[:, 4:] = (dur - lsd).to(torch.float64)
    else:
        stats[:, 3] = 0.0
    stats[invalid] = float("-inf")
    return stats


def torch_rows_backward_(x: Tensor, labels: Tensor, blank: int, V: int, D: int, stats: Tensor, w: Tensor) -> Tensor:
    """`rows_backward` with in-place torch ops: x (N, V + D) logits becomes their gradient."""
    dt = x.dtype
    ok = (labels != -2) & (w[:, 0] != 0)
    wt = torch.where(ok, w[:, 0], torch.zeros_like(w[:, 0])).to(dt)[:, None]
    lse = torch.where(ok, stats[:, 0], torch.zeros_like(stats[:, 0])).to(dt)[:, None]
    tok = x[:, :V]
    tok.sub_(lse).exp_().mul_(wt)
    # softmax * w_tot >= 0: one pass flushes the tiny entries (float32 denormals would make the
    # following matmuls 5-17x slower); see _numba_ops.TINY
    torch.nn.functional.threshold_(tok, nops.TINY, 0.0)
    tok[:, blank] -= w[:, 1].to(dt)
    tok.scatter_add_(1, labels.clamp(min=0)[:, None], -torch.where(labels >= 0, w[:, 2], torch.zeros_like(w[:, 2])).to(dt)[:, None])
    if D > 0:
        lsed = torch.where(ok, stats[:, 3], torch.zeros_like(stats[:, 3])).to(dt)[:, None]
        x[:, V:].sub_(lsed).exp_().mul_(wt).sub_(w[:, 3:].to(dt))
    bad = ~ok
    if bool(bad.any()):
        x[bad] = 0.0
    return x
