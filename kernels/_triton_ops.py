"""GPU kernels (Triton), the same interface as `_backend.NumbaBackend`.

- `_rows_forward_kernel`: one program per row of logits; two passes over V in chunks (max,
  then sum of exp), writes the row's stats (token logsumexp, blank / label log-probs, duration
  log-probs).
- `_rows_backward_kernel`: one program per row; softmax * w_tot - arc weights, in chunks.
- `_rnnt_lattice_kernel` / `_tdt_lattice_kernel`: one program per utterance, sweeping the
  anti-diagonals n = t + u of the (T, U+1) lattice (every arc goes to a later diagonal, TDT's
  d = 0 label arcs included), vectorized over u, with a barrier between diagonals.
- arc weights (posteriors) are elementwise over (B, T, U+1): plain torch ops.

Rows are computed in float32 (float64 for float64 inputs); lattice arrays are float64. TDT's
``sigma`` is subtracted from the duration log-probs on the host, in float64 (a Python float
argument reaches a compiled kernel as float32, the interpreter as float64). Every launch runs
on its tensors' GPU (``torch.cuda.device``), not the current one. Tested on CPU tensors with
TRITON_INTERPRET=1; CPU tensors without the interpreter are refused.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor

NEG_INF = float("-inf")


@triton.jit
def _lae(a, b):
    m = tl.maximum(a, b)
    safe = tl.where(m == float("-inf"), 0.0, m)
    out = safe + tl.log(tl.exp(a - safe) + tl.exp(b - safe))
    return tl.where(m == float("-inf"), float("-inf"), out)


@triton.jit
def _rows_forward_kernel(x_ptr, lab_ptr, st_ptr, stride_x, stride_s, blank, V, D,
                         BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row = x_ptr + n * stride_x
    lab = tl.load(lab_ptr + n)
    offs = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), float("-inf"), ACC)
    for v0 in range(0, V, BLOCK_V):
        xv = tl.load(row + v0 + offs, mask=v0 + offs < V, other=float("-inf")).to(ACC)
        m = tl.maximum(m, xv)
    mx = tl.max(m, 0)
    s = tl.zeros((BLOCK_V,), ACC)
    for v0 in range(0, V, BLOCK_V):
        xv = tl.load(row + v0 + offs, mask=v0 + offs < V, other=float("-inf")).to(ACC)
        s += tl.exp(xv - mx)
    lse = mx + tl.log(tl.sum(s, 0))
    xb = tl.load(row + blank).to(ACC)
    xl = tl.load(row + tl.maximum(lab, 0)).to(ACC)
    valid = lab != -2
    out = st_ptr + n * stride_s
    neg = float("-inf")
    tl.store(out + 0, tl.where(valid, lse.to(tl.float64), neg))
    tl.store(out + 1, tl.where(valid, (xb - lse).to(tl.float64), neg))
    tl.store(out + 2, tl.where(valid & (lab >= 0), (xl - lse).to(tl.float64), neg))
    if BLOCK_D > 0:
        od = tl.arange(0, BLOCK_D)
        xd = tl.load(row + V + od, mask=od < D, other=float("-inf")).to(ACC)
        md = tl.max(xd, 0)
        lsed = md + tl.log(tl.sum(tl.exp(xd - md), 0))
        tl.store(out + 3, tl.where(valid, lsed.to(tl.float64), neg))
        tl.store(out + 4 + od, tl.where(valid, (xd - lsed).to(tl.float64), neg), mask=od < D)
    else:
        tl.store(out + 3, tl.where(valid, 0.0, neg).to(tl.float64))


@triton.jit
def _rows_backward_kernel(x_ptr, lab_ptr, st_ptr, w_ptr, g_ptr, stride_x, stride_s, stride_w, stride_g, blank, V, D,
                          BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row = x_ptr + n * stride_x
    grow = g_ptr + n * stride_g
    lab = tl.load(lab_ptr + n)
    wt = tl.load(w_ptr + n * stride_w + 0).to(ACC)
    wb = tl.load(w_ptr + n * stride_w + 1).to(ACC)
    wl = tl.load(w_ptr + n * stride_w + 2).to(ACC)
    valid = (lab != -2) & (wt != 0.0)
    lse = tl.where(valid, tl.load(st_ptr + n * stride_s + 0), 0.0).to(ACC)
    offs = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        k = v0 + offs
        xv = tl.load(row + k, mask=k < V, other=0.0).to(ACC)
        g = tl.exp(xv - lse) * wt
        g = g - tl.where(k == blank, wb, 0.0) - tl.where(k == lab, wl, 0.0)
        g = tl.where(valid, g, 0.0)
        tl.store(grow + k, g.to(g_ptr.dtype.element_ty), mask=k < V)
    if BLOCK_D > 0:
        od = tl.arange(0, BLOCK_D)
        lsed = tl.where(valid, tl.load(st_ptr + n * stride_s + 3), 0.0).to(ACC)
        xd = tl.load(row + V + od, mask=od < D, other=0.0).to(ACC)
        wd = tl.load(w_ptr + n * stride_w + 3 + od, mask=od < D, other=0.0).to(ACC)
        gd = tl.where(valid, tl.exp(xd - lsed) * wt - wd, 0.0)
        tl.store(grow + V + od, gd.to(g_ptr.dtype.element_ty), mask=od < D)


@triton.jit
def _rnnt_lattice_kernel(lpb_ptr, lpl_ptr, a_ptr, b_ptr, ll_ptr, T_ptr, U_ptr, T_max, U1_max,
                         BLOCK_U: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    T = tl.load(T_ptr + bi)
    U = tl.load(U_ptr + bi)
    base = bi * T_max * U1_max
    u = tl.arange(0, BLOCK_U)
    neg = float("-inf")
    for n in range(0, T + U):
        t = n - u
        ok = (t >= 0) & (t < T) & (u <= U)
        idx = base + t * U1_max + u
        from_t = ok & (t > 0)
        from_u = ok & (u > 0)
        a1 = tl.load(a_ptr + idx - U1_max, mask=from_t, other=neg) + tl.load(lpb_ptr + idx - U1_max, mask=from_t, other=neg)
        a2 = tl.load(a_ptr + idx - 1, mask=from_u, other=neg) + tl.load(lpl_ptr + idx - 1, mask=from_u, other=neg)
        a = tl.where((t == 0) & (u == 0), 0.0, _lae(a1, a2))
        tl.store(a_ptr + idx, a, mask=ok)
        tl.debug_barrier()
    for m in range(0, T + U):
        n = T + U - 1 - m
        t = n - u
        ok = (t >= 0) & (t < T) & (u <= U)
        idx = base + t * U1_max + u
        lb = tl.load(lpb_ptr + idx, mask=ok, other=neg)
        to_t = ok & (t < T - 1)
        to_u = ok & (u < U)
        b1 = tl.load(b_ptr + idx + U1_max, mask=to_t, other=neg) + lb
        b2 = tl.load(b_ptr + idx + 1, mask=to_u, other=neg) + tl.load(lpl_ptr + idx, mask=to_u, other=neg)
        bv = tl.where((t == T - 1) & (u == U), lb, _lae(b1, b2))
        tl.store(b_ptr + idx, bv, mask=ok)
        tl.debug_barrier()
    last = base + (T - 1) * U1_max + U
    tl.store(ll_ptr + bi, tl.load(a_ptr + last) + tl.load(lpb_ptr + last))


@triton.jit
def _tdt_lattice_kernel(lpb_ptr, lpl_ptr, lpd_ptr, dur_ptr, stop_ptr, a_ptr, b_ptr, ll_ptr, T_ptr, U_ptr, T_max,
                        U1_max, D: tl.constexpr, BLOCK_U: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    T = tl.load(T_ptr + bi)
    U = tl.load(U_ptr + bi)
    base = bi * T_max * U1_max
    u = tl.arange(0, BLOCK_U)
    neg = float("-inf")
    for n in range(0, T + U):
        t = n - u
        ok = (t >= 0) & (t < T) & (u <= U)
        a = tl.full((BLOCK_U,), neg, tl.float64)
        for j in tl.static_range(D):
            d = tl.load(dur_ptr + j) + tl.zeros((BLOCK_U,), tl.int64)
            src = base + (t - d) * U1_max + u
            okb = ok & (t - d >= 0) & (d > 0)
            okb = okb & (t <= tl.load(stop_ptr + bi * T_max + t - d, mask=okb, other=0))
            arc = tl.load(a_ptr + src, mask=okb, other=neg) + tl.load(lpb_ptr + src, mask=okb, other=neg) \
                + tl.load(lpd_ptr + src * D + j, mask=okb, other=neg)
            a = _lae(a, arc)
            idx_b = src - 1
            okl = ok & (t - d >= 0) & (u > 0)
            arc = tl.load(a_ptr + idx_b, mask=okl, other=neg) + tl.load(lpl_ptr + idx_b, mask=okl, other=neg) \
                + tl.load(lpd_ptr + idx_b * D + j, mask=okl, other=neg)
            a = _lae(a, arc)
        a = tl.where((t == 0) & (u == 0), 0.0, a)
        tl.store(a_ptr + base + t * U1_max + u, a, mask=ok)
        tl.debug_barrier()
    for m in range(0, T + U):
        n = T + U - 1 - m
        t = n - u
        ok = (t >= 0) & (t < T) & (u <= U)
        idx = base + t * U1_max + u
        lb = tl.load(lpb_ptr + idx, mask=ok, other=neg)
        ll_ = tl.load(lpl_ptr + idx, mask=ok & (u < U), other=neg)
        bv = tl.full((BLOCK_U,), neg, tl.float64)
        stop = tl.load(stop_ptr + bi * T_max + t, mask=ok, other=0)  # the last frame a blank from t may land on
        for j in tl.static_range(D):
            d = tl.load(dur_ptr + j) + tl.zeros((BLOCK_U,), tl.int64)
            arcd = tl.load(lpd_ptr + idx * D + j, mask=ok, other=neg)
            reach = ok & (d > 0) & (t + d <= stop)
            okb = reach & (t + d < T)
            bv = _lae(bv, tl.load(b_ptr + idx + d * U1_max, mask=okb, other=neg) + lb + arcd)
            fin = reach & (t + d == T) & (u == U)
            bv = _lae(bv, tl.where(fin, lb + arcd, neg))
            okl = ok & (u < U) & (t + d < T)
            bv = _lae(bv, tl.load(b_ptr + idx + d * U1_max + 1, mask=okl, other=neg) + ll_ + arcd)
        tl.store(b_ptr + idx, bv, mask=ok)
        tl.debug_barrier()
    L = tl.full((2,), neg, tl.float64)
    o = tl.arange(0, 2)
    for j in tl.static_range(D):
        d = tl.load(dur_ptr + j) + tl.zeros((2,), tl.int64)
        src = base + (T - d) * U1_max + U
        okf = (d > 0) & (T - d >= 0) & (o == 0)
        okf = okf & (T <= tl.load(stop_ptr + bi * T_max + T - d + o, mask=okf, other=0))
        arc = tl.load(a_ptr + src + o, mask=okf, other=neg) + tl.load(lpb_ptr + src + o, mask=okf, other=neg) \
            + tl.load(lpd_ptr + (src + o) * D + j, mask=okf, other=neg)
        L = _lae(L, arc)
    tl.store(ll_ptr + bi + o, L, mask=o == 0)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _on(x: Tensor):
    """The launch context of a kernel on ``x``: its GPU as the current device (triton launches
    on the current device and stream, whatever the tensors' device). A CPU tensor runs only in
    triton's interpreter."""
    if x.is_cuda:
        return torch.cuda.device(x.device)
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton backend runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), got a tensor "
                         f"on {x.device}: use the numba backend on the CPU")
    return nullcontext()


def _lattice_warps(block_u: int) -> int:
    """Warps of a lattice program: 4 up to 512 target positions, more beyond (16 from 2048),
    so a long utterance's diagonal does not spill registers."""
    return min(16, max(4, block_u // 128))


def _block(n: int, cap: int) -> int:
    return max(16, min(triton.next_power_of_2(max(n, 1)), cap))


def _valid_mask(shape, T_lens: Tensor, U_lens: Tensor) -> Tensor:
    B, T, U1 = shape
    t = torch.arange(T, device=T_lens.device)[None, :, None]
    u = torch.arange(U1, device=T_lens.device)[None, None, :]
    return (t < T_lens[:, None, None]) & (u <= U_lens[:, None, None])


def _shift_t(x: Tensor, d: int) -> Tensor:
    """y[:, t] = x[:, t + d] (-inf past the end)."""
    if d == 0:
        return x
    out = torch.full_like(x, NEG_INF)
    if d < x.shape[1]:
        out[:, : x.shape[1] - d] = x[:, d:]
    return out


def _shift_u(x: Tensor) -> Tensor:
    out = torch.full_like(x, NEG_INF)
    out[:, :, :-1] = x[:, :, 1:]
    return out


def _post(logw: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask & torch.isfinite(logw), torch.exp(logw.clamp(max=80.0)), torch.zeros_like(logw))


class TritonBackend:
    """GPU: Triton kernels (also runs on CPU tensors under TRITON_INTERPRET=1)."""

    name = "triton"
    reads_half = True  # row kernels load fp16/bf16 logits into float32 and store gradients in their dtype

    def rows_forward(self, x: Tensor, labels: Tensor, blank: int, V: int, D: int) -> Tensor:
        N = x.shape[0]
        stats = torch.empty(N, 4 + D, dtype=torch.float64, device=x.device)
        if N:
            with _on(x):
                _rows_forward_kernel[(N,)](x, labels, stats, x.stride(0), stats.stride(0), blank, V, D,
                                           BLOCK_V=_block(V, 4096), BLOCK_D=triton.next_power_of_2(D) if D else 0,
                                           ACC=_acc(x.dtype))
        return stats

    def rows_backward(self, x: Tensor, labels: Tensor, blank: int, V: int, D: int, stats: Tensor, w: Tensor,
                      out: Tensor) -> Tensor:
        N = x.shape[0]
        if N:
            with _on(x):
                _rows_backward_kernel[(N,)](x, labels, stats, w, out, x.stride(0), stats.stride(0), w.stride(0),
                                            out.stride(0), blank, V, D, BLOCK_V=_block(V, 4096),
                                            BLOCK_D=triton.next_power_of_2(D) if D else 0, ACC=_acc(x.dtype))
        return out

    def rnnt_lattice(self, lpb: Tensor, lpl: Tensor, T_lens: Tensor, U_lens: Tensor):
        B, T, U1 = lpb.shape
        alpha = torch.full_like(lpb, NEG_INF)
        beta = torch.full_like(lpb, NEG_INF)
        ll = torch.empty(B, dtype=torch.float64, device=lpb.device)
        block = triton.next_power_of_2(U1)
        with _on(lpb):
            _rnnt_lattice_kernel[(B,)](lpb, lpl, alpha, beta, ll, T_lens, U_lens, T, U1, BLOCK_U=block,
                                       num_warps=_lattice_warps(block))
        return alpha, beta, ll

    def tdt_lattice(self, lpb: Tensor, lpl: Tensor, lpd: Tensor, durations: Tensor, sigma: float, stops: Tensor,
                    T_lens: Tensor, U_lens: Tensor):
        B, T, U1 = lpb.shape
        alpha = torch.full_like(lpb, NEG_INF)
        beta = torch.full_like(lpb, NEG_INF)
        ll = torch.empty(B, dtype=torch.float64, device=lpb.device)
        arcs = (lpd.double() - float(sigma)).contiguous()  # every duration arc pays sigma, in float64
        block = triton.next_power_of_2(U1)
        with _on(lpb):
            _tdt_lattice_kernel[(B,)](lpb, lpl, arcs, durations, stops, alpha, beta, ll, T_lens, U_lens, T, U1,
                                      D=durations.shape[0], BLOCK_U=block, num_warps=_lattice_warps(block))
        return alpha, beta, ll

    def rnnt_weights(self, lpb, lpl, T_lens, U_lens, alpha, beta, ll, scale, label_scale):
        mask = _valid_mask(lpb.shape, T_lens, U_lens) & torch.isfinite(ll)[:, None, None]
        llv = torch.where(torch.isfinite(ll), ll, torch.zeros_like(ll))[:, None, None]
        sc = scale[:, None, None]
        beta_t = _shift_t(beta, 1)
        t = torch.arange(lpb.shape[1], device=lpb.device)[None, :, None]
        u = torch.arange(lpb.shape[2], device=lpb.device)[None, None, :]
        final = (t == (T_lens - 1)[:, None, None]) & (u == U_lens[:, None, None])
        beta_t = torch.where(final, torch.zeros_like(beta_t), beta_t)
        wb = _post(alpha + lpb + beta_t - llv, mask) * sc
        wl = _post(alpha + lpl + _shift_u(beta) - llv, mask & (u < U_lens[:, None, None])) * sc * label_scale
        return torch.stack([wb + wl, wb, wl], dim=-1).contiguous()

    def tdt_weights(self, lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll, scale):
        B, T, U1 = lpb.shape
        D = lpd.shape[-1]
        mask = _valid_mask(lpb.shape, T_lens, U_lens) & torch.isfinite(ll)[:, None, None]
        llv = torch.where(torch.isfinite(ll), ll, torch.zeros_like(ll))[:, None, None]
        sc = scale[:, None, None]
        t = torch.arange(T, device=lpb.device)[None, :, None]
        u = torch.arange(U1, device=lpb.device)[None, None, :]
        w = torch.zeros(B, T, U1, 3 + D, dtype=torch.float64, device=lpb.device)
        for j, d in enumerate(durations.tolist()):
            arc = alpha + lpd[..., j] - sigma - llv
            bt = _shift_t(beta, d)
            if d > 0:
                final = (t + d == T_lens[:, None, None]) & (u == U_lens[:, None, None])
                dest = torch.where(final, torch.zeros_like(bt), bt)
                pb = _post(arc + lpb + dest, mask & (t + d <= stops[:, :, None])) * sc
                w[..., 1] += pb
                w[..., 3 + j] += pb
            pl = _post(arc + lpl + _shift_u(bt), mask & (u < U_lens[:, None, None])) * sc
            w[..., 2] += pl
            w[..., 3 + j] += pl
        w[..., 0] = w[..., 1] + w[..., 2]
        return w
