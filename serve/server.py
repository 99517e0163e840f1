"""Live recognition over WebSocket: many clients, one batched model call per decoding step.

>>> rec = Recognizer("exp/model/onnx", endpoint=EndpointConfig())
>>> server = LiveServer(rec, ServerConfig(port=6006))
>>> asyncio.run(server.serve_forever())      # or `asr serve --onnx exp/model/onnx`

Protocol (``ws://HOST:PORT/ws``; docs/live.md has every message and close code):

1. the client sends ``{"type": "start", "sample_rate": 48000, "format": "float32"}``
   (``format``: ``"float32"`` or ``"int16"``, little-endian mono; the server resamples any rate
   in [8000, 192000] to the model's); the server answers ``{"type": "ready", ...}`` with the
   model's rates, window and limits;
2. binary frames of samples, any size (100 ms is typical);
3. ``{"type": "end"}``.

The server sends ``{"type": "partial", "segment": n, "text", "tokens", "timestamps", "start",
"end"}`` whenever the current segment's text changes, ``{"type": "final", ...}`` (same fields and
``endpoint``) once per segment, at an endpoint or at the end (segments count from 0 without
gaps), then ``{"type": "done", ...}``, and closes with code 1000. An error sends
``{"type": "error", "code": c, "message": ...}`` and closes that connection, and only that one,
with code ``c`` and the message (shortened to fit) as the close reason. After an idle timeout
mid-stream, a message after ``end``, a message over ``max_message_bytes`` or audio beyond
``max_stream_seconds``, the audio received until then is decoded to the end and its results
sent first: the error takes ``done``'s place.

Design. Each connection has a *reader* (socket -> checked samples, queued), and a *sender*
(results -> socket; the only task that writes, so messages keep their order). One *decode
loop* serves every connection: it takes each connection's queued audio, feeds it to its
``serve.Stream`` (fbank) and runs ``recognizer.decode_step`` on all streams at once (one encoder
call for every stream with a full window), in a one-thread executor so the event loop keeps
reading sockets while onnxruntime computes; it repeats while any stream is ready or audio
is queued, then sleeps until audio arrives. All stream state is touched by that one worker
thread only.

Limits (:class:`ServerConfig`; each closes only the offending connection, after an error
message): ``max_connections`` (1013), ``max_message_bytes`` (1009), ``idle_timeout`` (no message
for that long while the server waits for one: 1008), ``max_stream_seconds`` of audio (1008).
``max_buffered_seconds`` is backpressure, not an error: when a connection has more audio
received than decoded, the server stops reading its socket until the decoder catches up, so TCP
flow control slows the client down (memory per connection stays bounded). Bad input (1003
unsupported, 1007 invalid, 1008 out of order) names the problem.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import ipaddress
import json
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .features import SAMPLE_LIMIT, check_input_rate, check_samples

__all__ = ["ServerConfig", "LiveServer", "serve", "CLOSE_CODES", "WEB_DIR"]

log = logging.getLogger("serve.server")

WEB_DIR = Path(__file__).resolve().parent / "web"

# RFC 6455 close codes the server uses
NORMAL, UNSUPPORTED, INVALID, POLICY, TOO_BIG, INTERNAL, TRY_AGAIN = 1000, 1003, 1007, 1008, 1009, 1011, 1013
CLOSE_CODES = {
    NORMAL: "done: every result was sent",
    UNSUPPORTED: "unsupported data: an unknown message type, or a text message that is not a JSON object",
    INVALID: "invalid data: malformed JSON, a bad start field, audio that does not fit its format, NaN/inf samples",
    POLICY: "out of order or over a limit: audio before start, start twice, a message after end, idle timeout, stream too long",
    TOO_BIG: "a message larger than max_message_bytes",
    INTERNAL: "the server failed while decoding this stream",
    TRY_AGAIN: "max_connections reached: try again later",
}
FORMATS = {"float32": ("<f4", 1.0), "int16": ("<i2", 32768.0)}
_LIBRARY_SIZE_FACTOR = 2  # the websockets library drops messages above this many max_message_bytes unread
_LIBRARY_QUEUE = 4  # frames the library reads ahead of us (while backpressure pauses our reader): with the factor,
#                     what one connection can make the server hold is about 10 max_message_bytes
_LOOPBACK_NAMES = ("localhost",)


@dataclass
class ServerConfig:
    """Where the server listens and the limits it enforces per connection.

    ``token``: a shared secret a client must present (``/ws?token=...`` or an
    ``Authorization: Bearer ...`` header); required when ``host`` is not a loopback address.
    ``certfile``/``keyfile``: serve HTTPS/WSS (browsers give the microphone to a page from
    another machine only over HTTPS). ``web``: also serve the page (``GET /``) and ``/stats``.
    """

    host: str = "127.0.0.1"
    port: int = 6006
    token: str | None = None
    max_connections: int = 64
    max_message_bytes: int = 1 << 20  # 1 MiB: 5 s of 48 kHz float32
    max_buffered_seconds: float = 5.0  # audio received but not yet decoded, per connection
    idle_timeout: float = 30.0  # seconds without a message while the server waits for one
    max_stream_seconds: float = 3600.0  # seconds of audio per connection
    send_timeout: float = 30.0  # a client that reads nothing for this long is dropped
    certfile: str | None = None
    keyfile: str | None = None
    web: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("max_connections", "max_message_bytes"):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise ValueError(f"ServerConfig.{f.name} must be a positive integer, got {v!r}")
                if f.name == "max_message_bytes" and v < 1024:  # the start message alone is ~50 bytes
                    raise ValueError(f"ServerConfig.max_message_bytes must be >= 1024 (a start message and 30 ms "
                                     f"of 8 kHz audio), got {v}")
            elif f.name in ("max_buffered_seconds", "idle_timeout", "max_stream_seconds", "send_timeout"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    raise ValueError(f"ServerConfig.{f.name} must be a positive number of seconds, got {v!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port must be 0..65535 (0: any free port), got {self.port!r}")
        if self.token == "":
            self.token = None
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"binding {self.host!r} makes the server reachable from other machines: set a token "
                f"(asr serve --token SECRET; clients connect to /ws?token=SECRET), or bind 127.0.0.1"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("TLS needs both certfile and keyfile")
        for what, path in (("certfile", self.certfile), ("keyfile", self.keyfile)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS {what} {path}: no such file")

    def limits(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k.startswith("max_") or k in ("idle_timeout", "send_timeout")}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for every other name or address
    (``0.0.0.0`` and ``::`` bind every interface)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Fail(Exception):
    """Close this connection: ``code`` and a message naming the problem. ``keep_audio``: the
    audio received so far is good (a limit or an out-of-order message came after it), so its
    remaining results are decoded and sent first, then the error in place of ``done``."""

    def __init__(self, code: int, message: str, keep_audio: bool = False):
        super().__init__(message)
        self.code, self.message, self.keep_audio = code, message, keep_audio


def _reason(message: str) -> str:
    """A close reason: at most 123 bytes of UTF-8 (RFC 6455)."""
    b = message.encode()
    return message if len(b) <= 123 else b[:120].decode(errors="ignore") + "..."


class _Conn:
    """One client: its stream, queued audio, outgoing events and counters. ``stream`` and
    ``last_text`` belong to the decode worker thread (it creates the stream at the first step);
    everything else to the event loop."""

    _ids = 0

    def __init__(self, ws):
        _Conn._ids += 1
        self.id = _Conn._ids
        self.ws = ws
        self.stream = None
        self.rate = 0
        self.format = ""
        self.pending: list[np.ndarray] = []  # checked samples not yet given to the stream
        self.samples_in = 0  # at the client's rate
        self.end = False  # "end" received
        self.end_fed = False  # input_finished() called
        self.ready = False  # after the last step: the stream has a window to decode
        self.busy = False  # audio of this connection is in the decode step running now
        self.decoded_seconds = 0.0  # after the last step
        self.last_text = ""  # the current segment's last partial text (decode worker side)
        self.outbox: deque[dict] = deque()
        self.wake = asyncio.Event()  # for the sender
        self.progress = asyncio.Event()  # a step ran for this connection (for backpressure)
        self.error: tuple[int, str] | None = None
        self.closing: tuple[int, str] | None = None  # an error to send in place of done (keep_audio)
        self.done = False  # done was sent
        self.too_slow = False  # dropped by send_timeout
        self.closed = False

    @property
    def backlog_seconds(self) -> float:
        return self.samples_in / self.rate - self.decoded_seconds if self.rate else 0.0

    def push(self, event: dict) -> None:
        # a newer partial of the same segment replaces one not sent yet
        if (event["type"] == "partial" and self.outbox and self.outbox[-1]["type"] == "partial"
                and self.outbox[-1]["segment"] == event["segment"]):
            self.outbox[-1] = event
        else:
            self.outbox.append(event)
        self.wake.set()

    def fail(self, code: int, message: str) -> None:
        if self.error is None:
            self.error = (code, message)
        self.wake.set()
        self.progress.set()


def _result_event(kind: str, r) -> dict:
    ev = {"type": kind, "segment": r.segment, "text": r.text, "tokens": list(r.tokens),
          "timestamps": list(r.timestamps), "start": r.start, "end": r.end}
    if kind == "final":
        ev["endpoint"] = r.endpoint
    return ev


class LiveServer:
    """Serves one :class:`serve.Recognizer` to many WebSocket clients (see the module docstring).

    ``start()`` binds (``port`` 0 picks a free one: read ``self.port``), ``serve_forever()``
    runs until cancelled, ``close()`` stops. ``stats()``: counters of the decode loop (steps,
    streams per step, decode time, audio decoded) and the connections.
    """

    def __init__(self, recognizer, config: ServerConfig | None = None, web_dir: str | Path = WEB_DIR):
        self.recognizer = recognizer
        self.config = config if config is not None else ServerConfig()
        self.web_dir = Path(web_dir)
        self._static = self._load_static() if self.config.web else {}
        self._conns: set[_Conn] = set()  # every open connection
        self._active: list[_Conn] = []  # started, not finished: the decode loop's streams
        self._wake: asyncio.Event | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._server = None
        self._loop_task: asyncio.Task | None = None
        self.port: int | None = None
        self.started = time.time()
        self.counters = {"connections": 0, "completed": 0, "errors": 0, "dropped": 0, "send_timeouts": 0,
                         "rejected": 0,
                         "steps": 0,
                         "stream_windows": 0, "max_batch": 0, "decode_seconds": 0.0, "audio_seconds": 0.0,
                         "peak_backlog_seconds": 0.0, "backpressure_waits": 0}
        self.errors_by_code: dict[int, int] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            from websockets.asyncio.server import serve as ws_serve
        except ImportError as e:  # websockets < 13 has no asyncio implementation
            raise ImportError("the server needs websockets >= 13: pip install -e '.[serve]'") from e
        cfg = self.config
        ssl_ctx = None
        if cfg.certfile:
            import ssl

            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ssl_ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
            except OSError as e:  # ssl.SSLError is one: not PEM, or a key that is not the certificate's
                raise ValueError(
                    f"TLS: cannot use certificate {cfg.certfile} with key {cfg.keyfile} ({getattr(e, 'reason', None) or e}): "
                    "both must be PEM files and the key the certificate's; a self-signed pair for testing: openssl req "
                    "-x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 365 -subj /CN=localhost") from None
        self._wake = asyncio.Event()
        self._loop_task = asyncio.create_task(self._decode_loop(), name="decode-loop")
        self._server = await ws_serve(
            self._handle, cfg.host, cfg.port, process_request=self._process_request, create_connection=_gated_connection(),
            max_size=cfg.max_message_bytes * _LIBRARY_SIZE_FACTOR, max_queue=_LIBRARY_QUEUE, ssl=ssl_ctx,
            compression=None, close_timeout=2, server_header=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving %s on %s (%d connections max)", self.recognizer, self.url, cfg.max_connections)

    @property
    def url(self) -> str:
        scheme = "https" if self.config.certfile else "http"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.port}/"

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        self._pool.shutdown(wait=True)

    def stats(self) -> dict:
        c = dict(self.counters)
        c["decode_seconds"] = round(c["decode_seconds"], 4)
        c["audio_seconds"] = round(c["audio_seconds"], 3)
        c["rtf"] = round(c["decode_seconds"] / c["audio_seconds"], 4) if c["audio_seconds"] else 0.0
        c["mean_batch"] = round(c["stream_windows"] / c["steps"], 2) if c["steps"] else 0.0
        c["open"] = len(self._conns)
        c["decoding"] = len(self._active)
        c["errors_by_code"] = {str(k): v for k, v in sorted(self.errors_by_code.items())}
        c["uptime_seconds"] = round(time.time() - self.started, 1)
        return c

    # ------------------------------------------------------------------ HTTP
    def _load_static(self) -> dict[str, tuple[bytes, str]]:
        types = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
        if not (self.web_dir / "index.html").is_file():
            raise FileNotFoundError(f"web page not found: {self.web_dir / 'index.html'} (a broken install? or ServerConfig(web=False))")
        return {p.name: (p.read_bytes(), types[p.suffix]) for p in sorted(self.web_dir.iterdir())
                if p.is_file() and p.suffix in types}

    def _authorized(self, request, query: str) -> bool:
        token = self.config.token
        if token is None:
            return True
        from urllib.parse import parse_qs

        given = [parse_qs(query).get("token", [""])[-1]]
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        # either may carry it (a page's query string and a client's header can both be present)
        return any([hmac.compare_digest(g.encode(), token.encode()) for g in given if g])

    def _process_request(self, ws, request):
        """HTTP before the WebSocket handshake: the token check for ``/ws``, the page and
        ``/stats`` for GET and HEAD (headers only), 405 for other methods. (A request with a
        body, such as most POSTs, never gets here: :func:`_gated_connection` answers it.)"""
        path, _, query = request.path.partition("?")
        method = getattr(request, "method", "GET")  # websockets < 15 parses GET only
        head = method == "HEAD"
        refused = _refusal(method, path)
        if refused is not None:
            return refused
        if path == "/ws":
            if not self._authorized(request, query):
                self.counters["rejected"] += 1
                return _response(401, "missing or wrong token: connect to /ws?token=TOKEN or send 'Authorization: Bearer "
                                      "TOKEN'\n")
            return None  # the WebSocket handshake goes on
        if "upgrade" in request.headers.get("Connection", "").lower():
            return _response(404, "the WebSocket endpoint is /ws\n", head)
        if not self.config.web:
            return _response(404, "this server has no web page (web=False); the WebSocket endpoint is /ws\n", head)
        if path == "/stats":
            if not self._authorized(request, query):
                return _response(401, "missing or wrong token\n", head)
            return _response(200, json.dumps(self.stats(), indent=1) + "\n", head, "application/json")
        name = "index.html" if path in ("/", "") else path.lstrip("/")
        if name not in self._static:
            return _response(404, f"not found: {path}\n", head)
        body, ctype = self._static[name]
        return _response(200, body, head, ctype)

    # ------------------------------------------------------------------ connections
    async def _handle(self, ws) -> None:
        from websockets.protocol import State

        conn = _Conn(ws)
        self._conns.add(conn)
        self.counters["connections"] += 1
        sender = asyncio.create_task(self._sender(conn), name=f"send-{conn.id}")
        try:
            if len(self._conns) > self.config.max_connections:
                raise _Fail(TRY_AGAIN, f"server busy: {self.config.max_connections} connections open "
                                       f"(max_connections); try again later")
            await self._read(conn)
        except _Fail as e:
            if e.keep_audio and conn.rate and conn.error is None:  # finish the stream, then the error
                conn.closing = (e.code, e.message)
                conn.end = True
                self._wake.set()
            else:
                conn.fail(e.code, e.message)
        except Exception as e:  # ConnectionClosed: the client went away (mid-stream or after the end)
            from websockets.exceptions import ConnectionClosed

            if not isinstance(e, ConnectionClosed):
                log.exception("connection %d: unexpected error", conn.id)
                conn.fail(INTERNAL, f"internal error: {type(e).__name__}: {e}")
            else:
                self._library_close(conn)
        finally:
            if conn.error is None and ws.state is State.CLOSED:
                sender.cancel()  # nobody to send to
            await asyncio.gather(sender, return_exceptions=True)
            conn.closed = True
            self._conns.discard(conn)
            if conn in self._active:
                self._active.remove(conn)
            if conn.error is not None:
                self.counters["errors"] += 1
                self.errors_by_code[conn.error[0]] = self.errors_by_code.get(conn.error[0], 0) + 1
                log.info("connection %d closed: %d %s", conn.id, *conn.error)

    def _library_close(self, conn: _Conn) -> None:
        """The socket closed under the reader: counted as an error when the websockets library
        closed it (a frame beyond its size limit: 1009, a protocol violation: 1002), as
        ``dropped`` when the client went away before ``done`` (``send_timeouts`` too when the
        server dropped it for reading nothing)."""
        if conn.error is not None:  # our own close: counted as that error
            return
        proto = conn.ws.protocol
        sent = proto.close_sent
        if sent is not None and sent.code != NORMAL and not proto.close_rcvd_then_sent:
            self.counters["errors"] += 1
            self.errors_by_code[sent.code] = self.errors_by_code.get(sent.code, 0) + 1
            log.info("connection %d closed by the websockets library: %d %s", conn.id, sent.code, sent.reason)
        elif not conn.done:
            self.counters["dropped"] += 1
            self.counters["send_timeouts"] += conn.too_slow

    async def _recv(self, conn: _Conn, timeout: float | None):
        try:
            msg = await asyncio.wait_for(conn.ws.recv(), timeout)
        except asyncio.TimeoutError:
            todo = ("send audio continuously, or {\"type\": \"end\"} to finish" if conn.rate
                    else "send {\"type\": \"start\", \"sample_rate\": ...} first")
            raise _Fail(POLICY, f"no message for {timeout:g} s (idle_timeout): {todo}", keep_audio=True) from None
        size = len(msg) if isinstance(msg, bytes) else len(msg.encode())
        if size > self.config.max_message_bytes:
            hint = "send smaller pieces (100 ms is typical)" if isinstance(msg, bytes) else "control messages are small JSON objects"
            raise _Fail(TOO_BIG, f"message of {size} bytes exceeds max_message_bytes = {self.config.max_message_bytes}: {hint}",
                        keep_audio=True)
        return msg

    @staticmethod
    def _json(msg: str) -> dict:
        try:
            obj = json.loads(msg)
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser goes
            raise _Fail(INVALID, f"malformed JSON in a text message ({e}): {msg[:40]!r}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise _Fail(UNSUPPORTED, f'a text message must be a JSON object with a "type", got {msg[:40]!r}')
        return obj

    async def _read(self, conn: _Conn) -> None:
        cfg = self.config
        first = await self._recv(conn, cfg.idle_timeout)
        if isinstance(first, bytes):
            raise _Fail(POLICY, 'audio frame before the start message: send {"type": "start", "sample_rate": ..., '
                                '"format": "float32"|"int16"} first')
        msg = self._json(first)
        if msg["type"] != "start":
            what = "unknown message type" if msg["type"] not in ("end",) else "message before start"
            raise _Fail(UNSUPPORTED if what.startswith("unknown") else POLICY,
                        f'{what} {msg["type"]!r}: the first message must be {{"type": "start", ...}}')
        self._start(conn, msg)
        while True:
            while (conn.backlog_seconds > cfg.max_buffered_seconds and (conn.pending or conn.ready or conn.busy)
                   and conn.error is None):
                conn.progress.clear()  # backpressure: the socket is not read until the decoder catches up
                self.counters["backpressure_waits"] += 1
                await conn.progress.wait()
            if conn.error is not None:
                return
            msg = await self._recv(conn, cfg.idle_timeout if not conn.end else None)
            if conn.end:
                raise _Fail(POLICY, "message after end: the stream has ended; open a new connection for more audio",
                            keep_audio=True)
            if isinstance(msg, bytes):
                self._audio(conn, msg)
                continue
            obj = self._json(msg)
            if obj["type"] == "end":
                conn.end = True
                self._wake.set()
            elif obj["type"] == "start":
                raise _Fail(POLICY, "start sent twice: one stream per connection")
            else:
                raise _Fail(UNSUPPORTED, f'unknown message type {obj["type"]!r}: expected binary audio or {{"type": "end"}}')

    def _start(self, conn: _Conn, msg: dict) -> None:
        unknown = set(msg) - {"type", "sample_rate", "format"}
        if unknown:
            raise _Fail(INVALID, f"unknown start field(s) {sorted(unknown)}: expected sample_rate and format")
        if "sample_rate" not in msg:
            raise _Fail(INVALID, "start needs sample_rate (Hz of the audio you send, e.g. 16000 or 48000)")
        try:  # the ratio here, not in the decode worker that builds the filter
            rate = check_input_rate(msg["sample_rate"], self.recognizer.sample_rate)
        except ValueError as e:
            raise _Fail(INVALID, f"bad start: {e}") from None
        fmt = msg.get("format", "float32")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise _Fail(INVALID, f"bad start: format {fmt!r} is not supported: use 'float32' or 'int16' (little-endian)")
        conn.rate, conn.format = rate, fmt  # the decode worker creates the stream (it owns all stream state)
        rec, m = self.recognizer, self.recognizer.model
        conn.push({
            "type": "ready", "sample_rate": rate, "format": fmt, "model_sample_rate": rec.sample_rate,
            "model": {"encoder": m.card.get("encoder"), "head": "ctc" if m.use_ctc else m.head,
                      "decoding": rec.decoding, "window_seconds": rec.window_seconds,
                      "chunk_seconds": rec.chunk_seconds, "frame_seconds": rec.frame_seconds,
                      "endpointing": rec.endpoint.enabled},
            "limits": self.config.limits(),
        })
        self._active.append(conn)

    def _audio(self, conn: _Conn, data: bytes) -> None:
        dtype, scale = FORMATS[conn.format]
        size = np.dtype(dtype).itemsize
        if len(data) % size:
            raise _Fail(INVALID, f"binary frame of {len(data)} bytes is not a whole number of {conn.format} samples "
                                 f"({size} bytes each){': odd length' if size == 2 else ''}; is the format in start right?")
        x = np.frombuffer(data, dtype=dtype)
        if conn.format == "int16":
            x = x.astype(np.float32) / scale
        else:
            x = x.astype(np.float32)
            with np.errstate(invalid="ignore", over="ignore"):
                a = np.abs(x)
                odd = ~(a <= SAMPLE_LIMIT) | ((a > 0) & (a < 1e-20))  # NaN, inf, beyond +-2, denormal-small
            if len(x) and odd.mean() > 0.1:
                raise _Fail(INVALID, f"these bytes are not float32 audio in [-1, 1]: {100 * odd.mean():.0f}% of the "
                                     f"{len(x)} samples are NaN, inf, beyond +-{SAMPLE_LIMIT:g} or below 1e-20 in "
                                     f"magnitude; int16 audio declared as float32? (set format to 'int16' in start)")
            try:
                check_samples(x)
            except ValueError as e:
                raise _Fail(INVALID, f"{e} (sample {conn.samples_in + _first_bad(x)} of the stream)") from None
        n = conn.samples_in + len(x)
        if n / conn.rate > self.config.max_stream_seconds:
            raise _Fail(POLICY, f"stream longer than max_stream_seconds = {self.config.max_stream_seconds:g} s of audio: "
                                f"the results of the first {conn.samples_in / conn.rate:.1f} s were sent; end a "
                                f"stream before the limit and open a new connection", keep_audio=True)
        if len(x):
            conn.pending.append(x)
            conn.samples_in = n
            self.counters["peak_backlog_seconds"] = max(self.counters["peak_backlog_seconds"], conn.backlog_seconds)
            self._wake.set()

    async def _sender(self, conn: _Conn) -> None:
        """The only writer of a connection: results in order, then ``done`` + close 1000, or
        an error message + close with its code."""
        ws = conn.ws
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            while conn.outbox and conn.error is None:
                ev = conn.outbox.popleft()
                if ev["type"] == "done" and conn.closing is not None:  # the error takes done's place
                    conn.fail(*conn.closing)
                    break
                await self._send(conn, ev)
                if ev["type"] == "done":
                    conn.done = True
                    self.counters["completed"] += 1
                    await ws.close(NORMAL, "done")
                    return
            if conn.error is not None:
                code, message = conn.error
                try:
                    await self._send(conn, {"type": "error", "code": code, "message": message})
                finally:
                    await ws.close(code, _reason(message))
                return

    async def _send(self, conn: _Conn, event: dict) -> None:
        try:
            await asyncio.wait_for(conn.ws.send(json.dumps(event)), self.config.send_timeout)
        except asyncio.TimeoutError:
            log.info("connection %d: the client read nothing for %g s (send_timeout); dropped", conn.id,
                     self.config.send_timeout)
            conn.too_slow = True
            conn.ws.transport.abort()
            raise

    # ------------------------------------------------------------------ decoding
    async def _decode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                jobs = []
                for c in self._active:
                    if c.closed or c.error is not None:
                        continue
                    audio, c.pending = c.pending, []
                    end = c.end and not c.end_fed
                    c.end_fed = c.end_fed or end
                    if audio or end or c.ready:
                        jobs.append((c, audio, end))
                        c.busy = True
                if not jobs:
                    break
                try:
                    results = await loop.run_in_executor(self._pool, self._step, jobs)
                except Exception as e:  # a bug in _step: fail these streams, keep serving the others
                    log.exception("decode step failed")
                    results = [(c, [], False, c.decoded_seconds, (INTERNAL, f"internal error: {type(e).__name__}: {e}"))
                               for c, _, _ in jobs]
                for c, events, ready, decoded, error in results:
                    c.ready, c.decoded_seconds, c.busy = ready, decoded, False
                    c.progress.set()
                    if c.closed:
                        continue
                    if error is not None:
                        c.fail(*error)
                        continue
                    for ev in events:
                        c.push(ev)
                    if events and events[-1]["type"] == "done" and c in self._active:
                        self._active.remove(c)

    def _step(self, jobs: list) -> list:
        """Decode worker: feed every job's audio, one batched ``decode_step`` on all their
        streams, and the events each connection gets."""
        rec = self.recognizer
        errors: dict[int, tuple[int, str]] = {}
        fed = 0.0
        for c, audio, end in jobs:
            try:
                if c.stream is None:
                    c.stream = rec.create_stream()
                if audio:
                    x = audio[0] if len(audio) == 1 else np.concatenate(audio)
                    c.stream.accept_waveform(c.rate, x)
                    fed += len(x) / c.rate
                if end:
                    c.stream.input_finished()
            except ValueError as e:
                errors[c.id] = (INVALID, f"bad audio: {e}")
            except Exception as e:
                log.exception("connection %d: feeding the stream failed", c.id)
                errors[c.id] = (INTERNAL, f"internal error while reading the audio: {type(e).__name__}: {e}")
        streams = [c.stream for c, _, _ in jobs if c.id not in errors]
        t0 = time.perf_counter()
        try:
            ran = rec.decode_step(streams)
        except Exception as e:  # onnxruntime failed: these streams' states cannot be trusted
            log.exception("decode_step failed on %d streams", len(streams))
            ran = []
            for c, _, _ in jobs:
                errors.setdefault(c.id, (INTERNAL, f"internal error while decoding: {type(e).__name__}: {e}"))
        dt = time.perf_counter() - t0
        k = self.counters
        if ran:
            k["steps"] += 1
            k["stream_windows"] += len(ran)
            k["max_batch"] = max(k["max_batch"], len(ran))
        k["decode_seconds"] += dt
        k["audio_seconds"] += fed
        out = []
        for c, _, _ in jobs:
            if c.id in errors:
                out.append((c, [], False, c.decoded_seconds, errors[c.id]))
                continue
            s, events = c.stream, []
            for seg in s.pop_segments():
                events.append(_result_event("final", seg))
                c.last_text = ""
            if s.is_final:
                res = s.result()
                if not (events and events[-1]["segment"] == res.segment):  # an empty last segment
                    events.append(_result_event("final", res))
                events.append({"type": "done", "audio_seconds": round(s.seconds_received, 3),
                               "segments": res.segment + 1})
            else:
                res = s.result()
                if res.text != c.last_text:
                    c.last_text = res.text
                    events.append(_result_event("partial", res))
            out.append((c, events, rec.is_ready(s), s.seconds_decoded, None))
        return out


def _response(status: int, body: str | bytes, head: bool = False, ctype: str = "text/plain; charset=utf-8",
              allow: str | None = None):
    """An HTTP response that closes the connection; for HEAD, the headers of GET without the body."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    data = body.encode() if isinstance(body, str) else body
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(data))), ("Cache-Control", "no-cache"),
                       ("Connection", "close")])
    if allow is not None:
        headers["Allow"] = allow
    return Response(status, http.HTTPStatus(status).phrase, headers, b"" if head else data)


def _refusal(method: str, path: str, has_body: bool = False):
    """The answer to a request the server does not take (None for the ones it does): 405 for a
    method other than GET (and HEAD, except on ``/ws``), 400 for a GET or HEAD with a body."""
    allowed = "GET" if path.partition("?")[0] == "/ws" else "GET, HEAD"
    if method not in allowed.split(", "):
        hint = (" (audio is streamed over the WebSocket at /ws, see docs/live.md; to transcribe a file, run "
                "`asr transcribe --onnx DIR FILE`)") if method in ("POST", "PUT") else ""
        return _response(405, f"{method} is not supported here: {allowed}{hint}\n", allow=allowed)
    if has_body:
        return _response(400, f"a {method} request with a body is not supported\n")
    return None


def _gated_connection():
    """The websockets library's server connection, with the HTTP requests it would drop
    without a word answered here: the library refuses any request with a body (a ``curl -d``, a
    file upload, a form) by closing the connection, so the client sees an empty reply. This
    reads the request head first; a request with a body gets :func:`_refusal`'s answer, its body
    is read and dropped (closing with it unread would reset the connection under the client's
    feet, losing the answer), then the connection closes. Every other request goes to the
    library untouched."""
    from websockets.asyncio.server import ServerConnection

    class GatedConnection(ServerConnection):
        _HEAD_LIMIT = 16384  # beyond this without a blank line, the library's own limits answer
        _LINGER_S = 5.0  # the longest a refused body is read before the connection closes anyway

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._pending: bytes | None = b""  # the request head so far; None once it went on
            self._drop: float | None = None  # bytes of a refused body still to read

        def data_received(self, data: bytes) -> None:
            if self._drop is not None:
                self._drop -= len(data)
                if self._drop <= 0:
                    self.transport.close()
                return
            if self._pending is None:
                super().data_received(data)
                return
            self._pending += data
            end = self._pending.find(b"\r\n\r\n")
            if end < 0 and len(self._pending) < self._HEAD_LIMIT:
                return
            data, self._pending = self._pending, None
            answer, body = self._refuse(data[:end]) if end >= 0 else (None, 0.0)
            if answer is None:
                super().data_received(data)
                return
            self.transport.write(answer.serialize())
            self._drop = body - (len(data) - end - 4)
            if self._drop <= 0:
                self.transport.close()
            else:
                self.loop.call_later(self._LINGER_S, self.transport.close)

        def eof_received(self) -> bool | None:
            if self._drop is not None or self._pending:
                self.transport.close()
                return None
            return super().eof_received()

        @staticmethod
        def _refuse(head: bytes):
            """(answer, body length; inf when chunked) for a request with a body, else (None, 0)."""
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                return None, 0.0  # malformed: the library's answer
            fields = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    fields[name.strip().lower()] = value.strip()
            if "transfer-encoding" in fields:
                body = math.inf
            else:
                try:
                    body = float(int(fields.get("content-length", "0")))
                except ValueError:
                    return None, 0.0
            if body == 0:
                return None, 0.0
            return _refusal(parts[0], parts[1], has_body=True), body

    return GatedConnection


def _first_bad(x: np.ndarray) -> int:
    """The index of the first sample :func:`check_samples` refuses (NaN, inf, beyond the limit)."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(x) <= SAMPLE_LIMIT)
    return int(np.argmax(bad)) if bad.any() else 0


def serve(recognizer, config: ServerConfig | None = None, ready=None) -> None:
    """Run a :class:`LiveServer` until interrupted (Ctrl-C or SIGTERM). ``ready(server)`` is
    called once it listens (``asr serve`` prints the address)."""

    async def main() -> None:
        import signal

        server = LiveServer(recognizer, config)
        await server.start()
        if ready is not None:
            ready(server)
        task = asyncio.current_task()
        try:  # SIGTERM (kill, docker stop) stops as Ctrl-C does: connections closed with 1001
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError):  # not on this platform or thread
            pass
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
