"""CPU kernels (numba), parallel over rows or utterances with prange.

Three kinds of kernel, shared by the materialized, fused and pruned paths:

- row kernels over a flat (N, V + D) block of logits: `rows_forward` reduces each row to the
  few numbers the lattice needs (token logsumexp, blank and label log-probs, duration
  log-probs); `rows_backward` turns a row into its gradient given arc weights.
- lattice kernels over (B, T, U+1): forward/backward variables (alphas, betas) and the
  log-likelihood, one utterance per prange iteration, loops over t and u inside numba.
- weight kernels: arc posteriors exp(alpha + arc + beta' - loglik), times the per-utterance
  upstream gradient, which `rows_backward` consumes.

Row label codes: label >= 0 is the target token y[u] at this row; -1 means u = U (no label
arc); -2 means a padded row (output zeros, gradient zero).
Lattice arrays are float64; row kernels read float32 or float64 logits and compute in float64.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

NEG_INF = -np.inf
# stats columns written by rows_forward
S_LSE, S_BLANK, S_LABEL, S_LSE_DUR, S_DUR0 = 0, 1, 2, 3, 4
# weight columns read by rows_backward
W_TOT, W_BLANK, W_LABEL, W_DUR0 = 0, 1, 2, 3
# Gradient entries below this are written as 0: they are (or multiply into) float32 denormals,
# which make the following CPU matmuls 5-20x slower; 1e-30 is far below float32 resolution of
# any gradient that matters.
TINY = 1e-30


@njit(inline="always", cache=True)
def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) that handles -inf."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(parallel=True, cache=True)
def rows_forward(x, labels, blank, V, D, stats):
    """x: (N, V+D) logits; labels: (N,) int64 codes; stats: (N, 4+D) float64 output."""
    N = x.shape[0]
    for n in prange(N):
        lab = labels[n]
        if lab == -2:
            for c in range(stats.shape[1]):
                stats[n, c] = NEG_INF
            continue
        m = NEG_INF
        for k in range(V):
            v = np.float64(x[n, k])
            if v > m:
                m = v
        s = 0.0
        for k in range(V):
            s += math.exp(np.float64(x[n, k]) - m)
        lse = m + math.log(s)
        stats[n, S_LSE] = lse
        stats[n, S_BLANK] = np.float64(x[n, blank]) - lse
        stats[n, S_LABEL] = np.float64(x[n, lab]) - lse if lab >= 0 else NEG_INF
        if D > 0:
            m = NEG_INF
            for j in range(D):
                v = np.float64(x[n, V + j])
                if v > m:
                    m = v
            s = 0.0
            for j in range(D):
                s += math.exp(np.float64(x[n, V + j]) - m)
            lsed = m + math.log(s)
            stats[n, S_LSE_DUR] = lsed
            for j in range(D):
                stats[n, S_DUR0 + j] = np.float64(x[n, V + j]) - lsed
        else:
            stats[n, S_LSE_DUR] = 0.0


@njit(parallel=True, cache=True)
def rows_backward(x, labels, blank, V, D, stats, w, g):
    """Gradient of -loglik w.r.t. one row of logits, written into g (may alias x).

    g[k] = softmax_k * w_tot - w_blank [k = blank] - w_label [k = label]   (k < V)
    g[V+j] = softmax_dur_j * w_tot - w_dur_j                              (j < D)
    Entries below TINY in magnitude are written as 0 (see TINY); NaN stays NaN.
    w: (N, 3+D) arc weights already multiplied by the upstream gradient.
    """
    N = x.shape[0]
    for n in prange(N):
        lab = labels[n]
        wt = w[n, W_TOT]
        if lab == -2 or wt == 0.0:
            for k in range(V + D):
                g[n, k] = 0.0
            continue
        lse = stats[n, S_LSE]
        xb = np.float64(x[n, blank])
        xl = np.float64(x[n, lab]) if lab >= 0 else 0.0
        for k in range(V):
            v = math.exp(np.float64(x[n, k]) - lse) * wt
            g[n, k] = 0.0 if v < TINY else v  # NaN (a NaN loss's weights) stays NaN
        v = math.exp(xb - lse) * wt - w[n, W_BLANK]
        g[n, blank] = 0.0 if abs(v) < TINY else v
        if lab >= 0:
            v = math.exp(xl - lse) * wt - w[n, W_LABEL]
            g[n, lab] = 0.0 if abs(v) < TINY else v
        if D > 0:
            lsed = stats[n, S_LSE_DUR]
            for j in range(D):
                v = math.exp(np.float64(x[n, V + j]) - lsed) * wt - w[n, W_DUR0 + j]
                g[n, V + j] = 0.0 if abs(v) < TINY else v


@njit(parallel=True, cache=True)
def rnnt_lattice(lpb, lpl, T_lens, U_lens, alpha, beta, ll):
    """RNN-T forward/backward. lpb, lpl, alpha, beta: (B, T, U+1) float64; ll: (B,)."""
    B = lpb.shape[0]
    for b in prange(B):
        T = T_lens[b]
        U = U_lens[b]
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    alpha[b, 0, 0] = 0.0
                    continue
                a = NEG_INF
                if t > 0:
                    a = alpha[b, t - 1, u] + lpb[b, t - 1, u]
                if u > 0:
                    a = _lae(a, alpha[b, t, u - 1] + lpl[b, t, u - 1])
                alpha[b, t, u] = a
        for t in range(T - 1, -1, -1):
            for u in range(U, -1, -1):
                if t == T - 1 and u == U:
                    beta[b, t, u] = lpb[b, t, u]
                    continue
                v = NEG_INF
                if t < T - 1:
                    v = beta[b, t + 1, u] + lpb[b, t, u]
                if u < U:
                    v = _lae(v, beta[b, t, u + 1] + lpl[b, t, u])
                beta[b, t, u] = v
        ll[b] = alpha[b, T - 1, U] + lpb[b, T - 1, U]


@njit(parallel=True, cache=True)
def rnnt_weights(lpb, lpl, T_lens, U_lens, alpha, beta, ll, scale, label_scale, w):
    """Arc posteriors times scale[b]; label arcs also times label_scale (FastEmit: 1+lambda).

    w: (B, T, U+1, 3) output [w_tot, w_blank, w_label], zero where no arc or ll = -inf.
    """
    B = lpb.shape[0]
    for b in prange(B):
        T = T_lens[b]
        U = U_lens[b]
        for t in range(w.shape[1]):
            for u in range(w.shape[2]):
                for c in range(3):
                    w[b, t, u, c] = 0.0
        L = ll[b]
        sc = scale[b]
        if not math.isfinite(L) or sc == 0.0:
            continue
        for t in range(T):
            for u in range(U + 1):
                a = alpha[b, t, u]
                if a == NEG_INF:
                    continue
                wb = 0.0
                if t < T - 1:
                    wb = math.exp(a + lpb[b, t, u] + beta[b, t + 1, u] - L) * sc
                elif u == U:
                    wb = math.exp(a + lpb[b, t, u] - L) * sc
                wl = 0.0
                if u < U:
                    wl = math.exp(a + lpl[b, t, u] + beta[b, t, u + 1] - L) * sc * label_scale
                w[b, t, u, 0] = wb + wl
                w[b, t, u, 1] = wb
                w[b, t, u, 2] = wl


@njit(parallel=True, cache=True)
def tdt_lattice(lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll):
    """TDT forward/backward. lpb, lpl, alpha, beta: (B, T, U+1); lpd: (B, T, U+1, D); stops:
    (B, T), a blank from frame t lands no later than stops[b, t]."""
    B = lpb.shape[0]
    D = durations.shape[0]
    for b in prange(B):
        T = T_lens[b]
        U = U_lens[b]
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    alpha[b, 0, 0] = 0.0
                    continue
                a = NEG_INF
                for j in range(D):
                    d = durations[j]
                    if t - d < 0:
                        continue
                    if d > 0 and t <= stops[b, t - d]:
                        a = _lae(a, alpha[b, t - d, u] + lpb[b, t - d, u] + lpd[b, t - d, u, j] - sigma)
                    if u > 0:
                        a = _lae(a, alpha[b, t - d, u - 1] + lpl[b, t - d, u - 1] + lpd[b, t - d, u - 1, j] - sigma)
                alpha[b, t, u] = a
        for t in range(T - 1, -1, -1):
            for u in range(U, -1, -1):
                v = NEG_INF
                for j in range(D):
                    d = durations[j]
                    arc = lpd[b, t, u, j] - sigma
                    if d > 0 and t + d <= stops[b, t]:
                        if t + d < T:
                            v = _lae(v, beta[b, t + d, u] + lpb[b, t, u] + arc)
                        elif t + d == T and u == U:
                            v = _lae(v, lpb[b, t, u] + arc)
                    if u < U and t + d < T:
                        v = _lae(v, beta[b, t + d, u + 1] + lpl[b, t, u] + arc)
                beta[b, t, u] = v
        L = NEG_INF
        for j in range(D):
            d = durations[j]
            if d > 0 and T - d >= 0 and T <= stops[b, T - d]:
                L = _lae(L, alpha[b, T - d, U] + lpb[b, T - d, U] + lpd[b, T - d, U, j] - sigma)
        ll[b] = L


@njit(parallel=True, cache=True)
def tdt_weights(lpb, lpl, lpd, durations, sigma, stops, T_lens, U_lens, alpha, beta, ll, scale, w):
    """TDT arc posteriors times scale[b]. w: (B, T, U+1, 3+D) [w_tot, w_blank, w_label, w_dur...]."""
    B = lpb.shape[0]
    D = durations.shape[0]
    for b in prange(B):
        T = T_lens[b]
        U = U_lens[b]
        for t in range(w.shape[1]):
            for u in range(w.shape[2]):
                for c in range(w.shape[3]):
                    w[b, t, u, c] = 0.0
        L = ll[b]
        sc = scale[b]
        if not math.isfinite(L) or sc == 0.0:
            continue
        for t in range(T):
            for u in range(U + 1):
                a = alpha[b, t, u]
                if a == NEG_INF:
                    continue
                for j in range(D):
                    d = durations[j]
                    base = a + lpd[b, t, u, j] - sigma - L
                    if d > 0 and t + d <= stops[b, t]:
                        p = 0.0
                        if t + d < T:
                            p = math.exp(base + lpb[b, t, u] + beta[b, t + d, u]) * sc
                        elif t + d == T and u == U:
                            p = math.exp(base + lpb[b, t, u]) * sc
                        w[b, t, u, 1] += p
                        w[b, t, u, 3 + j] += p
                        w[b, t, u, 0] += p
                    if u < U and t + d < T:
                        p = math.exp(base + lpl[b, t, u] + beta[b, t + d, u + 1]) * sc
                        w[b, t, u, 2] += p
                        w[b, t, u, 3 + j] += p
                        w[b, t, u, 0] += p


def num_threads() -> int:
    return numba.get_num_threads()
