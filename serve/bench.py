"""Benchmark of the streaming runtime, and of sherpa-onnx on the same exported files.

    python -m serve.bench                      # small + medium Conformer, LSTM; fp32 + int8; 1 and 2 threads
    python -m serve.bench --tiny               # tiny models, seconds of audio: checks that it runs
    python -m serve.bench --models conformer-small --seconds 120 --long-minutes 10 --out bench.json

Method (docs/runtime.md has the details):

1. **Models.** Random-weight RNN-T transducers (BPE-500 vocabulary; stateless predictor, so
   that sherpa-onnx loads them; joint dim 320) built with ``asr.models.ASRModel`` and exported
   with ``exporters.export(int8=True)`` (our files and ``sherpa-onnx/``) in a child process, the
   only one that imports torch. A random joint emits either nothing or ten labels on every
   frame, which would time the wrong work, so the prediction network and joint are set
   (:func:`_make_emitting`, same shapes) to emit about one token per four encoder frames on the
   benchmark audio, driven by the encoder, rarely two on a frame. Models are cached in
   ``--workdir``.
2. **Audio.** Deterministic speech-like signal (tones, chirps, noise bursts and pauses), 16 kHz.
3. **Runs.** For every model, precision (fp32, int8) and thread count: our ``Recognizer``
   (greedy, no endpointing) and sherpa-onnx's ``OnlineRecognizer`` (greedy) fed the same
   100 ms pieces in turn (:func:`run_pair`: interleaved, so that the VM's drifting speed hits
   both alike), each piece followed by decoding every ready window. Both after a 2 s warm-up
   stream. Reported: RTF (compute /
   audio), per-window latency p50/p95 (one encoder window and its decoding), per-100-ms-piece
   p50/p95, tokens decoded, model size on disk (encoder + decoder + joiner), and our time /
   sherpa-onnx's time.
4. **Long stream.** One stream of ``--long-minutes`` (int8, 1 thread, ours): window latency
   p50/p95 over its first 10 s and its last 10 s of audio (flat = no growth with stream length).

Targets printed at the end: int8 RTF <= 0.05 on 1 thread for the small Conformer; our time
within 1.2x of sherpa-onnx's on every row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "synthetic_speech", "MODELS", "TINY_MODELS"]

# name -> (encoder family, encoder config (preset name or overrides), vocab size, export look-ahead ms)
MODELS: dict[str, dict] = {
    "conformer-small": {"encoder": "conformer", "preset": "small", "vocab": 500, "lookahead_ms": 80},
    "conformer-medium": {"encoder": "conformer", "preset": "medium", "vocab": 500, "lookahead_ms": 80},
    "lstm-small": {"encoder": "lstm", "preset": "small", "vocab": 500, "lookahead_ms": None},
}
TINY_MODELS: dict[str, dict] = {
    "conformer-tiny": {"encoder": "conformer", "config": dict(d_model=32, num_layers=2, num_heads=4, conv_kernel=5,
                                                              subsampling_channels=8, att_contexts=[[6, 0], [6, 1]]),
                       "vocab": 64, "lookahead_ms": 80, "joint_dim": 64},
    "lstm-tiny": {"encoder": "lstm", "config": dict(input_size=24, hidden_size=32, proj_size=16, num_layers=2, chunk_size=3),
                  "vocab": 64, "lookahead_ms": None, "joint_dim": 64},
}
TOKENS_PER_FRAME = 0.25
SR = 16000


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like 16 kHz audio: 60-250 ms segments of harmonic tones, chirps, noise bursts and
    pauses, with a slowly varying level (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    out, total = [], int(seconds * SR)
    n = 0
    while n < total:
        seg = int(rng.uniform(0.06, 0.25) * SR)
        t = np.arange(seg) / SR
        kind = rng.integers(4)
        f0 = rng.uniform(90, 300)
        if kind == 0:  # voiced: harmonics of f0
            x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12))
        elif kind == 1:
            x = np.sin(2 * np.pi * (f0 * 4 + rng.uniform(-1500, 1500) * t / max(t[-1], 1e-3) / 2) * t)
        elif kind == 2:
            x = rng.standard_normal(seg)
        else:  # pause
            x = 0.01 * rng.standard_normal(seg)
        out.append(rng.uniform(0.02, 0.3) * x * np.hanning(seg))
        n += seg
    return np.concatenate(out)[:total].astype(np.float32)


# ---------------------------------------------------------------------- export (child process, torch)
def _pseudo_text(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    syl = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]
    words = ["".join(rng.choice(syl, rng.integers(1, 4))) for _ in range(3000)]
    return [" ".join(rng.choice(words, rng.integers(4, 16))).upper() for _ in range(n)]


def _make_emitting(model, enc, lens, rate: float = TOKENS_PER_FRAME) -> dict:
    """Set the (random) prediction network and joint of ``model`` so that greedy decoding emits
    like a trained model: about ``rate`` labels per encoder frame, driven by the encoder frames,
    rarely two on one frame, and never the same label twice in a row. A random joint instead
    emits either nothing or ten labels on every frame, which would time the wrong work.

    The tokens are spread over ``G = joint_dim // 2`` groups. The stateless predictor outputs
    the one-hot vector of the last token's group (identity embedding of the group, the
    convolution passing the last position through). Group ``g`` has two joint units fed the
    same random projection of the standardized encoder frame: ``A_g`` (suppressed when the last
    token was in ``g``) and ``B_g``; ``logit_v = relu(A_g) - sum_{h != g} relu(B_h)`` for the
    tokens of ``g`` (a small random bias orders them), ``logit_blank = beta``, set by bisection
    for the rate. Shapes are the configured ones, so compute is unchanged."""
    import torch

    from asr.decoding.transducer import greedy_search

    head = model.transducer
    pred, jp = head.predictor, head.joint
    V, J = head.vocab_size, jp.enc_proj.out_features
    G = J // 2
    P = pred.output_dim
    if P < G or pred.context_size != 2 or jp.activation != "relu":
        raise ValueError("the benchmark model needs pred_dim >= joint_dim / 2, context_size 2 and a relu joint")
    g = torch.Generator().manual_seed(0)
    e = enc[0, : int(lens[0])]
    mu, sd = e.mean(0), e.std(0) + 1e-3
    u = torch.randn(G, e.shape[1], generator=g)
    u = u / u.norm(dim=1, keepdim=True) / sd
    thr = torch.quantile((e - mu) @ u.T, 0.97, dim=0)
    gain = 4.0
    group = torch.full((V,), -1, dtype=torch.long)
    group[2:] = torch.arange(V - 2) % G
    with torch.no_grad():
        emb = torch.zeros(V, P)
        emb[torch.arange(2, V), group[2:]] = 1.0
        pred.embed.weight.copy_(emb)
        w = torch.zeros_like(pred.conv.weight)  # (P, P / groups, 2)
        per = w.shape[1]
        for c in range(P):
            w[c, c % per, 1] = 1.0
        pred.conv.weight.copy_(w)
        pw = torch.zeros(J, P)
        pw[torch.arange(G), torch.arange(G)] = -1000.0
        jp.pred_proj.weight.copy_(pw)
        jp.pred_proj.bias.zero_()
        ew = torch.cat([gain * u, gain * u])
        eb = torch.cat([-gain * (u @ mu + thr)] * 2)
        jp.enc_proj.weight[: 2 * G].copy_(ew)
        jp.enc_proj.bias[: 2 * G].copy_(eb)
        jp.enc_proj.weight[2 * G :].zero_()
        jp.enc_proj.bias[2 * G :].fill_(-1.0)
        out = torch.zeros(V, J)
        for v in range(2, V):
            out[v, group[v]] = 1.0
            out[v, G : 2 * G] = -1.0
            out[v, G + group[v]] = 0.0
        jp.out.weight.copy_(out)
        jp.out.bias.copy_(0.05 * torch.randn(V, generator=g))
        jp.out.bias[1] = -100.0  # <unk>
        lo, hi = 0.0, 20.0
        for _ in range(20):
            jp.out.bias[0] = (lo + hi) / 2
            r = len(greedy_search(head, enc, lens)[0][0].tokens) / int(lens[0])
            lo, hi = ((lo + hi) / 2, hi) if r > rate else (lo, (lo + hi) / 2)
        jp.out.bias[0] = hi
        hyp = greedy_search(head, enc, lens)[0][0]
    frames = np.bincount(np.asarray(hyp.frames, dtype=np.int64)) if hyp.frames else np.zeros(1)
    return {"tokens_per_frame": round(len(hyp.tokens) / int(lens[0]), 3), "distinct_tokens": len(set(hyp.tokens)),
            "frames_with_2_or_more": int((frames > 1).sum())}


def _export_one(name: str, spec: dict, out: Path, seconds: float) -> None:
    import torch

    from asr.data.features import FeatureConfig
    from asr.data.tokenizer import Tokenizer
    from asr.encoders.presets import PRESETS
    from asr.heads.transducer import TransducerConfig
    from asr.models import ASRModel, ModelConfig
    from exporters import export, select_context

    from .features import OnlineFeatures

    torch.manual_seed(0)
    tok = Tokenizer.train(_pseudo_text(4000), vocab_size=spec["vocab"], model_type="bpe")
    enc_cfg = dict(PRESETS[spec["encoder"]][spec["preset"]]) if "preset" in spec else dict(spec["config"])
    joint = spec.get("joint_dim", 320)
    cfg = ModelConfig(encoder=spec["encoder"], encoder_config=enc_cfg, head="rnnt",
                      transducer=TransducerConfig(predictor="stateless", context_size=2, pred_dim=joint,
                                                  joint_dim=joint, activation="relu"))
    model = ASRModel(cfg, FeatureConfig(), tok).eval()
    select_context(model.encoder, spec.get("lookahead_ms"))
    f = OnlineFeatures({"sample_rate": SR})
    audio = synthetic_speech(min(seconds, 30.0), seed=1)
    feats = torch.from_numpy(np.concatenate([f.accept(audio), f.finish()]))
    with torch.no_grad():
        enc, lens = model.encode(feats[None], torch.tensor([feats.shape[0]]))
    emission = _make_emitting(model, enc, lens)
    card = export(model, out, int8=True, lookahead_ms=spec.get("lookahead_ms"))
    if "unsupported" in card["sherpa_onnx"].get("transducer", {"unsupported": "none"}):
        print(f"warning: {name}: no sherpa-onnx transducer files: {card['sherpa_onnx']['transducer']}", file=sys.stderr)
    params = sum(p.numel() for p in model.parameters())
    (out / "bench.json").write_text(json.dumps({"name": name, "spec": spec, "params": params, "emission": emission}))


def ensure_models(names: list[str], specs: dict, workdir: Path, seconds: float) -> dict[str, Path]:
    """Export every model not yet in ``workdir`` (each in a child process that imports torch)."""
    dirs = {}
    for name in names:
        out = workdir / name
        meta = out / "bench.json"
        if not (meta.is_file() and json.loads(meta.read_text()).get("spec") == json.loads(json.dumps(specs[name]))):
            print(f"exporting {name} -> {out} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, "-m", "serve.bench", "--export-one", name, "--workdir", str(workdir),
                   "--seconds", str(seconds)] + (["--tiny"] if name in TINY_MODELS else [])
            subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
        dirs[name] = out
    return dirs


# ---------------------------------------------------------------------- runs (this process: no torch)
def _pct(x, q) -> float:
    return round(float(np.percentile(np.asarray(x), q)) * 1000, 3) if len(x) else 0.0


class _Ours:
    """Our ``Recognizer`` (greedy, no endpointing) as one side of :func:`run_pair`."""

    name = "ours"

    def __init__(self, model_dir: Path, int8: bool, threads: int):
        from . import EndpointConfig, Recognizer

        self.rec = Recognizer(model_dir, int8=int8, num_threads=threads, endpoint=EndpointConfig(enabled=False))
        self.size = self.rec.model.size_bytes()

    def start(self) -> None:
        self.s = self.rec.create_stream()
        self.s.accept_waveform(SR, np.zeros(0, np.float32))  # set-up before the clock starts

    def feed(self, x: np.ndarray, windows: list) -> None:
        self.s.accept_waveform(SR, x)
        while True:
            w0 = time.perf_counter()
            if not self.rec.decode_step([self.s]):
                return
            windows.append(time.perf_counter() - w0)

    def finish(self) -> None:
        self.s.input_finished()
        self.rec.decode([self.s])

    def tokens(self) -> int:
        return len(self.s.transcript().token_ids)


class _Sherpa:
    """sherpa-onnx's ``OnlineRecognizer`` (greedy) on the export's ``sherpa-onnx/`` files."""

    name = "sherpa"

    def __init__(self, model_dir: Path, int8: bool, threads: int):
        from .sherpa import SherpaRecognizer

        sherpa = SherpaRecognizer(model_dir, int8=int8, num_threads=threads)
        if sherpa.kind != "transducer":
            raise ValueError(f"no sherpa-onnx transducer files: {sherpa.card['sherpa_onnx'].get('transducer')}")
        self.rec, self.size = sherpa.rec, sherpa.size_bytes()

    def start(self) -> None:
        self.s = self.rec.create_stream()

    def feed(self, x: np.ndarray, windows: list) -> None:
        self.s.accept_waveform(SR, x)
        while self.rec.is_ready(self.s):
            w0 = time.perf_counter()
            self.rec.decode_stream(self.s)
            windows.append(time.perf_counter() - w0)

    def finish(self) -> None:
        self.s.input_finished()
        while self.rec.is_ready(self.s):
            self.rec.decode_stream(self.s)

    def tokens(self) -> int:
        return len(self.rec.tokens(self.s))


def run_pair(model_dir: Path, audio: np.ndarray, int8: bool, threads: int, warmup: np.ndarray | None,
             sherpa: bool = True, piece: float = 0.1) -> dict[str, dict]:
    """Our runtime and sherpa-onnx on the same exported model, fed the same 100 ms pieces **in
    turn** (who goes first alternates per piece), each piece followed by decoding every ready
    window. Interleaving exposes both to the same machine: on a shared VM the speed drifts by
    tens of percent within a minute, which biases back-to-back runs. Returns per side RTF,
    window and piece p50/p95, tokens and model size (or ``{"error": ...}`` for a side that
    cannot run: sherpa-onnx missing or no transducer files)."""
    sides, out = [_Ours(model_dir, int8, threads)], {}
    if sherpa:
        try:
            sides.append(_Sherpa(model_dir, int8, threads))
        except (ImportError, ValueError, FileNotFoundError) as e:
            out["sherpa"] = {"error": str(e)}
    step = int(piece * SR)
    stats = {}
    for clip in (warmup, audio):  # the stats of the last clip (the audio) are reported
        if clip is None:
            continue
        stats = {side.name: {"pieces": [], "windows": [], "total": 0.0} for side in sides}
        for side in sides:
            side.start()
        for k, i in enumerate(range(0, len(clip), step)):
            for side in sides if k % 2 == 0 else sides[::-1]:
                st = stats[side.name]
                t0 = time.perf_counter()
                side.feed(clip[i : i + step], st["windows"])
                dt = time.perf_counter() - t0
                st["pieces"].append(dt)
                st["total"] += dt
        for side in sides:
            t0 = time.perf_counter()
            side.finish()
            stats[side.name]["total"] += time.perf_counter() - t0
    for side in sides:
        st = stats[side.name]
        out[side.name] = {"rtf": round(st["total"] / (len(audio) / SR), 4), "compute_s": round(st["total"], 4),
                          "window_ms_p50": _pct(st["windows"], 50), "window_ms_p95": _pct(st["windows"], 95),
                          "piece_ms_p50": _pct(st["pieces"], 50), "piece_ms_p95": _pct(st["pieces"], 95),
                          "windows": len(st["windows"]), "tokens": side.tokens(), "size_mb": round(side.size / 1e6, 2)}
    return out


def run_long(model_dir: Path, minutes: float, int8: bool = True, threads: int = 1, edge: float = 10.0) -> dict:
    """Window latency over the first and the last ``edge`` seconds of one long stream."""
    from . import EndpointConfig, Recognizer

    rec = Recognizer(model_dir, int8=int8, num_threads=threads, endpoint=EndpointConfig(enabled=False))
    s = rec.create_stream()
    seconds = minutes * 60
    block = synthetic_speech(60.0, seed=7)
    step = int(0.1 * SR)
    first, last, t_audio = [], [], 0.0
    done = 0
    total = int(seconds * SR)
    while done < total:
        seg = block[(done % len(block)) : (done % len(block)) + step]
        seg = seg[: total - done]
        s.accept_waveform(SR, seg)
        done += len(seg)
        while True:
            t0 = time.perf_counter()
            if not rec.decode_step([s]):
                break
            dt = time.perf_counter() - t0
            t_audio = s.seconds_decoded
            if t_audio <= edge:
                first.append(dt)
            elif t_audio >= seconds - edge - rec.window_seconds:
                last.append(dt)
    s.input_finished()
    rec.decode([s])
    return {"minutes": minutes, "first_ms_p50": _pct(first, 50), "first_ms_p95": _pct(first, 95),
            "last_ms_p50": _pct(last, 50), "last_ms_p95": _pct(last, 95),
            "last_over_first_p50": round(_pct(last, 50) / max(_pct(first, 50), 1e-9), 3),
            "tokens": len(s.transcript().token_ids)}


def main(argv: list[str] | None = None, prog: str = "python -m serve.bench") -> dict:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)} (tiny: {', '.join(TINY_MODELS)})")
    p.add_argument("--tiny", action="store_true", help="tiny models, short audio (--seconds capped at 4, --long-minutes at "
                   "0.5), 1 thread (--threads ignored): a quick check that it runs")
    p.add_argument("--seconds", type=float, default=60.0, help="audio per run (default 60)")
    p.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    p.add_argument("--long-minutes", type=float, default=10.0, help="the long stream (0: skip)")
    p.add_argument("--no-sherpa", action="store_true", help="our runtime only")
    p.add_argument("--workdir", help="exported models are cached here (default: a temp dir)")
    p.add_argument("--out", help="write the results as JSON")
    p.add_argument("--export-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    specs = {**MODELS, **TINY_MODELS}
    if not args.seconds > 0 or not args.long_minutes >= 0:
        p.error(f"--seconds must be > 0 and --long-minutes >= 0, got {args.seconds:g} and {args.long_minutes:g}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        threads = [0]
    if min(threads) < 1:
        p.error(f"--threads expects comma-separated thread counts >= 1, got {args.threads!r}")
    if args.out and Path(args.out).is_dir():
        p.error(f"--out {args.out} is a directory; give a file for the JSON")
    if args.tiny:  # a quick check: at most 4 s of audio, a 30 s long stream, 1 thread
        names = list(TINY_MODELS)
        seconds, threads, long_minutes = min(args.seconds, 4.0), [1], min(args.long_minutes, 0.5)
    else:
        names = list(MODELS)
        seconds, long_minutes = args.seconds, args.long_minutes
    if args.models:
        names = args.models.split(",")
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(specs)}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="serve-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.export_one:
        _export_one(args.export_one, specs[args.export_one], workdir / args.export_one, seconds)
        return {}

    dirs = ensure_models(names, specs, workdir, seconds)
    audio = synthetic_speech(seconds, seed=1)
    warmup = synthetic_speech(2.0, seed=3)
    rows = []
    for name in names:
        meta = json.loads((dirs[name] / "bench.json").read_text())
        card = json.loads((dirs[name] / "model.json").read_text())
        for int8 in (False, True):
            for th in threads:
                row = {"model": name, "params_m": round(meta["params"] / 1e6, 2), "precision": "int8" if int8 else "fp32",
                       "threads": th, "chunk_ms": card["shift"] * 10, "window_ms": card["window"] * 10}
                row.update(run_pair(dirs[name], audio, int8, th, warmup, sherpa=not args.no_sherpa))
                if "rtf" in row.get("sherpa", {}):
                    row["ours_over_sherpa"] = round(row["ours"]["compute_s"] / max(row["sherpa"]["compute_s"], 1e-9), 3)
                rows.append(row)
                _print_row(row)
    longs = {}
    if long_minutes > 0:
        for name in names:
            longs[name] = run_long(dirs[name], long_minutes, edge=min(10.0, long_minutes * 60 / 4))
            print(f"{name}: long stream {long_minutes:g} min (int8, 1 thread): window p50 {longs[name]['first_ms_p50']:.2f} ms "
                  f"in the first seconds, {longs[name]['last_ms_p50']:.2f} ms in the last (x{longs[name]['last_over_first_p50']})", flush=True)
    targets = _targets(rows)
    for t in targets:
        print(f"target: {t['what']}: {t['value']} -> {'PASS' if t['ok'] else 'FAIL'}")
    result = {"seconds": seconds, "rows": rows, "long": longs, "targets": targets, "workdir": str(workdir)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print_row(r: dict) -> None:
    o = r["ours"]
    line = (f"{r['model']:<17} {r['precision']:<5} {r['threads']}t  ours RTF {o['rtf']:.4f} window p50/p95 "
            f"{o['window_ms_p50']:.2f}/{o['window_ms_p95']:.2f} ms piece p50/p95 {o['piece_ms_p50']:.2f}/{o['piece_ms_p95']:.2f} ms "
            f"{o['size_mb']:.1f} MB {o['tokens']} tokens")
    s = r.get("sherpa")
    if s and "rtf" in s:
        line += (f" | sherpa RTF {s['rtf']:.4f} window p50/p95 {s['window_ms_p50']:.2f}/{s['window_ms_p95']:.2f} ms "
                 f"{s['tokens']} tokens | ours/sherpa {r['ours_over_sherpa']:.2f}")
    elif s:
        line += f" | sherpa: {s['error']}"
    print(line, flush=True)


def _targets(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if r["model"] == "conformer-small" and r["precision"] == "int8" and r["threads"] == 1:
            out.append({"what": "conformer-small int8 RTF on 1 thread <= 0.05", "value": r["ours"]["rtf"], "ok": r["ours"]["rtf"] <= 0.05})
    for r in rows:
        if "ours_over_sherpa" in r:
            out.append({"what": f"{r['model']} {r['precision']} {r['threads']}t ours/sherpa-onnx time <= 1.2",
                        "value": r["ours_over_sherpa"], "ok": r["ours_over_sherpa"] <= 1.2})
    return out


if __name__ == "__main__":
    main()
