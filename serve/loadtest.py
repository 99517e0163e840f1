"""Load test of the live server: N concurrent clients streaming speech at real-time pace.

    asr bench serve --onnx exp/model/onnx --streams 1,8,32,64 --seconds 30 --audio a.wav b.flac
    python -m serve.loadtest --onnx DIR ...             # the same
    python -m serve.loadtest --url ws://host:6006/ws    # a server that is already running

Method (docs/live.md, "Load benchmark"):

1. **Server.** ``asr serve`` started as a child process on a free port of 127.0.0.1 with the
   model options given here (or ``--url``: a running server; then no CPU figure), once for all
   levels. Its ``/stats`` counters (decode time, audio decoded, steps, streams per step) and
   its CPU time (``/proc/PID/stat``) are read before and after each level.
2. **Clients.** For each level N: N WebSocket clients in this process, each streaming
   ``--seconds`` of audio (the ``--audio`` files, 16 kHz, one per client in turn, repeated to
   length; without files, a synthetic speech-like signal) as float32 pieces of ``--piece-ms``
   (100 ms) at real-time pace: piece k is sent when its last sample would have been recorded,
   ``start + (k + 1) * piece``. The clients start spread over one piece (like unsynchronized
   microphones), then send ``end`` and wait for ``done``.
3. **Latency** (the delay a user sees between saying something and seeing it):
   - *token latency*: for every token of every result, the time its first message (partial or
     final) was received minus the time the piece holding the end of its encoder frame
     (``timestamp + frame_seconds`` of stream audio) was sent. It includes the network, the
     wait for a full window (the model's look-ahead), queueing behind other streams, and
     compute. Reported p50/p95/max over all tokens of all clients;
   - *final latency*: ``done`` received minus ``end`` sent (the tail of the audio decoded);
   - *send lag*: how late the clients sent their pieces (this process falling behind its own
     schedule); when it is large, the load generator, not the server, is the limit.
4. **Server cost**: RTF = decode time / audio seconds decoded (the decode worker), mean
   streams per batched step, CPU = server process CPU seconds / wall seconds (1.0 = one core
   busy). **Errors**: clients that got an error message, closed abnormally or failed to
   connect (the first few are listed).

The table is printed; ``--out FILE`` writes it as JSON with the machine and the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["main", "run_level", "load_audio"]

SR = 16000


def _pct(x, q: float) -> float:
    return float(np.percentile(np.asarray(x, dtype=np.float64), q)) if len(x) else float("nan")


def load_audio(paths: list[str], seconds: float) -> list[np.ndarray]:
    """Each file as 16 kHz float32 mono, repeated to ``seconds``; without files, one synthetic
    speech-like signal (``serve.bench.synthetic_speech``)."""
    n = int(round(seconds * SR))
    if not paths:
        from .bench import synthetic_speech

        return [synthetic_speech(seconds, seed=7)[:n].astype(np.float32)]
    import soundfile as sf
    from scipy.signal import resample_poly

    out = []
    for p in paths:
        try:
            x, sr = sf.read(p, dtype="float32", always_2d=True)
        except Exception as e:
            raise SystemExit(f"error: cannot read audio file {p}: {e}") from None
        x = x.mean(axis=1)
        if len(x) == 0:
            raise SystemExit(f"error: audio file {p} has no samples")
        if sr != SR:
            from math import gcd

            g = gcd(sr, SR)
            x = resample_poly(x, SR // g, sr // g).astype(np.float32)
        out.append(np.tile(x, -(-n // len(x)))[:n])
    return out


@dataclass
class ClientResult:
    token_latency: list[float] = field(default_factory=list)
    final_latency: float | None = None
    send_lag: list[float] = field(default_factory=list)
    error: str | None = None
    tokens: int = 0


async def run_client(url: str, x: np.ndarray, piece: float, delay: float) -> ClientResult:
    """One real-time client (see the module docstring for what is measured)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    res = ClientResult()
    step = int(round(piece * SR))
    n_pieces = -(-len(x) // step)
    sent_at = [0.0] * n_pieces
    await asyncio.sleep(delay)
    try:
        async with connect(url, max_size=None, open_timeout=60, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": SR, "format": "float32"}))
            ready = json.loads(await ws.recv())
            if ready.get("type") != "ready":
                res.error = ready.get("message", str(ready))
                return res
            frame = float(ready["model"]["frame_seconds"])
            seen: dict[int, int] = {}  # segment -> tokens already timed
            state = {"sent": 0, "end_at": None, "done_at": None}

            async def receive() -> None:
                async for m in ws:
                    now = time.perf_counter()
                    msg = json.loads(m)
                    kind = msg["type"]
                    if kind in ("partial", "final"):
                        stamps = msg["timestamps"]
                        for ts in stamps[seen.get(msg["segment"], 0):]:
                            k = min(int((ts + frame) / piece - 1e-9), n_pieces - 1)  # the piece holding the frame's end
                            if k < state["sent"]:
                                res.token_latency.append(now - sent_at[k])
                        seen[msg["segment"]] = max(seen.get(msg["segment"], 0), len(stamps))
                    elif kind == "done":
                        state["done_at"] = now
                    elif kind == "error":
                        res.error = msg["message"]

            reader = asyncio.create_task(receive())
            t0 = time.perf_counter()
            for k in range(n_pieces):
                due = t0 + (k + 1) * piece
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                sent_at[k] = time.perf_counter()
                res.send_lag.append(max(0.0, sent_at[k] - due))
                await ws.send(x[k * step : (k + 1) * step].astype("<f4").tobytes())
                state["sent"] = k + 1
            await ws.send(json.dumps({"type": "end"}))
            state["end_at"] = time.perf_counter()
            try:
                await asyncio.wait_for(reader, 120)
            except ConnectionClosed:
                pass
            if state["done_at"] is not None:
                res.final_latency = state["done_at"] - state["end_at"]
            if ws.close_code != 1000 and res.error is None:
                res.error = f"closed with code {ws.close_code}: {ws.close_reason}"
            res.tokens = sum(seen.values())
    except Exception as e:  # refused, reset, timed out: counted as an error of this client
        res.error = res.error or f"{type(e).__name__}: {e}"
    return res


def _stats(stats_url: str) -> dict | None:
    try:
        return json.loads(urllib.request.urlopen(stats_url, timeout=30).read())
    except Exception:
        return None


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_level(url: str, n: int, audio: list[np.ndarray], piece: float, stats_url: str | None = None,
              pid: int | None = None) -> dict:
    """N concurrent real-time clients against ``url``; one row of the table (server counters
    from ``stats_url``, CPU from process ``pid``, when given)."""
    before, cpu0, t0 = _stats(stats_url) if stats_url else None, _cpu_seconds(pid), time.perf_counter()

    async def all_clients():
        return await asyncio.gather(*[run_client(url, audio[i % len(audio)], piece, piece * i / n) for i in range(n)])

    results = asyncio.run(all_clients())
    wall = time.perf_counter() - t0
    after, cpu1 = _stats(stats_url) if stats_url else None, _cpu_seconds(pid)
    lat = [v for r in results for v in r.token_latency]
    finals = [r.final_latency for r in results if r.final_latency is not None]
    lag = [v for r in results for v in r.send_lag]
    errors = [r.error for r in results if r.error]
    row = {
        "streams": n,
        "audio_s": round(sum(len(audio[i % len(audio)]) for i in range(n)) / SR, 1),
        "wall_s": round(wall, 2),
        "errors": len(errors),
        "error_examples": errors[:3],
        "tokens": len(lat),
        "token_latency_ms_p50": round(1000 * _pct(lat, 50), 1),
        "token_latency_ms_p95": round(1000 * _pct(lat, 95), 1),
        "token_latency_ms_max": round(1000 * max(lat), 1) if lat else float("nan"),
        "final_latency_ms_p50": round(1000 * _pct(finals, 50), 1),
        "final_latency_ms_p95": round(1000 * _pct(finals, 95), 1),
        "send_lag_ms_p95": round(1000 * _pct(lag, 95), 1),
        "send_lag_ms_max": round(1000 * max(lag), 1) if lag else float("nan"),
    }
    if before and after:
        dec = after["decode_seconds"] - before["decode_seconds"]
        aud = after["audio_seconds"] - before["audio_seconds"]
        steps = after["steps"] - before["steps"]
        row["server_rtf"] = round(dec / aud, 4) if aud else float("nan")
        row["decode_busy"] = round(dec / wall, 3)  # fraction of the wall time the decode worker computed
        row["mean_batch"] = round((after["stream_windows"] - before["stream_windows"]) / steps, 2) if steps else 0.0
        row["max_batch"] = after["max_batch"]
    if cpu0 is not None and cpu1 is not None:
        row["server_cpu"] = round((cpu1 - cpu0) / wall, 3)
    return row


def _nan(v) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v}"


def print_table(rows: list[dict], header: bool = True) -> None:
    cols = [("streams", "streams"), ("errors", "errors"), ("token_latency_ms_p50", "tok p50 ms"),
            ("token_latency_ms_p95", "tok p95 ms"), ("final_latency_ms_p50", "final p50 ms"),
            ("final_latency_ms_p95", "final p95 ms"), ("server_rtf", "server RTF"), ("mean_batch", "batch"),
            ("server_cpu", "CPU cores"), ("send_lag_ms_p95", "send lag p95 ms")]
    widths = [max(len(h), 8) for _, h in cols]
    if header:
        print("  ".join(h.rjust(w) for (_, h), w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_nan(r.get(k)).rjust(w) for (k, _), w in zip(cols, widths)), flush=True)


class ServerProcess:
    """``asr serve`` as a child process on a free port; ``url``/``http_url``/``pid``."""

    def __init__(self, args: list[str], timeout: float = 180):
        cmd = [sys.executable, "-m", "asr.cli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(10)
                raise SystemExit("error: `asr serve` did not start:\n" + "".join(lines[-20:]))
            lines.append(line)
            m = re.search(r"listening on (http://\S+/)", line)
            if m:
                break
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("error: `asr serve` did not start in time:\n" + "".join(lines[-20:]))
        self.http_url = m.group(1)
        self.url = "ws" + self.http_url[4:] + "ws"
        self.pid = self.proc.pid
        self.banner = next((l.strip() for l in reversed(lines) if l.startswith("Recognizer(")), lines[-1].strip())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="asr bench serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", metavar="DIR", help="an `asr export` directory: start `asr serve` on it")
    p.add_argument("--url", help="instead of --onnx: the ws:// URL (…/ws, with ?token= if needed) of a running server")
    p.add_argument("--streams", default="1,8,32,64", help="concurrent clients per level, comma-separated (default 1,8,32,64)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per client (default 30)")
    p.add_argument("--audio", nargs="*", default=[], metavar="FILE", help="speech files, one per client in turn (default: synthetic)")
    p.add_argument("--piece-ms", type=float, default=100.0, help="audio per message (default 100)")
    p.add_argument("--int8", action="store_true", help="with --onnx: the *.int8.onnx files")
    p.add_argument("--threads", type=int, default=1, help="with --onnx: onnxruntime threads of the server")
    p.add_argument("--use-ctc", action="store_true", help="with --onnx: a hybrid's CTC head")
    p.add_argument("--method", choices=["greedy", "beam"], default="greedy", help="with --onnx: decoding method")
    from asr.cli import _check_lm_args, _lm_args  # `asr serve`'s LM options, passed on (asr.cli imports no torch)

    _lm_args(p)
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    if (args.onnx is None) == (args.url is None):
        raise SystemExit("error: give --onnx DIR (start a server) or --url ws://HOST:PORT/ws (a running one)")
    if args.url and args.lm:
        raise SystemExit("error: --lm applies to --onnx (the server this starts); a running server has its own")
    _check_lm_args(args)
    try:
        levels = [int(s) for s in args.streams.split(",")]
    except ValueError:
        raise SystemExit(f"error: --streams expects comma-separated integers, got {args.streams!r}") from None
    if not levels or min(levels) < 1:
        raise SystemExit(f"error: --streams must be positive, got {args.streams!r}")
    if not args.seconds > 0 or not args.piece_ms > 0:
        raise SystemExit("error: --seconds and --piece-ms must be positive")
    audio = load_audio(args.audio, args.seconds)
    server = None
    if args.onnx:
        opts = ["--onnx", args.onnx, "--threads", str(args.threads), "--method", args.method,
                "--max-connections", str(max(levels) + 8), "--max-stream-seconds", str(args.seconds + 60)]
        opts += ["--int8"] * args.int8 + ["--use-ctc"] * args.use_ctc
        if args.lm:
            opts += ["--lm", args.lm, "--lm-unit", args.lm_unit, "--lm-weight", str(args.lm_weight),
                     "--token-bonus", str(args.token_bonus)]
        server = ServerProcess(opts, timeout=900 if args.lm else 180)  # a LibriSpeech-size LM loads first
        url, stats_url, pid = server.url, server.http_url + "stats", server.pid
        print(f"server: {server.banner} (pid {pid}) at {url}", flush=True)
    else:
        from urllib.parse import urlsplit, urlunsplit

        u = urlsplit(args.url)
        url, pid = args.url, None
        stats_url = urlunsplit(("https" if u.scheme == "wss" else "http", u.netloc, "/stats", u.query, ""))
    rows = []
    try:
        print(f"{args.seconds:g} s of {'speech from ' + str(len(args.audio)) + ' file(s)' if args.audio else 'synthetic audio'} "
              f"per client, {args.piece_ms:g} ms pieces at real-time pace", flush=True)
        for n in levels:
            rows.append(run_level(url, n, audio, args.piece_ms / 1000, stats_url, pid))
            print_table(rows[-1:], header=len(rows) == 1)
            for e in rows[-1]["error_examples"]:
                print(f"  error: {e}", flush=True)
            if rows[-1]["errors"] == n:
                break  # every client failed: the next levels would too
    finally:
        if server is not None:
            server.close()
    print()
    print_table(rows)
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "processor": platform.processor()},
        "settings": {k: v for k, v in vars(args).items() if k != "url"} | {"server": server.banner if server else _without_token(args.url)},
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(_nan_to_none(result), indent=2, allow_nan=False) + "\n")
        print(f"-> {args.out}")
    if rows and rows[-1]["errors"] == rows[-1]["streams"]:
        raise SystemExit(f"error: all {rows[-1]['streams']} client(s) failed (above); is the server at {_without_token(url)} running?")
    return result


def _without_token(url: str) -> str:
    """``url`` with the value of its ``token=`` (a secret) replaced by ``***``, for reports."""
    return re.sub(r"(token=)[^&#]*", r"\1***", url)


def _nan_to_none(x):
    """JSON has no NaN: a statistic of nothing (no tokens at a level) is written as null."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


if __name__ == "__main__":
    main()
