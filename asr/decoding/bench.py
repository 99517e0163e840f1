"""Decoding speed: RNN-T vs TDT greedy (label looping) and modified beam search, as RTFx.

    python -m asr.decoding.bench --device cuda --batch 32 --seconds 10

Random heads decode random encoder output; ``--blank-bias`` sets how often they emit a label
(the printed labels/frame should look like a trained model's: about 0.2-0.5 for BPE at 40 ms
frames). For a trained model call :func:`time_decoder` with its head and encoder output.
RTFx = audio seconds decoded per wall-clock second (decoding only, encoder excluded).
"""

from __future__ import annotations

import argparse
import time

import torch

from asr.heads.transducer import TransducerConfig, TransducerHead

from .beam import modified_beam_search
from .transducer import greedy_search

__all__ = ["time_decoder"]


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
