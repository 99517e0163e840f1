"""Decoding speed: RNN-T vs TDT greedy (label looping) and modified beam search, as RTFx.

    python -m asr.decoding.bench --device cuda --batch 32 --seconds 10

Random heads decode random encoder output; ``--blank-bias`` sets how often they emit a label
(the printed labels/frame should look like a trained model's: about 0.2-0.5 for BPE at 40 ms
frames). For a trained model call :func:`time_decoder` with its head and encoder output, and
:func:`count_greedy_steps` for what its greedy search did (joint calls; a TDT's decisions by
kind and duration: whether it skips frames at all).
RTFx = audio seconds decoded per wall-clock second (decoding only, encoder excluded).
"""

from __future__ import annotations

import argparse
import time

import torch

from asr.heads.transducer import TransducerConfig, TransducerHead

from .beam import modified_beam_search
from .transducer import greedy_search

__all__ = ["count_greedy_steps", "time_decoder"]


def time_decoder(fn, head, enc, enc_lens, frame_shift_s: float, repeats: int = 3, **kw) -> dict:
    """Best-of-``repeats`` wall time of ``fn(head, enc, enc_lens, **kw)`` (after one warm-up
    call), with RTFx and emitted labels per frame."""
    sync = torch.cuda.synchronize if enc.is_cuda else (lambda: None)
    hyps, _ = fn(head, enc, enc_lens, **kw)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn(head, enc, enc_lens, **kw)
        sync()
        best = min(best, time.perf_counter() - t0)
    frames = int(enc_lens.sum())
    return {
        "seconds": best,
        "rtfx": frames * frame_shift_s / best,
        "labels_per_frame": sum(len(h.tokens) for h in hyps) / max(1, frames),
    }


def count_greedy_steps(head, enc, enc_lens, **kw) -> dict:
    """What one :func:`greedy_search` of ``head`` over ``enc`` did: ``joint_calls`` (each over
    the whole batch; what frame skipping saves) and, for a TDT head and one utterance
    (``enc`` of batch 1), ``decisions``: its steps by kind and duration, e.g. ``{"label 1": 40,
    "blank 2": 7}`` (a blank's duration 0 advances one frame and counts as 1; the call made
    past the last frame is not a decision). Otherwise ``decisions`` is None."""
    calls = 0
    picks: list[tuple[bool, int]] = []
    tdt = head.durations is not None and enc.shape[0] == 1
    joint_forward = head.joint.forward

    def counting(*a, **k):
        nonlocal calls
        calls += 1
        out = joint_forward(*a, **k)
        if tdt:
            V = head.vocab_size
            picks.append((int(out[0, :V].argmax()) == head.blank, head.durations[int(out[0, V:].argmax())]))
        return out

    head.joint.forward = counting
    try:
        greedy_search(head, enc, enc_lens, **kw)
    finally:
        del head.joint.forward
    if not tdt:
        return {"joint_calls": calls, "decisions": None}
    # replay the search's frame pointer (transducer.greedy_search's rules) to drop the last look
    max_symbols = kw.get("max_symbols", 10)
    decisions: dict[str, int] = {}
    t, T, count = 0, int(enc_lens[0]), 0
    for is_blank, d in picks:
        if t >= T:
            break
        step = max(d, 1) if is_blank else d
        key = f"{'blank' if is_blank else 'label'} {step}"
        decisions[key] = decisions.get(key, 0) + 1
        t += step
        count = 0 if (is_blank or d > 0) else count + 1
        if count >= max_symbols:
            t, count = t + 1, 0
    return {"joint_calls": calls, "decisions": dict(sorted(decisions.items()))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    ap.add_argument("--frame-shift", type=float, default=0.04, help="encoder frame shift in seconds")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--enc-dim", type=int, default=256)
    ap.add_argument("--blank-bias", type=float, default=1.0)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    T = round(args.seconds / args.frame_shift)
    enc = torch.randn(args.batch, T, args.enc_dim, device=device)
    lens = torch.randint(T // 2, T + 1, (args.batch,), device=device)
    lens[0] = T
    print(f"device {device}, batch {args.batch}, {T} frames ({args.seconds:g} s), V={args.vocab}")
    for kind in ("rnnt", "tdt"):
        torch.manual_seed(args.seed)
        head = TransducerHead(kind, args.enc_dim, args.vocab, TransducerConfig()).to(device).eval()
        with torch.no_grad():
            head.joint.out.bias[head.blank] += args.blank_bias
        runs = [("greedy", greedy_search, {}), (f"beam{args.beam}", modified_beam_search, {"beam": args.beam})]
        for name, fn, kw in runs:
            r = time_decoder(fn, head, enc, lens, args.frame_shift, args.repeats, **kw)
            print(f"{kind:5s} {name:8s} {r['seconds'] * 1e3:9.1f} ms  RTFx {r['rtfx']:9.1f}  "
                  f"labels/frame {r['labels_per_frame']:.2f}")


if __name__ == "__main__":
    main()
