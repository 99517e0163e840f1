"""Live recognition from a microphone: PortAudio capture -> ``Recognizer`` -> text on a terminal.

>>> from serve import Recognizer
>>> from serve.mic import Microphone, LiveDisplay, run_live
>>> rec = Recognizer("exp/mini/conformer/onnx")
>>> with Microphone(device=None) as mic:              # the default input device, its own rate
...     stream = run_live(rec, mic, LiveDisplay(), seconds=10)
>>> print(stream.transcript().text)

Capture goes through `sounddevice <https://python-sounddevice.readthedocs.io>`_ (PortAudio),
imported only when a device is listed or opened, so ``serve`` itself needs neither. A callback
copies each block (``block_seconds``, 100 ms by default) of mono float32 samples into a queue at
the device's default rate (queried, not assumed); the main thread takes every queued block, feeds
it to ``Stream.accept_waveform(rate, samples)`` (which resamples to the model's 16 kHz) and
decodes. Several queued blocks are fed before one ``decode``, so a slow moment is caught up in
batched windows instead of one window per call.

Output (:class:`LiveDisplay`): on a terminal the partial text of the current segment is rewritten
in place (``\\r`` + clear line, cut to the terminal's width); when stdout is not a terminal each
change is a line ``partial <t>s | text``. Every segment closed by an endpoint, and the last one,
is a line ``final <start>-<end>s (rule) | text`` (seconds of captured audio), as ``asr stream``
prints for files; segments with no text (silence) are not shown.

Stopping: after ``seconds`` of audio (if given), or at the first Ctrl-C (SIGINT), SIGTERM or
SIGHUP (the terminal closed).
Either way the capture stops, the blocks already captured are fed, ``input_finished()`` flushes
the resampler, the features and the last (zero-padded) windows, and the last words are printed.
A second Ctrl-C aborts at once. A device that stops delivering audio (unplugged, its server
gone) gets the same flush before its :class:`MicError`.

Nothing here imports torch.
"""

from __future__ import annotations

import queue
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["MicError", "InputDevice", "import_sounddevice", "list_input_devices", "format_devices",
           "find_device", "Microphone", "LiveDisplay", "run_live"]

_INSTALL_PORTAUDIO = ("install the PortAudio library: `sudo apt-get install libportaudio2` (Debian/Ubuntu), "
                      "`sudo dnf install portaudio` (Fedora), `brew install portaudio` (macOS)")


_FULL_SCALE = 32767 / 32768  # an int16 device's largest sample, as float


class MicError(RuntimeError):
    """A microphone that cannot be used: no PortAudio, an unknown device, a device that fails
    to open or delivers no audio. The message says what to do."""


def import_sounddevice():
    """The ``sounddevice`` module, or a :class:`MicError` that says what to install."""
    try:
        import sounddevice
    except ImportError as e:
        raise MicError(f"the microphone needs the sounddevice package ({e}): pip install sounddevice "
                       "(or pip install -e '.[serve]')") from None
    except OSError as e:  # sounddevice raises OSError when it cannot load libportaudio
        raise MicError(f"sounddevice cannot load PortAudio ({e}): {_INSTALL_PORTAUDIO}") from None
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    """A PortAudio device with input channels."""

    index: int
    name: str
    channels: int  # maximum input channels
    default_rate: int  # Hz, the device's default sample rate
    hostapi: str  # e.g. "ALSA", "Core Audio", "MME"
    is_default: bool = False


def list_input_devices() -> list[InputDevice]:
    """Every PortAudio device with at least one input channel, in PortAudio's order."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as e:
        raise MicError(f"PortAudio cannot list audio devices: {e}") from None
    default = _default_input_index(sd)
    return [
        InputDevice(index=int(d["index"]), name=str(d["name"]), channels=int(d["max_input_channels"]),
                    default_rate=int(round(d["default_samplerate"])), hostapi=str(hostapis[d["hostapi"]]["name"]),
                    is_default=int(d["index"]) == default)
        for d in devices if d["max_input_channels"] > 0
    ]


def _default_input_index(sd) -> int:
    try:
        return int(sd.query_devices(kind="input")["index"])
    except (sd.PortAudioError, ValueError, TypeError, KeyError):
        return -1


def format_devices(devices: list[InputDevice]) -> str:
    """A table of input devices: index, name, channels, default rate (``*`` marks the default)."""
    if not devices:
        return "no audio input devices"
    width = max(len(d.name) for d in devices)
    lines = [f"  {'index':>5}  {'name':<{width}}  {'channels':>8}  {'rate':>6}  host API"]
    for d in devices:
        mark = "*" if d.is_default else " "
        lines.append(f"{mark} {d.index:>5}  {d.name:<{width}}  {d.channels:>8}  {d.default_rate:>6}  {d.hostapi}")
    return "\n".join(lines) + "\n(* the default input device)"


def find_device(spec: int | str | None, devices: list[InputDevice] | None = None) -> InputDevice:
    """The input device for ``spec``: None for the default input device, an index (int or a
    string of digits), or a name: an exact name (case-insensitive) first, else the one device
    whose name contains ``spec``. Anything else is a :class:`MicError` that lists the choices."""
    devices = list_input_devices() if devices is None else devices

    def choices() -> str:
        return "\n" + format_devices(devices) + "\n(use --device INDEX or --device NAME; --list-devices lists them)"

    if not devices:
        raise MicError("no audio input devices found by PortAudio: connect a microphone (or start PulseAudio / "
                       "PipeWire) and check `asr stream --list-devices`")
    if spec is None:
        for d in devices:
            if d.is_default:
                return d
        raise MicError(f"there is no default input device: choose one with --device{choices()}")
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        for d in devices:
            if d.index == index:
                return d
        raise MicError(f"no input device with index {index}{choices()}")
    exact = [d for d in devices if d.name.lower() == text.lower()]
    if len(exact) == 1:
        return exact[0]
    partial = exact or [d for d in devices if text.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(f"{d.index}: {d.name!r}" for d in partial)
        raise MicError(f"device name {text!r} matches several input devices ({names}): give the index{choices()}")
    raise MicError(f"no input device named {text!r}{choices()}")


class Microphone:
    """Mono float32 capture from one input device in blocks of ``block_seconds``.

    ``rate``: the device's default sample rate unless given. A device that cannot record mono is
    opened with two channels and downmixed. Samples are clipped to [-1, 1] (``peak`` is measured
    before). Use as a context manager (or ``start``/``stop``);
    ``read(timeout)`` returns the next block, ``(n,)`` float32 in [-1, 1], or None when none
    arrived within ``timeout`` seconds."""

    def __init__(self, device: int | str | None = None, block_seconds: float = 0.1, rate: int | None = None):
        if not block_seconds > 0:
            raise ValueError(f"block_seconds must be positive, got {block_seconds}")
        self.device = find_device(device)
        self.rate = int(rate or self.device.default_rate)
        if self.rate <= 0:
            raise MicError(f"input device {self.device.index} ({self.device.name!r}) reports no sample rate: "
                           "pass one explicitly")
        self.block_seconds = block_seconds
        self.blocksize = max(1, int(round(block_seconds * self.rate)))
        self.overflows = 0  # blocks PortAudio reported as overflowed (samples lost before we got them)
        self.samples = 0  # samples delivered by the device so far
        self.peak = 0.0  # largest |sample| so far
        self.clipped = 0  # samples at or beyond full scale (an int16 device's largest value counts)
        self.max_backlog = 0.0  # seconds: the most audio :func:`run_live` found queued at once
        self.decoded = 0  # samples :func:`run_live` gave the recognizer (``seconds`` worth at most)
        self._queue: queue.Queue[np.ndarray] = queue.Queue()
        self._stream = None

    def __repr__(self) -> str:
        d = self.device
        return f"Microphone({d.index}: {d.name!r}, {d.hostapi}, {self.rate} Hz, {self.blocksize}-sample blocks)"

    def _callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        # PortAudio's thread: copy and hand over, nothing else
        if status.input_overflow:
            self.overflows += 1
        block = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
        self.samples += len(block)
        level = np.abs(block)
        self.peak = max(self.peak, float(level.max(initial=0.0)))
        self.clipped += int(np.count_nonzero(level >= _FULL_SCALE))
        # a float device can go past full scale (input gain); the runtime refuses samples beyond
        # +-2, which ended the capture with a traceback: clip as a fixed-point device would
        np.clip(block, -1.0, 1.0, out=block)
        self._queue.put(block)

    def start(self) -> "Microphone":
        if self._stream is not None:
            return self
        sd = import_sounddevice()
        d = self.device
        errors = []
        for channels in dict.fromkeys((1, min(2, d.channels))):
            stream = None
            try:
                stream = sd.InputStream(device=d.index, samplerate=self.rate, channels=channels, dtype="float32",
                                        blocksize=self.blocksize, callback=self._callback)
                stream.start()
            except sd.PortAudioError as e:
                errors.append(f"{channels} channel(s): {e}")
                if stream is not None:
                    stream.close()
                continue
            self._stream = stream
            return self
        raise MicError(f"cannot open input device {d.index} ({d.name!r}, {d.hostapi}) at {self.rate} Hz: "
                       + "; ".join(errors) + " (try another --device; --list-devices lists them)")

    def stop(self) -> None:
        """Stop capturing; blocks already captured stay readable. The stream is aborted, not
        stopped: PortAudio's stop waits for its capture thread, which waits for the device, so
        on a device that delivers nothing (suspended, gone) it never returned."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                stream.abort()
            finally:
                stream.close()

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        try:
            return self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def __enter__(self) -> "Microphone":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class WavRecorder:
    """A mono float32 WAV file (``WAVE_FORMAT_IEEE_FLOAT``) whose header is rewritten after every
    block: a process killed while recording (kill -9, a crash, the power) leaves a valid file
    holding every block written, where a header written at ``close`` would still say 0 samples.
    ``write(block)`` takes float samples; ``close()`` (or the context manager) ends it."""

    _HEADER = 58  # RIFF + fmt (18 bytes: IEEE float needs cbSize) + fact + data chunk headers

    def __init__(self, path, rate: int):
        from pathlib import Path

        p = Path(path)
        if p.suffix.lower() != ".wav":
            raise ValueError(f"{path}: the recording is a float WAV file: name it FILE.wav")
        self.path, self.rate, self.frames = p, int(rate), 0
        self._f = open(p, "wb")
        self._f.write(self._header())
        self._f.flush()

    def _header(self) -> bytes:
        import struct

        data = 4 * self.frames
        return (b"RIFF" + struct.pack("<I", self._HEADER - 8 + data) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHHH", 18, 3, 1, self.rate, 4 * self.rate, 4, 32, 0)
                + b"fact" + struct.pack("<II", 4, self.frames)
                + b"data" + struct.pack("<I", data))

    def write(self, block: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        self.frames += len(block)
        end = self._f.tell()
        self._f.seek(0)
        self._f.write(self._header())
        self._f.seek(end)
        self._f.flush()  # to the OS: what a killed process wrote stays

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "WavRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LiveDisplay:
    """Prints results as they change. ``tty`` (default: ``out.isatty()``): the partial text is
    rewritten in place (``\\r``, clear line, the end of the text cut to the terminal width);
    otherwise each new partial text is its own line. Final segments are lines on both (segments that
    decoded nothing, e.g. closed by rule1 in silence, are not shown)."""

    CLEAR = "\r\x1b[K"

    def __init__(self, out=None, tty: bool | None = None, partials: bool = True):
        self.out = out if out is not None else sys.stdout
        self.tty = bool(self.out.isatty()) if tty is None else tty
        self.partials = partials
        self._shown = ""  # the partial text on screen (tty) or last printed

    def partial(self, r) -> None:
        if not self.partials or r.text == self._shown:
            return
        self._shown = r.text
        if self.tty:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            line = f"{r.end:7.2f}s | {r.text}"
            if len(line) > width:
                line = "..." + line[len(line) - width + 3 :]
            self.out.write(self.CLEAR + line)
        else:
            self.out.write(f"partial {r.end:7.2f}s | {r.text}\n")
        self.out.flush()

    def final(self, r) -> None:
        if not r.text:  # a segment of silence (rule1): nothing to show
            return
        why = f" ({r.endpoint})" if r.endpoint else ""
        self.out.write((self.CLEAR if self.tty else "") + f"final   {r.start:7.2f}-{r.end:.2f}s{why} | {r.text}\n")
        self.out.flush()
        self._shown = ""

    def close(self) -> None:
        """Ends a partial line left on a terminal."""
        if self.tty and self._shown:
            self.out.write(self.CLEAR)
            self.out.flush()
            self._shown = ""


class _StopOnSignals:
    """The first SIGINT, SIGTERM or SIGHUP sets ``event`` (the live loop then flushes and returns); the
    handlers are then removed, so a second SIGINT raises KeyboardInterrupt and a second SIGTERM
    terminates, as usual. Off the main thread (where signal handlers cannot be set) it does
    nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())

    def __init__(self, event: threading.Event):
        self.event = event
        self._old: dict | None = None

    def _restore(self) -> None:
        if self._old is not None:
            for sig, old in self._old.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)  # None: set outside Python
            self._old = None

    def _handler(self, signum, frame) -> None:
        self.event.set()
        self._restore()

    def __enter__(self) -> "_StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def run_live(recognizer, mic: Microphone, display: LiveDisplay | None = None, seconds: float | None = None,
             stop: threading.Event | None = None, audio_timeout: float = 5.0, on_start=None, on_audio=None):
    """Recognize ``mic`` (started here if it is not) until ``seconds`` of audio have been
    captured, ``stop`` is set, or SIGINT, SIGTERM or SIGHUP; then flush: the blocks already captured (up to
    ``seconds``), ``input_finished()``, the last windows. ``display`` gets every changed partial
    result and every final segment; ``on_start()`` is called when the first audio arrives (an
    audio system may take a moment after the stream starts, e.g. PulseAudio ~0.8 s for its first
    client, and what is said before that is not recorded); ``on_audio(block)``
    with every block fed, in order (to save the recording: decoding it in one piece gives the same
    result). Returns the :class:`~serve.Stream` (``stream.transcript()``).

    A device that delivers nothing for ``audio_timeout`` seconds (at least two blocks' time: a
    block comes only when it is full) is a :class:`MicError`, raised
    after the flush (the display has shown the last words, ``on_audio`` has had every block)."""
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    stop = stop if stop is not None else threading.Event()
    audio_timeout = max(audio_timeout, 2 * mic.block_seconds)  # --piece-ms 6000: the first block comes after 6 s
    stream = recognizer.create_stream()
    limit = None if seconds is None else int(round(seconds * mic.rate))  # samples
    mic.decoded = 0

    def accept(block: np.ndarray) -> None:
        if limit is not None:
            block = block[: limit - mic.decoded]
        if len(block):
            stream.accept_waveform(mic.rate, block)
            mic.decoded += len(block)
            if on_audio is not None:
                on_audio(block)

    def feed(block: np.ndarray) -> None:
        n = len(block)
        accept(block)
        while (more := mic.read(0)) is not None:  # catch up on everything queued, then decode once
            accept(more)
            n += len(more)
        mic.max_backlog = max(mic.max_backlog, n / mic.rate)

    def report() -> None:
        for seg in stream.pop_segments():
            if display is not None:
                display.final(seg)
        res = stream.result()
        if display is not None and not res.is_final:
            display.partial(res)

    with _StopOnSignals(stop):  # from here on: a Ctrl-C during the set-up below stops cleanly too
        stream.accept_waveform(mic.rate, np.zeros(0, np.float32))  # the resampler's filter, before capture starts
        if not stop.is_set():
            mic.start()
        waited = 0.0  # seconds waited for audio since the last block
        started = False
        lost = None  # the MicError of a device that stopped delivering, raised after the flush
        try:
            while not stop.is_set() and (limit is None or mic.decoded < limit):
                t0 = time.monotonic()
                block = mic.read(0.05)
                if block is None:
                    # the time this read took, but not the time the process was stopped (Ctrl-Z):
                    # the capture thread was stopped too, and resumes with the process
                    waited += min(time.monotonic() - t0, 0.5)
                    if waited > audio_timeout:
                        d = mic.device
                        lost = MicError(f"input device {d.index} ({d.name!r}) delivered no audio for "
                                        f"{audio_timeout:g} s: is it in use or disconnected? "
                                        "(--list-devices lists the devices)")
                        break
                    continue
                waited = 0.0
                if not started and on_start is not None:
                    on_start()
                started = True
                feed(block)
                recognizer.decode(stream)
                report()
        finally:
            mic.stop()
        while (block := mic.read(0)) is not None:  # captured before the stop
            accept(block)
        stream.input_finished()
        recognizer.decode(stream)
        report()
        if display is not None:
            display.close()
    if lost is not None:  # the words captured before the device went away were shown first
        raise lost
    return stream
