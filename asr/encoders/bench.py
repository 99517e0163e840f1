"""Encoder benchmark: whole-utterance throughput and streaming per-window latency.

    python -m asr.encoders.bench                          # all families, small and medium
    python -m asr.encoders.bench --families conformer lstm --presets small --threads 4
    python -m asr.encoders.bench --table                  # parameter counts only
    python -m asr.encoders.bench --json out.json --device cuda

For every family and preset (random weights; speed does not depend on them):

- ``throughput``: audio seconds per wall second of ``forward`` over a batch of utterances;
- ``p50_ms`` / ``p95_ms``: wall time of one ``forward_chunk`` call (batch 1) while streaming;
- ``at_10s_ms`` / ``at_long_ms``: median ``forward_chunk`` time just after 10 s and just after
  ``--long-minutes`` (default 10) of streamed audio. State shapes are fixed, so the two should
  match (flat latency).

Numbers are only meaningful on an otherwise idle machine; the header records the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import torch

from asr.encoders.presets import FAMILIES, PRESETS, build_encoder, count_parameters, parameter_table

__all__ = ["bench_encoder", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


@torch.no_grad()
def bench_encoder(
    name: str,
    preset: str,
    device: str = "cpu",
    batch: int = 8,
    utt_seconds: float = 10.0,
    latency_windows: int = 50,
    long_minutes: float = 10.0,
    context: tuple[int, int] | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure one family/preset; returns a row of the results table (times in ms)."""
    dev = torch.device(device)
    enc = build_encoder(name, preset=preset).to(dev).eval()
    if context is not None and hasattr(enc, "set_context"):
        enc.set_context(*context)
    p = enc.streaming_params()
    frames = int(utt_seconds * 100)
    x = torch.randn(batch, frames, enc.input_dim, device=dev)
    lens = torch.full((batch,), frames, dtype=torch.int64, device=dev)
    enc(x, lens)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        enc(x, lens)
    _sync(dev)
    throughput = batch * utt_seconds * repeats / (time.perf_counter() - t0)

    window, shift = p["window"], p["shift"]
    chunk = torch.randn(1, window, enc.input_dim, device=dev)
    clens = torch.tensor([window], device=dev)
    state = enc.init_state(1)

    def step() -> float:
        nonlocal state
        _sync(dev)
        t = time.perf_counter()
        _, _, state = enc.forward_chunk(chunk, clens, state)
        _sync(dev)
        return (time.perf_counter() - t) * 1000

    for _ in range(3):
        step()
    streamed = 3 * shift
    times = [step() for _ in range(latency_windows)]
    streamed += latency_windows * shift
    while streamed < 1000:  # 10 s
        step()
        streamed += shift
    at_10s = [step() for _ in range(20)]
    streamed += 20 * shift
    while streamed < long_minutes * 60 * 100:
        step()
        streamed += shift
    at_long = [step() for _ in range(20)]
    return {
        "family": name,
        "preset": preset,
        "params_M": round(count_parameters(enc) / 1e6, 2),
        "window_ms": p["window"] * p["frame_shift_ms"],
        "shift_ms": p["shift"] * p["frame_shift_ms"],
        "throughput": round(throughput, 1),
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(_pct(times, 0.95), 2),
        "at_10s_ms": round(statistics.median(at_10s), 2),
        "at_long_ms": round(statistics.median(at_long), 2),
        "state_numel": sum(s.numel() for s in state),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    s = f"{platform.system()} {cpu}, {os.cpu_count()} cpus, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        s += f", {torch.cuda.get_device_name(0)}"
    return s


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="python -m asr.encoders.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--presets", nargs="+", default=["small", "medium"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--utt-seconds", type=float, default=10.0)
    ap.add_argument("--latency-windows", type=int, default=50)
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--context", default=None, help="conformer left,right in encoder frames, e.g. 70,6")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--table", action="store_true", help="print the parameter table and exit")
    args = ap.parse_args(argv)
    if args.table:
        return parameter_table(args.families)
    for name in ("threads", "batch", "latency_windows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("utt_seconds", "long_minutes"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for fam in args.families:
        unknown = [p for p in args.presets if p not in PRESETS.get(fam, {})]
        if unknown:
            ap.error(f"no preset {', '.join(unknown)} for {fam} (its presets: {', '.join(PRESETS.get(fam, {}))}); "
                     "pick --families and --presets that go together")
    if args.threads:
        torch.set_num_threads(args.threads)
    context = None
    if args.context:
        if args.families != ["conformer"]:
            ap.error("--context sets the Conformer's attention context: use it with --families conformer")
        try:
            left, right = (int(v) for v in args.context.split(","))
        except ValueError:
            ap.error(f"--context must be LEFT,RIGHT encoder frames (e.g. 70,6), got {args.context!r}")
        if left < 0 or right < 0:
            ap.error(f"--context must be non-negative, got {args.context!r}")
        context = (left, right)
    print(f"# machine: {machine()}")
    rows = []
    cols = ["family", "preset", "params_M", "window_ms", "throughput", "p50_ms", "p95_ms", "at_10s_ms", "at_long_ms"]
    print(" ".join(f"{c:>11}" for c in cols))
    for fam in args.families:
        for preset in args.presets:
            row = bench_encoder(
                fam,
                preset,
                device=args.device,
                batch=args.batch,
                utt_seconds=args.utt_seconds,
                latency_windows=args.latency_windows,
                long_minutes=args.long_minutes,
                context=context,
            )
            rows.append(row)
            print(" ".join(f"{row[c]!s:>11}" for c in cols), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
