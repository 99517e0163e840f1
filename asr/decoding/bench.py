"""Decoding speed: RNN-T vs TDT greedy (label looping) and modified beam search, as RTFx.

    python -m asr.decoding.bench --device cuda --batch 32 --seconds 10

Random heads decode random encoder output; ``--blank-bias`` sets how often they emit a label
(the printed labels/frame should look like a trained model's: about 0.2-0.5 for BPE at 40 ms
frames). For a trained model call :func:`time_decoder` with its head and encoder output, and
:func:`count_greedy_steps` for what its greedy search did (joint calls; a TDT's decisions by
kind and duration: whether it skips frames at all); from the shell:

    python -m asr.decoding.bench --model exp/mini/conformer/model.pt --context 128,12 --cuts data/mini/manifests/cuts_test-seen.jsonl.gz

RTFx = audio seconds decoded per wall-clock second (decoding only, encoder excluded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from asr.heads.transducer import TransducerConfig, TransducerHead

from .beam import modified_beam_search
from .transducer import greedy_search

__all__ = ["count_greedy_steps", "count_model_steps", "time_decoder"]


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
    """What one :func:`greedy_search` of ``head`` over ``enc`` did: ``joint_calls`` (what
    frame skipping saves; under label looping, ``loop="label"``, each call is over the whole
    batch, row by row each is one utterance's) and, for a TDT head and one utterance
    (``enc`` of batch 1), ``decisions``: its steps by kind and duration, e.g. ``{"label 1": 40,
    "blank 2": 7}`` (a blank's duration 0 advances one frame and counts as 1). Otherwise
    ``decisions`` is None. A batch may call the joint once more per utterance, past its last
    frame (label looping evaluates the whole batch); one utterance never does."""
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

    head.joint.forward = counting  # the batched loop's joint
    head.joint.forward_fn = lambda: counting  # the one-stream path's
    try:
        greedy_search(head, enc, enc_lens, **kw)
    finally:
        del head.joint.forward, head.joint.forward_fn
    if not tdt:
        return {"joint_calls": calls, "decisions": None}
    decisions: dict[str, int] = {}  # one utterance: greedy_search's scalar path makes one call per decision
    for is_blank, d in picks:
        key = f"blank {max(d, 1)}" if is_blank else f"label {d}"
        decisions[key] = decisions.get(key, 0) + 1
    return {"joint_calls": calls, "decisions": dict(sorted(decisions.items()))}


def count_model_steps(model_path: Path, manifests: list[Path], max_cuts: int | None = None,
                      context: str | None = None, device: str = "cpu") -> dict:
    """:func:`count_greedy_steps` of a trained transducer over cut manifests, one utterance at
    a time (what a streaming server does per stream); printed and returned per manifest."""
    from lhotse import CutSet

    from asr.cli import _set_context
    from asr.data.dataset import ASRDataset, SamplerConfig, make_sampler
    from asr.data.manifests import read_cut_manifest
    from asr.models import load

    model = load(model_path).to(device)
    if model.transducer is None:
        raise SystemExit(f"{model_path} has no transducer head (a {model.config.head} model): nothing to count")
    setting = _set_context(model, context)
    ds = ASRDataset(model.tokenizer, model.features, None)
    print(f"{model_path}: {model.config.encoder} {model.config.head}{setting}; greedy search, one utterance at a time")
    out = {}
    for manifest in manifests:
        cuts = read_cut_manifest(manifest)
        if max_cuts:
            cuts = cuts.subset(first=max_cuts)
        total = {"utterances": 0, "frames": 0, "joint_calls": 0}
        decisions: dict[str, int] = {}
        for batch in make_sampler(cuts, SamplerConfig(max_duration=120), train=False):
            b = ds[batch]
            with torch.inference_mode():
                enc, lens = model.encode(b["features"].to(device), b["feature_lens"].to(device))
                for i in range(len(lens)):
                    r = count_greedy_steps(model.transducer, enc[i : i + 1, : int(lens[i])], lens[i : i + 1])
                    total["utterances"] += 1
                    total["frames"] += int(lens[i])
                    total["joint_calls"] += r["joint_calls"]
                    for k, n in (r["decisions"] or {}).items():
                        decisions[k] = decisions.get(k, 0) + n
        total["decisions"] = dict(sorted(decisions.items())) if model.transducer.durations is not None else None
        out[str(manifest)] = total
        line = f"{manifest}: {total['utterances']} utterances, {total['frames']} frames, {total['joint_calls']} joint calls"
        if total["decisions"] is not None:
            line += "; decisions: " + ", ".join(f"{k}: {n}" for k, n in total["decisions"].items())
        print(line)
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
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
    ap.add_argument("--model", type=Path, help="a trained transducer model: instead of timing random heads, count "
                    "what its greedy search does on --cuts, one utterance at a time (joint calls; a TDT's "
                    "decisions by kind and duration)")
    ap.add_argument("--cuts", type=Path, nargs="+", help="lhotse cut manifests for --model")
    ap.add_argument("--max-cuts", type=int, help="only the first N cuts of each manifest")
    ap.add_argument("--context", help="LEFT,RIGHT attention context of a Conformer --model (default: the model's)")
    args = ap.parse_args(argv)
    for name in ("batch", "beam", "repeats", "vocab", "enc_dim"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.seconds > 0 and args.frame_shift > 0):
        ap.error(f"--seconds and --frame-shift must be > 0, got {args.seconds} and {args.frame_shift}")
    if round(args.seconds / args.frame_shift) < 1:
        ap.error(f"--seconds {args.seconds:g} is less than one frame of {args.frame_shift:g} s")
    if args.max_cuts is not None and args.max_cuts < 1:
        ap.error(f"--max-cuts must be >= 1, got {args.max_cuts}")
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1 ...)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    if args.model is not None:
        if not args.cuts:
            ap.error("--model needs --cuts")
        for path in (args.model, *args.cuts):
            if not path.is_file():
                ap.error(f"{path}: no such file")
        try:
            return count_model_steps(args.model, args.cuts, args.max_cuts, args.context, args.device)
        except ValueError as e:  # a file that is not a model, a manifest that does not parse
            ap.error(str(e))
    if args.cuts or args.max_cuts or args.context:
        ap.error("--cuts, --max-cuts and --context apply to a trained --model; without one, random heads are timed")

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
            if name == "greedy" and not 0.1 <= r["labels_per_frame"] <= 1.0:
                print(f"      (random heads emit {r['labels_per_frame']:.2f} labels per frame here, unlike a trained model's "
                      "0.2-0.5: the timings say little about a real search; try another --blank-bias, or time a "
                      "trained --model)")


if __name__ == "__main__":
    main()
