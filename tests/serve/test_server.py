"""The WebSocket server (serve/server.py) with a real trained model: transcripts over the socket
equal the Recognizer's, streams are batched, every fault closes only its own connection."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from serve import Recognizer
from serve.server import ServerConfig, is_loopback

from .conftest import ServerThread, cer, read_wav

pytest.importorskip("websockets", minversion="13")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rec(live_model):
    return Recognizer(live_model.onnx_dir)  # the default endpoint rules, as `asr serve`


@pytest.fixture(scope="module")
def audio(live_model, rec):
    """[(samples, reference, offline transcript)] for the six utterances (offline: the
    Recognizer on the whole recording, computed before any server runs)."""
    out = []
    for path, ref in live_model.utterances:
        x = read_wav(path)
        out.append((x, ref, rec.transcribe(x).text))
    return out


@dataclass
class Client:
    """What one connection saw."""

    messages: list[dict] = field(default_factory=list)
    code: int | None = None
    reason: str = ""

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    @property
    def text(self) -> str:
        return " ".join(m["text"] for m in self.of("final") if m["text"])

    @property
    def error(self) -> str:
        errs = self.of("error")
        return errs[0]["message"] if errs else ""


async def _collect(ws, client: Client) -> None:
    try:
        async for m in ws:
            client.messages.append(json.loads(m))
    except ConnectionClosed:
        pass
    client.code, client.reason = ws.close_code, ws.close_reason


async def stream(url: str, x: np.ndarray, rate: int = 16000, fmt: str = "float32", piece: float = 0.1,
                 pace: float = 0.0, end: bool = True, start: dict | None = None, wait_close: float = 60,
                 ssl=None) -> Client:
    """Send ``x`` (float samples) as a client would: start, pieces of ``piece`` seconds with
    ``pace`` seconds between them, end; collect every message until the server closes.
    ``ssl``: the client's SSLContext for a wss:// url."""
    client = Client()
    async with connect(url, max_size=None, open_timeout=30, ssl=ssl) as ws:
        await ws.send(json.dumps(start or {"type": "start", "sample_rate": rate, "format": fmt}))
        reader = asyncio.create_task(_collect(ws, client))
        step = int(round(piece * rate))
        try:
            for i in range(0, len(x), step):
                y = x[i : i + step]
                await ws.send(np.round(y * 32768).clip(-32768, 32767).astype("<i2").tobytes() if fmt == "int16"
                              else y.astype("<f4").tobytes())
                if pace:
                    await asyncio.sleep(pace)
            if end:
                await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        await asyncio.wait_for(reader, wait_close)
    return client


async def raw(url: str, *messages, wait_close: float = 30, **kw) -> Client:
    """Send these messages (str or bytes) as they are, then collect until the server closes."""
    client = Client()
    async with connect(url, max_size=None, open_timeout=30, **kw) as ws:
        reader = asyncio.create_task(_collect(ws, client))
        try:
            for m in messages:
                await ws.send(m)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(reader, wait_close)
    return client


def settled(srv: ServerThread, timeout: float = 10) -> dict:
    """The server's stats once every connection's handler has finished (a client sees the
    close a moment before the server has cleaned up)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        stats = srv.server.stats()
        if (stats["open"] == 0 and stats["decoding"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def check_protocol(c: Client) -> None:
    """ready first, done last, a final closing every segment 0..n-1 in order, partials only
    for the open segment, code 1000."""
    types = [m["type"] for m in c.messages]
    assert c.code == 1000 and c.reason == "done", (c.code, c.reason, c.error)
    assert types[0] == "ready" and types[-1] == "done" and types.count("done") == 1, types
    finals = c.of("final")
    assert [f["segment"] for f in finals] == list(range(len(finals))) == list(range(c.of("done")[0]["segments"]))
    seg = 0
    for m in c.messages[1:-1]:
        assert m["segment"] == seg, (m, seg)
        if m["type"] == "final":
            seg += 1
        else:
            assert m["type"] == "partial" and m["text"] and len(m["tokens"]) == len(m["timestamps"]), m
    for a, b in zip(c.of("partial"), c.of("partial")[1:]):
        assert (a["segment"], a["text"]) != (b["segment"], b["text"]), "a partial repeats unchanged"


def test_transcript_over_the_socket_equals_the_recognizer(rec, audio):
    x, ref, offline = audio[0]
    with ServerThread(rec) as srv:
        c = asyncio.run(stream(srv.ws_url, x, pace=0.005))
        c16 = asyncio.run(stream(srv.ws_url, x, fmt="int16", piece=0.037))
    check_protocol(c)
    check_protocol(c16)
    ready = c.messages[0]
    assert ready["sample_rate"] == 16000 and ready["model_sample_rate"] == 16000 and ready["model"]["head"] == "ctc"
    assert ready["limits"]["max_connections"] == ServerConfig().max_connections
    assert c.text == offline and c.text.strip(), (c.text, offline)
    assert c16.text == offline  # the PCM-16 WAV's samples are exact in int16
    assert cer(ref, c.text) < 0.5, (ref, c.text)  # real recognition, not just equal to a broken offline
    assert len(c.of("partial")) >= 3  # the text grew while the audio streamed
    final_tokens = [t for f in c.of("final") for t in f["tokens"]]
    assert final_tokens == rec.transcribe(x).tokens
    assert c.of("done")[0]["audio_seconds"] == pytest.approx(len(x) / 16000, abs=1e-3)


def test_concurrent_clients_get_their_own_transcripts_in_batched_calls(rec, audio):
    sizes: list[int] = []
    decode_step = rec.decode_step

    def counting(streams):
        ran = decode_step(streams)
        sizes.append(len(ran))
        return ran

    rec.decode_step = counting
    try:
        with ServerThread(rec) as srv:
            async def main():
                return await asyncio.gather(*[stream(srv.ws_url, x) for x, _, _ in audio])

            clients = asyncio.run(main())
            stats = settled(srv)
    finally:
        del rec.decode_step
    for c, (x, ref, offline) in zip(clients, audio):
        check_protocol(c)
        assert c.text == offline, (c.text, offline)
        others = [r for _, r, _ in audio if r != ref]
        assert cer(ref, c.text) < min(cer(o, c.text) for o in others), "a transcript matches another stream better"
    ran = [n for n in sizes if n]
    assert max(ran) >= 3, sizes  # several streams in one encoder call
    assert sum(ran) == stats["stream_windows"] and stats["max_batch"] == max(ran)
    windows = 0  # one stream at a time: the windows each runs
    for x, _, _ in audio:
        s = rec.create_stream()
        s.accept_waveform(16000, x)
        s.input_finished()
        rec.decode(s)
        windows += s.windows_run
    assert sum(ran) == windows and len(ran) < windows, (len(ran), sum(ran), windows)  # none run twice or lost
    assert stats["completed"] == len(audio) and stats["errors"] == 0 and stats["open"] == 0


def test_48k_client_is_resampled(rec, audio):
    from scipy.signal import resample_poly

    x, _, offline = audio[1]
    with ServerThread(rec) as srv:
        c = asyncio.run(stream(srv.ws_url, resample_poly(x, 3, 1).astype(np.float32), rate=48000))
    check_protocol(c)
    assert c.messages[0]["sample_rate"] == 48000
    assert cer(offline, c.text) < 0.15, (offline, c.text)


FAULT_LIMITS = ServerConfig(port=0, max_message_bytes=64 * 1024, idle_timeout=1.5, max_stream_seconds=8.0,
                            max_buffered_seconds=2.0)


def _faults(url: str, x: np.ndarray) -> dict:
    """name -> a client coroutine that commits that fault (EXPECTED says what it must get)."""
    start = json.dumps({"type": "start", "sample_rate": 16000, "format": "float32"})
    start16 = json.dumps({"type": "start", "sample_rate": 16000, "format": "int16"})
    speech16 = np.round(x[:3200] * 32768).astype("<i2").tobytes()
    nan = x[:1600].copy()
    nan[700] = np.nan
    inf = x[:1600].copy()
    inf[3] = np.inf
    loud = x[:1600].copy()
    loud[10] = 5.0
    return {
        "malformed_json": raw(url, "{not json"),
        "malformed_json_after_start": raw(url, start, x[:1600].tobytes(), '{"type": "end"'),
        "not_an_object": raw(url, "[1, 2]"),
        "unknown_type": raw(url, start, json.dumps({"type": "pause"})),
        "unknown_first_type": raw(url, json.dumps({"type": "hello"})),
        "end_before_start": raw(url, json.dumps({"type": "end"})),
        "frame_before_start": raw(url, x[:1600].astype("<f4").tobytes()),
        "start_twice": raw(url, start, start),
        "wrong_format": raw(url, json.dumps({"type": "start", "sample_rate": 16000, "format": "float64"})),
        "int16_sent_as_float32": raw(url, start, speech16),
        "float32_partial_sample": raw(url, start, x[:1600].astype("<f4").tobytes()[:-2]),
        "odd_int16_frame": raw(url, start16, b"\x01\x02\x03"),
        "oversized_frame": raw(url, start, x[:16000].tobytes(), np.zeros(20000, "<f4").tobytes()),  # 80 000 bytes > 64 KiB
        "oversized_after_end": raw(url, start, x[:16000].tobytes(), json.dumps({"type": "end"}),
                                   np.zeros(20000, "<f4").tobytes()),
        "rate_zero": raw(url, json.dumps({"type": "start", "sample_rate": 0, "format": "float32"})),
        "rate_negative": raw(url, json.dumps({"type": "start", "sample_rate": -16000, "format": "float32"})),
        "rate_nan": raw(url, '{"type": "start", "sample_rate": NaN, "format": "float32"}'),
        "rate_string": raw(url, json.dumps({"type": "start", "sample_rate": "16k", "format": "float32"})),
        "rate_too_high": raw(url, json.dumps({"type": "start", "sample_rate": 10**7, "format": "float32"})),
        "rate_missing": raw(url, json.dumps({"type": "start", "format": "float32"})),
        "rate_beyond_float": raw(url, json.dumps({"type": "start", "sample_rate": 10**400, "format": "float32"})),
        "rate_too_fine": raw(url, json.dumps({"type": "start", "sample_rate": 191999, "format": "float32"})),
        "format_not_a_string": raw(url, json.dumps({"type": "start", "sample_rate": 16000, "format": [1]})),
        "json_too_deep": raw(url, '{"type": "start", "sample_rate": ' + "[" * 20000 + "}"),
        "nan_samples": raw(url, start, x[:1600].tobytes(), nan.tobytes()),
        "inf_samples": raw(url, start, inf.tobytes()),
        "out_of_range_samples": raw(url, start, loud.tobytes()),
        "idle_before_start": raw(url),
        "idle_mid_stream": raw(url, start, x[:16000].tobytes()),
        "message_after_end": raw(url, start, x[:16000].tobytes(), json.dumps({"type": "end"}), x[:1600].tobytes()),
        "too_long": stream(url, np.tile(x, 2)[: 16000 * 9], pace=0.0),
    }


EXPECTED = {  # name: (close code, words the error message must contain)
    "malformed_json": (1007, ["malformed JSON"]),
    "malformed_json_after_start": (1007, ["malformed JSON"]),
    "not_an_object": (1003, ["JSON object"]),
    "unknown_type": (1003, ["unknown message type", "pause"]),
    "unknown_first_type": (1003, ["unknown message type", "hello"]),
    "end_before_start": (1008, ["before start"]),
    "frame_before_start": (1008, ["audio frame before the start"]),
    "start_twice": (1008, ["start sent twice"]),
    "wrong_format": (1007, ["format", "float64"]),
    "int16_sent_as_float32": (1007, ["int16"]),
    "float32_partial_sample": (1007, ["float32 samples"]),
    "odd_int16_frame": (1007, ["odd length", "int16"]),
    "oversized_frame": (1009, ["max_message_bytes"]),
    "oversized_after_end": (1009, ["max_message_bytes"]),
    "rate_zero": (1007, ["sample_rate", "positive"]),
    "rate_negative": (1007, ["sample_rate", "positive"]),
    "rate_nan": (1007, ["sample_rate", "nan"]),
    "rate_string": (1007, ["sample_rate", "16k"]),
    "rate_too_high": (1007, ["sample_rate", "10000000"]),
    "rate_missing": (1007, ["sample_rate"]),
    "rate_beyond_float": (1007, ["sample_rate", "positive"]),
    "rate_too_fine": (1007, ["191999 Hz", "common rate"]),
    "format_not_a_string": (1007, ["format", "[1]"]),
    "json_too_deep": (1007, ["malformed JSON"]),
    "nan_samples": (1007, ["NaN", "1600 samples", "2300 of the stream"]),
    "inf_samples": (1007, ["NaN or inf"]),
    "out_of_range_samples": (1007, ["[-1, 1]", "got 5 at", "sample 10 "]),
    "idle_before_start": (1008, ["idle_timeout"]),
    "idle_mid_stream": (1008, ["idle_timeout"]),
    "message_after_end": (1008, ["message after end"]),
    "too_long": (1008, ["max_stream_seconds", "first 8.0 s were sent"]),
}
KEEP_AUDIO = {"idle_mid_stream": 16000, "message_after_end": 16000, "too_long": 8 * 16000, "oversized_frame": 16000,
              "oversized_after_end": 16000}  # samples decoded first


def test_faults_close_only_their_own_connection(rec, audio):
    x0 = audio[0][0]
    with ServerThread(rec, FAULT_LIMITS) as srv:
        async def main():
            faults = _faults(srv.ws_url, x0)
            good = [stream(srv.ws_url, x, pace=0.02) for x, _, _ in audio[:3]]
            results = await asyncio.gather(*good, *faults.values(), disconnect_mid_stream(srv.ws_url, x0))
            return results[:3], dict(zip(faults, results[3:-1]))

        good, bad = asyncio.run(main())
        stats = settled(srv)
    for c, (_, _, offline) in zip(good, audio):
        check_protocol(c)
        assert c.text == offline
    assert set(bad) == set(EXPECTED)
    for name, c in bad.items():
        code, words = EXPECTED[name]
        assert c.code == code, (name, c.code, c.reason, c.messages)
        errors = c.of("error")
        assert len(errors) == 1 and c.messages[-1] is errors[0] and errors[0]["code"] == code, (name, c.messages)
        for w in words:
            assert w.lower() in errors[0]["message"].lower(), (name, w, errors[0]["message"])
        assert c.reason and c.reason[:60] == errors[0]["message"][:60], (name, c.reason)  # the reason names it too
    # a stream whose audio was good before a limit or a late message gets every result of that
    # audio (its last segment's final too), then the error in place of done
    for name, n in KEEP_AUDIO.items():
        c, offline = bad[name], rec.transcribe(np.tile(x0, 2)[:n]).text
        assert offline and c.text == offline, (name, offline, c.text)
        assert [m["type"] for m in c.messages[-2:]] == ["final", "error"] and not c.of("done"), (name, c.messages)
    assert stats["open"] == 0 and stats["decoding"] == 0
    assert stats["completed"] == 3 and stats["errors"] == len(EXPECTED) and stats["dropped"] == 1, stats


def _random_session(rng: np.random.Generator, x: np.ndarray) -> list:
    """A random message sequence: mostly well-formed, with random garbage mixed in."""
    fmt = str(rng.choice(["float32", "int16"]))
    first = rng.integers(6)
    msgs: list = [json.dumps({"type": "start", "sample_rate": int(rng.choice([8000, 16000, 22050, 44100, 48000])),
                              "format": fmt})]
    if first == 0:
        msgs = [json.dumps({"type": "start", "sample_rate": float(rng.choice([0, -1, 1e12, 7999])), "format": fmt})]
    elif first == 1:
        msgs = [bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))]
    for _ in range(int(rng.integers(1, 12))):
        k = rng.integers(10)
        if k < 6:  # audio in the declared format
            y = x[: int(rng.integers(0, 4000))]
            msgs.append(np.round(y * 32767).astype("<i2").tobytes() if fmt == "int16" else y.astype("<f4").tobytes())
        elif k == 6:
            msgs.append(bytes(rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8)))
        elif k == 7:
            msgs.append(json.dumps({"type": str(rng.choice(["stop", "pause", "", "START", "end "]))}))
        elif k == 8:
            msgs.append("".join(chr(int(c)) for c in rng.integers(32, 127, int(rng.integers(1, 40)))))
        else:
            msgs.append(json.dumps(rng.integers(0, 9, 3).tolist()))
    if rng.random() < 0.8:
        msgs.append(json.dumps({"type": "end"}))
    return msgs


def test_random_sessions_close_only_themselves(rec, audio):
    """Random mixes of good and bad messages: each session ends with 1000 + done or with one
    error message and a protocol close code, never an internal error; a good stream next to
    them stays exact."""
    x, _, offline = audio[3]
    sessions = [_random_session(np.random.default_rng(seed), audio[seed % 6][0]) for seed in range(16)]
    with ServerThread(rec, ServerConfig(port=0, idle_timeout=2.0)) as srv:
        async def main():
            return await asyncio.gather(stream(srv.ws_url, x, pace=0.01), *[raw(srv.ws_url, *m) for m in sessions])

        good, *clients = asyncio.run(main())
        stats = settled(srv)
    check_protocol(good)
    assert good.text == offline
    codes = []
    for msgs, c in zip(sessions, clients):
        codes.append(c.code)
        if c.code == 1000:
            check_protocol(c)
        else:
            assert c.code in (1003, 1007, 1008, 1009), (c.code, c.reason, [m[:30] for m in msgs])
            assert [m["type"] for m in c.messages].count("error") == 1 and c.messages[-1]["type"] == "error"
    assert "1011" not in stats["errors_by_code"] and stats["open"] == 0
    assert len(set(codes)) >= 3, codes  # the sessions did exercise several outcomes


async def disconnect_mid_stream(url: str, x: np.ndarray) -> None:
    """Start, send a second of audio, drop the TCP connection without a closing handshake."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "format": "float32"}))
        for i in range(0, 16000, 1600):
            await ws.send(x[i : i + 1600].tobytes())
        await ws.recv()  # ready
        ws.transport.abort()


def test_client_that_reads_nothing_is_dropped_and_counted(rec, audio):
    """A client that sends audio but stops reading: once the socket buffers are full, a send
    waits send_timeout, then the server drops the connection and counts it in /stats."""
    import socket

    async def client(url: str, x: np.ndarray) -> bool:
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.connect((host, int(port)))
        async with connect(url, sock=sock, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            await ws.recv()  # ready
            ws.transport.pause_reading()  # from here on nothing is read: results pile up in the server
            try:
                for i in range(0, len(x), 1600):
                    await ws.send(x[i : i + 1600].tobytes())
                    await asyncio.sleep(0.005)
                await ws.send(json.dumps({"type": "end"}))
                for _ in range(300):  # the server gives up on us within send_timeout + a step
                    await asyncio.sleep(0.1)
                    if ws.transport.is_closing():
                        return True
            except ConnectionClosed:
                return True
            return False

    x = np.tile(np.concatenate([a[0] for a in audio]), 2)  # ~1 min: far more results than the buffers hold
    with ServerThread(rec, ServerConfig(port=0, send_timeout=1.0)) as srv:
        for s in srv.server._server.sockets:  # accepted sockets inherit it: a small send buffer
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        dropped = asyncio.run(client(srv.ws_url, x))
        stats = settled(srv)
    assert dropped, "the server never dropped a client that read nothing"
    assert stats["dropped"] == 1 and stats["send_timeouts"] == 1 and stats["completed"] == 0, stats
    assert stats["errors"] == 0 and stats["open"] == 0, stats


def test_backpressure_bounds_the_backlog(rec, audio):
    """A client sending far faster than the decoder: the server stops reading its socket above
    max_buffered_seconds, so the backlog stays bounded, and the transcript is still exact."""
    import time

    x, _, offline = audio[0]
    decode_step = rec.decode_step

    def slow(streams):
        time.sleep(0.01)  # ~16x real time for one stream: the client, sending at once, is faster
        return decode_step(streams)

    rec.decode_step = slow
    try:
        with ServerThread(rec, ServerConfig(port=0, max_buffered_seconds=0.5)) as srv:
            c = asyncio.run(stream(srv.ws_url, x, piece=0.1))
            stats = settled(srv)
    finally:
        del rec.decode_step
    check_protocol(c)
    assert c.text == offline
    assert stats["backpressure_waits"] > 0
    assert stats["peak_backlog_seconds"] <= 0.5 + 0.1 + 1e-6, stats  # the cap + one message


def test_max_connections(rec, audio):
    x = audio[0][0]
    with ServerThread(rec, ServerConfig(port=0, max_connections=2)) as srv:
        async def main():
            start = json.dumps({"type": "start", "sample_rate": 16000, "format": "float32"})
            async with connect(srv.ws_url) as a, connect(srv.ws_url) as b:
                for ws in (a, b):
                    await ws.send(start)
                    assert json.loads(await ws.recv())["type"] == "ready"
                third = await raw(srv.ws_url, start)
                for ws in (a, b):  # the two open ones are unaffected
                    await ws.send(x[:1600].tobytes())
                    await ws.send(json.dumps({"type": "end"}))
                    assert [json.loads(m)["type"] async for m in ws][-1] == "done"
            while srv.server.stats()["open"]:
                await asyncio.sleep(0.02)
            again = await stream(srv.ws_url, x)  # a slot is free again
            return third, again

        third, again = asyncio.run(main())
    assert third.code == 1013 and "max_connections" in third.error and "try again" in third.error
    check_protocol(again)


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls(rec, audio, live_model, tmp_path):
    """https/wss with a certificate: the page and a stream over TLS; a missing file, a file that
    is not PEM and a key that is not the certificate's are errors that say so."""
    import ssl

    cert, key = _self_signed(tmp_path, "a")
    other_cert, other_key = _self_signed(tmp_path, "b")
    x, _, offline = audio[0]
    with ServerThread(rec, ServerConfig(port=0, certfile=str(cert), keyfile=str(key))) as srv:
        assert srv.ws_url.startswith("wss://")
        client_ctx = ssl.create_default_context(cafile=str(cert))
        assert srv.http_url.startswith("https://")
        page = urllib.request.urlopen(srv.http_url, context=client_ctx, timeout=30)
        assert page.status == 200 and b"<html" in page.read().lower()
        c = asyncio.run(stream(srv.ws_url, x, ssl=client_ctx))
    check_protocol(c)
    assert c.text == offline

    with pytest.raises(ValueError, match="TLS keyfile .*nowhere.key: no such file"):
        ServerConfig(certfile=str(cert), keyfile=str(tmp_path / "nowhere.key"))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for crt, k in ((not_pem, not_pem), (cert, other_key)):
        with pytest.raises(ValueError, match=r"TLS: cannot use certificate .* both must be PEM files and the key the certificate's"):
            with ServerThread(rec, ServerConfig(port=0, certfile=str(crt), keyfile=str(k))):
                pass
    r = subprocess.run([sys.executable, "-m", "asr.cli", "serve", "--onnx", str(live_model.onnx_dir), "--certfile", str(other_cert),
                        "--keyfile", str(key)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "KEY_VALUES_MISMATCH" in r.stderr and "cannot listen" not in r.stderr, r.stderr


def test_token(rec, audio):
    with pytest.raises(ValueError, match="token"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="token"):
        ServerConfig(host="192.168.1.10", token="")
    assert ServerConfig(host="0.0.0.0", token="s3cret").token == "s3cret"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1") and not is_loopback("example.org")
    r = subprocess.run([sys.executable, "-m", "asr.cli", "serve", "--onnx", "nowhere", "--host", "0.0.0.0"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if k != "ASR_SERVE_TOKEN"})
    assert r.returncode != 0 and "--token" in r.stderr, r.stderr

    x, _, offline = audio[2]
    with ServerThread(rec, ServerConfig(port=0, token="s3cret")) as srv:
        for url, headers in [(srv.ws_url, None), (srv.ws_url + "?token=wrong", None),
                             (srv.ws_url, {"Authorization": "Bearer wrong"})]:
            with pytest.raises(InvalidStatus) as e:
                asyncio.run(raw(url, additional_headers=headers))
            assert e.value.response.status_code == 401 and b"token" in e.value.response.body
        c = asyncio.run(stream(srv.ws_url + "?token=s3cret", x))
        check_protocol(c)
        assert c.text == offline
        c = asyncio.run(raw(srv.ws_url, json.dumps({"type": "start", "sample_rate": 16000}),
                            x.tobytes(), json.dumps({"type": "end"}), additional_headers={"Authorization": "Bearer s3cret"}))
        check_protocol(c)
        assert c.text == offline
        # either carries the token: a stale one in the query string used to shadow a good header
        c = asyncio.run(raw(srv.ws_url + "?token=old", json.dumps({"type": "start", "sample_rate": 16000}),
                            x.tobytes(), json.dumps({"type": "end"}), additional_headers={"Authorization": "Bearer s3cret"}))
        assert c.text == offline
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.http_url + "stats")
        assert e.value.code == 401
        e.value.close()
        assert json.loads(urllib.request.urlopen(srv.http_url + "stats?token=s3cret").read())["completed"] == 3


def test_http_page_and_stats(rec):
    with ServerThread(rec) as srv:
        page = urllib.request.urlopen(srv.http_url)
        assert page.headers["Content-Type"].startswith("text/html") and b'id="start"' in page.read()
        for name in ("app.js", "worklet.js"):
            r = urllib.request.urlopen(srv.http_url + name)
            assert r.headers["Content-Type"].startswith("text/javascript") and len(r.read()) > 500
        for bad in ("nothing.js", "../server.py", "%2e%2e/server.py"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(srv.http_url + bad)
            assert e.value.code == 404
            e.value.close()  # else the server waits for this connection when it stops
        stats = json.loads(urllib.request.urlopen(srv.http_url + "stats").read())
        assert stats["connections"] == 0 and "rtf" in stats
        head = urllib.request.urlopen(urllib.request.Request(srv.http_url + "app.js", method="HEAD"))
        assert head.headers["Content-Length"] == str(len(srv.server._static["app.js"][0])) and head.read() == b""
        for method, path, allow in (("POST", "", "GET, HEAD"), ("PUT", "stats", "GET, HEAD"), ("HEAD", "ws", "GET")):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(srv.http_url + path, method=method))
            assert e.value.code == 405 and e.value.headers["Allow"] == allow, (method, path)
            e.value.close()


def test_http_requests_with_a_body_are_answered(rec, caplog):
    """The websockets library drops any request with a body without a word (curl: "Empty reply
    from server"): a POST of a file to the page's address, a form. They get a 405 (a 400 for a
    GET with a body), with the whole body read first so the answer is not lost to a reset, and
    the server goes on serving."""
    import http.client

    def ask(method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", srv.server.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.getheader("Allow"), r.read().decode()
        finally:
            conn.close()

    with ServerThread(rec) as srv, caplog.at_level("DEBUG"):
        status, allow, text = ask("POST", "/", b"x" * 100)
        assert (status, allow) == (405, "GET, HEAD") and "asr transcribe" in text and "/ws" in text
        status, allow, _ = ask("POST", "/ws?token=x", b"\0" * (3 << 20))  # a 3 MB upload, read in many pieces
        assert (status, allow) == (405, "GET")
        chunks = iter([b"a" * 70000, b"b" * 10])  # Transfer-Encoding: chunked, length unknown
        assert ask("PUT", "/stats", chunks, {"Transfer-Encoding": "chunked"})[:2] == (405, "GET, HEAD")
        status, allow, text = ask("GET", "/stats", b"{}", {"Content-Type": "application/json"})
        assert status == 400 and allow is None and "with a body" in text
        assert ask("POST", "/", b"", {"Content-Length": "0"})[:2] == (405, "GET, HEAD")  # no body: the library parses it
        status, _, text = ask("GET", "/stats")
        assert status == 200 and json.loads(text)["connections"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_frames_the_library_refuses_are_counted(rec, audio):
    """A frame beyond the websockets library's own limit (2x max_message_bytes) is closed by the
    library with 1009 before the server reads it: /stats still counts it as an error."""
    async def client(url: str) -> Client:
        c = Client()
        async with connect(url, max_size=None, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            c.messages.append(json.loads(await ws.recv()))  # ready: the stream has started
            await ws.send(np.zeros(4096, "<f4").tobytes())  # 16 KiB, the library's limit is 8
            await asyncio.wait_for(_collect(ws, c), 30)
        return c

    with ServerThread(rec, ServerConfig(port=0, max_message_bytes=4096)) as srv:
        c = asyncio.run(client(srv.ws_url))
        stats = settled(srv)
    assert c.code == 1009 and c.of("ready") and not c.of("error"), (c.code, c.reason)
    assert stats["errors"] == 1 and stats["errors_by_code"] == {"1009": 1} and stats["dropped"] == 0, stats


def test_serve_path_is_torch_free():
    code = ("import sys; import serve.server, serve.loadtest, asr.cli; asr.cli.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_load_tool_smoke(live_model, tmp_path, capsys):
    """`asr bench serve` with 1 and 2 real-time clients against an `asr serve` child process."""
    from asr.cli import main

    out = tmp_path / "load.json"
    wavs = [str(p) for p, _ in live_model.utterances[:2]]
    main(["bench", "serve", "--onnx", str(live_model.onnx_dir), "--streams", "1,2", "--seconds", "2",
          "--audio", *wavs, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "tok p50 ms" in printed and "Recognizer(" in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["streams"] for r in rows] == [1, 2] and result["machine"]["cpus"] >= 1
    for r in rows:
        assert r["errors"] == 0, r["error_examples"]
        assert r["tokens"] > 0 and r["audio_s"] == 2.0 * r["streams"]
        # a token cannot appear before its audio was sent, nor (unloaded) seconds later
        assert 0 < r["token_latency_ms_p50"] <= r["token_latency_ms_p95"] < 5000, r
        assert 0 < r["final_latency_ms_p50"] < 5000 and r["server_rtf"] > 0 and r["server_cpu"] > 0, r
        assert 1 <= r["mean_batch"] <= r["streams"]


def test_bench_runtime_is_serve_bench(capsys):
    from asr.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "runtime", "--help"])
    assert e.value.code == 0
    assert "python -m serve.bench" in capsys.readouterr().out
    for args, msg in [(["--seconds", "0"], "--seconds must be > 0"), (["--threads", "1,x"], "--threads expects"),
                      (["--out", str(ROOT)], "is a directory")]:
        with pytest.raises(SystemExit):
            main(["bench", "runtime", *args])
        err = capsys.readouterr().err
        assert "asr bench runtime: error: " in err and msg in err, err


def test_load_tool_names_a_server_it_cannot_reach_and_keeps_the_token_secret(tmp_path, capsys):
    from asr.cli import main

    out = tmp_path / "load.json"
    with pytest.raises(SystemExit, match=r"all 1 client\(s\) failed .* ws://127.0.0.1:9/ws\?token=\*\*\* running"):
        main(["bench", "serve", "--url", "ws://127.0.0.1:9/ws?token=s3cret", "--streams", "1,2", "--seconds", "1",
              "--out", str(out)])
    printed = capsys.readouterr().out
    assert "error: " in printed  # the reason, under its level
    text = out.read_text()
    result = json.loads(text)  # valid JSON: no NaN
    assert "s3cret" not in text and "NaN" not in text and [r["streams"] for r in result["rows"]] == [1]


def test_load_tool_passes_an_lm_to_the_server_it_starts(monkeypatch, tmp_path, capsys):
    """`asr bench serve --onnx DIR --method beam --lm F ...` starts `asr serve` with the same LM
    options (checked first, as `asr serve` checks them); a running server (--url) has its own."""
    from asr.cli import main
    from serve import loadtest

    started = []

    class Stop(Exception):
        pass

    def fake_server(opts, timeout):
        started.append((opts, timeout))
        raise Stop

    monkeypatch.setattr(loadtest, "ServerProcess", fake_server)
    with pytest.raises(Stop):
        main(["bench", "serve", "--onnx", "D", "--method", "beam", "--lm", "w.arpa", "--lm-unit", "word",
              "--token-bonus", "1.5", "--streams", "1", "--seconds", "1"])
    opts, timeout = started[0]
    assert timeout >= 900  # the server loads the LM before it listens
    assert opts[opts.index("--lm"):][:8] == ["--lm", "w.arpa", "--lm-unit", "word", "--lm-weight", "0.5", "--token-bonus", "1.5"]
    for args, msg in [(["--onnx", "D", "--lm", "w.arpa"], "add --method beam"),
                      (["--url", "ws://127.0.0.1:9/ws", "--method", "beam", "--lm", "w.arpa"], "a running server has its own")]:
        with pytest.raises(SystemExit, match=msg):
            main(["bench", "serve", *args])
