"""Benchmark: joint + transducer loss, forward + backward, time per step and peak memory.

    python -m kernels.bench                      # CPU, (B, T, U, V, H) = (8, 150, 40, 500, 512)
    python -m kernels.bench --device cuda        # GPU: that shape and (32, 250, 80, 1024, 640)
    python -m kernels.bench --shape 4,100,30,256,256 --repeats 5 --cases fused_rnnt,pruned

Every case runs in a fresh subprocess (`--worker CASE`) so its peak memory is its own: on CPU
the RSS high-water (ru_maxrss), reported as is, minus the high-water of a bare process that
only imports torch and numba, and minus a "warm" process that also ran one tiny numba loss
(numba's LLVM runtime alone adds ~60 MB the first time any numba kernel runs); on CUDA torch.cuda.max_memory_allocated. The first step (JIT
compilation, caches) is not timed; the time is the median of --repeats steps.

Cases: materialized / fused / pruned for RNN-T and for TDT, and, when
installed, warprnnt-numba (NeMo's numba kernels) and fast_rnnt (k2's full and pruned losses).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CPU_SHAPES = [(8, 150, 40, 500, 512)]
GPU_SHAPES = [(8, 150, 40, 500, 512), (32, 250, 80, 1024, 640)]
CASES = [
    "bare",
    "warm",
    "materialized_rnnt",
    "fused_rnnt",
    "pruned",
    "materialized_tdt",
    "fused_tdt",
    "pruned_tdt",
    "warprnnt_numba",
    "fast_rnnt_full",
    "fast_rnnt_pruned",
]
DURATIONS = [0, 1, 2, 3, 4]
S_RANGE = 5


def _available(case: str) -> bool:
    import importlib.util

    if case == "warprnnt_numba":
        return importlib.util.find_spec("warprnnt_numba") is not None
    if case.startswith("fast_rnnt"):
        return importlib.util.find_spec("fast_rnnt") is not None
    return True


def _step_fn(case: str, shape: tuple[int, ...], device: str):
    """Build inputs; return a function running one forward + backward."""
    import torch

    import kernels

    B, T, U, V, H = shape
    g = torch.Generator().manual_seed(0)
    C = V + len(DURATIONS) if case.endswith("tdt") else V

    def param(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g)).to(device).requires_grad_()

    enc, pred = param(B, T, H), param(B, U + 1, H)
    weight, bias = param(C, H, scale=H**-0.5), param(C, scale=0.1)
    targets = torch.randint(1, V, (B, U), generator=g).to(device)
    enc_lens = torch.full((B,), T, dtype=torch.int64).to(device)
    tgt_lens = torch.full((B,), U, dtype=torch.int64).to(device)
    params = [enc, pred, weight, bias]

    def joint():
        return torch.tanh(enc[:, :, None, :] + pred[:, None, :, :]) @ weight.T + bias

    if case == "materialized_rnnt":
        def step():
            return kernels.rnnt_loss(joint(), targets, enc_lens, tgt_lens)
    elif case == "materialized_tdt":
        def step():
            return kernels.tdt_loss(joint(), targets, enc_lens, tgt_lens, DURATIONS)
    elif case == "fused_rnnt":
        def step():
            return kernels.fused_transducer_loss(enc, pred, weight, bias, targets, enc_lens, tgt_lens)
    elif case == "fused_tdt":
        def step():
            return kernels.fused_transducer_loss(enc, pred, weight, bias, targets, enc_lens, tgt_lens,
                                                 durations=DURATIONS)
    elif case in ("pruned", "pruned_tdt"):
        w_am, w_lm = param(V, H, scale=H**-0.5), param(V, H, scale=H**-0.5)
        params += [w_am, w_lm]
        durations = DURATIONS if case == "pruned_tdt" else None

        def step():
            out = kernels.pruned_rnnt_loss(enc, pred, enc @ w_am.T, pred @ w_lm.T, targets, enc_lens, tgt_lens,
                                           (weight, bias), s_range=S_RANGE, durations=durations)
            return out.loss
    elif case == "warprnnt_numba":
        from warprnnt_numba import RNNTLossNumba

        loss_fn = RNNTLossNumba(blank=0, reduction="mean")

        def step():
            return loss_fn(joint(), targets.int(), enc_lens.int(), tgt_lens.int())
    elif case == "fast_rnnt_full":
        import fast_rnnt

        boundary = torch.zeros(B, 4, dtype=torch.int64, device=device)
        boundary[:, 2], boundary[:, 3] = U, T

        def step():
            return fast_rnnt.rnnt_loss(joint(), targets.long(), 0, boundary, reduction="mean")
    elif case == "fast_rnnt_pruned":
        import fast_rnnt

        w_am, w_lm = param(V, H, scale=H**-0.5), param(V, H, scale=H**-0.5)
        params += [w_am, w_lm]
        boundary = torch.zeros(B, 4, dtype=torch.int64, device=device)
        boundary[:, 2], boundary[:, 3] = U, T

        def step():
            am, lm = enc @ w_am.T, pred @ w_lm.T
            simple, (px_grad, py_grad) = fast_rnnt.rnnt_loss_smoothed(
                lm=lm, am=am, symbols=targets.long(), termination_symbol=0, lm_only_scale=0.0, am_only_scale=0.0,
                boundary=boundary, reduction="mean", return_grad=True)
            ranges = fast_rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, S_RANGE)
            am_p, lm_p = fast_rnnt.do_rnnt_pruning(enc, pred, ranges)
            logits = torch.tanh(am_p + lm_p) @ weight.T + bias
            pruned = fast_rnnt.rnnt_loss_pruned(logits, targets.long(), ranges, 0, boundary, reduction="mean")
            return 0.5 * simple + pruned
    else:
        raise ValueError(f"unknown case {case!r}; expected one of {CASES}")

    def run():
        loss = step()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss), grads

    return run


def _worker(case: str, shape: tuple[int, ...], device: str, repeats: int) -> dict:
    import numba  # noqa: F401  (the bare baseline imports torch and numba)
    import torch

    if case == "bare":
        return {"case": case, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if case == "warm":  # bare + numba's LLVM initialised by one tiny loss (any numba call costs this)
        import kernels

        x = torch.zeros(1, 2, 2, 3, requires_grad=True)
        kernels.rnnt_loss(x, torch.ones(1, 1, dtype=torch.int64), torch.tensor([2]), torch.tensor([1])).backward()
        return {"case": case, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch.manual_seed(0)
    run = _step_fn(case, shape, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    loss, _ = run()  # warm-up: JIT compile, allocator caches
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out = {"case": case, "loss": loss, "time_s": statistics.median(times), "cpu_s": statistics.median(cpu),
           "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_case(case: str, shape: tuple[int, ...], device: str, repeats: int, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["NUMBA_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "kernels.bench", "--worker", case, "--shape", ",".join(map(str, shape)),
           "--device", device, "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"case": case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", help="B,T,U,V,H (default: the standard shapes for the device)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--threads", type=int, help="OMP/numba threads per case (default: all cores)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    import torch

    if args.device == "cuda" and not args.worker and not torch.cuda.is_available():
        ap.error(f"--device cuda: this torch ({torch.__version__}) sees no CUDA GPU")
    if args.shape:
        try:
            shapes = [tuple(int(x) for x in args.shape.split(","))]
        except ValueError:
            shapes = [()]
        if len(shapes[0]) != 5 or min(shapes[0]) < 1:
            ap.error(f"--shape {args.shape!r} must be B,T,U,V,H: five positive integers")
        if shapes[0][3] < 2:
            ap.error(f"--shape {args.shape!r}: V = {shapes[0][3]} leaves no token besides the blank")
    else:
        shapes = GPU_SHAPES if args.device == "cuda" else CPU_SHAPES
    if args.worker:
        print(json.dumps(_worker(args.worker, shapes[0], args.device, args.repeats)))
        return
    cases = args.cases.split(",") if args.cases else CASES
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; expected a subset of {CASES}")
    cases = [c for c in cases if c not in ("bare", "warm")]
    for shape in shapes:
        print(f"\n(B, T, U, V, H) = {shape} on {args.device}, median of {args.repeats} fwd+bwd steps")
        base = _run_case("bare", shape, args.device, 1, args.threads)["maxrss_mb"]
        warm = _run_case("warm", shape, args.device, 1, args.threads)["maxrss_mb"]
        print(f"bare process (import torch, numba): peak RSS {base:.0f} MB; "
              f"warm (+ numba JIT runtime, one tiny loss): {warm:.0f} MB")
        mem_col = "CUDA peak MB" if args.device == "cuda" else "peak RSS MB | over bare | over warm"
        print(f"{'case':<20} {'time s':>8} {'cpu s':>8}  {mem_col:<36} loss")
        for case in cases:
            if not _available(case):
                print(f"{case:<20} {'-':>8}  not installed")
                continue
            r = _run_case(case, shape, args.device, args.repeats, args.threads)
            if "error" in r:
                print(f"{case:<20} {'-':>8}  error: {r['error']}")
                continue
            mem = (f"{r['cuda_peak_mb']:.0f}" if args.device == "cuda"
                   else f"{r['maxrss_mb']:.0f} | {r['maxrss_mb'] - base:.0f} | {r['maxrss_mb'] - warm:.0f}")
            print(f"{case:<20} {r['time_s']:8.3f} {r['cpu_s']:8.3f}  {mem:<36} {r['loss']:.4f}")


if __name__ == "__main__":
    main()
