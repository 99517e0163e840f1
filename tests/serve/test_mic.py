"""``asr stream --mic`` on a real PortAudio device.

The test starts its own PulseAudio server (no sound card needed) with a null sink ``feed``
whose monitor is the default source, so PortAudio (ALSA host API -> the ALSA ``pulse``/``default``
devices of libasound2-plugins -> PulseAudio) records whatever ``paplay --device=feed`` plays.
The command runs as a subprocess: it finds the device, captures at its default rate (44.1 kHz:
the runtime resamples), prints partial and final results, and stops after ``--seconds`` or at a
Ctrl-C typed on its terminal. It saves what it captured (``--save``); the test checks that the
recording holds the utterance played, that the output is exactly the runtime's decoding of that
recording, and that the transcript is recognition of the utterance (character error rate against
the reference text, so an empty or garbled transcript fails); see :func:`_check_live`.

Found in this container (Debian 12, PulseAudio 16.1, as root, no D-Bus): the server runs as root
without ``--system`` (it warns); once a recording client has disconnected, the monitor of an idle
null sink delivers no audio until something plays, so a loopback from a null source keeps
``feed`` playing silence, as a real microphone always delivers samples; the first recording
client after the server starts gets its first audio ~0.8 s late (the command says "listening"
only once audio arrives).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import fcntl
import functools
import glob
import io
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate, resample_poly

from serve import EndpointConfig, EndpointRule, Recognizer
from serve.mic import LiveDisplay
from serve.recognizer import Result

from .conftest import cer, read_wav

ROOT = Path(__file__).resolve().parents[2]
APT = "libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins"
# `asr stream ...` in a fresh interpreter that reports whether torch was imported
CLI = ("import sys\nfrom asr.cli import main\nmain(sys.argv[1:])\n"
       "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-FREE', file=sys.stderr)\n")
FINAL = re.compile(r"^final\s+(\d+\.\d+)-(\d+\.\d+)s(?: \((rule\d)\))? \| (.*?)\s*$", re.M)


def _missing() -> list[str]:
    missing = [p for p in ("pulseaudio", "pactl", "paplay") if shutil.which(p) is None]
    if ctypes.util.find_library("portaudio") is None:
        missing.append("libportaudio2")
    plugin = "alsa-lib/libasound_module_pcm_pulse.so"
    if not any(glob.glob(f"{d}/{plugin}") for d in ("/usr/lib/*", "/usr/lib", "/usr/lib64", "/usr/local/lib")):
        missing.append("the ALSA pulse plugin (libasound2-plugins)")
    return missing


@pytest.fixture(scope="module")
def pulse():
    """A private PulseAudio server; yields the environment for its clients (PULSE_SERVER)."""
    missing = _missing()
    if missing:
        msg = f"missing {', '.join(missing)}: apt-get install {APT}"
        if os.geteuid() == 0:
            pytest.fail(f"{msg} (`bash tests/run.sh` installs them)")
        pytest.skip(f"{msg} (not root, so tests/run.sh cannot install them)")
    d = Path(tempfile.mkdtemp(prefix="asr-pulse-"))  # short: a unix socket path has ~100 characters
    (d / "run").mkdir()
    sock = d / "run" / "native"
    (d / "default.pa").write_text(
        f"load-module module-native-protocol-unix auth-anonymous=1 socket={sock}\n"
        "load-module module-null-sink sink_name=feed\n"
        "load-module module-null-source source_name=silence\n"
        "load-module module-loopback source=silence sink=feed latency_msec=20\n"
        "set-default-sink feed\n"
        "set-default-source feed.monitor\n"
    )
    server_env = {**os.environ, "HOME": str(d), "XDG_RUNTIME_DIR": str(d), "PULSE_RUNTIME_PATH": str(d / "run")}
    log = open(d / "pulseaudio.log", "w")
    proc = subprocess.Popen(
        ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "-F", str(d / "default.pa"),
         "--use-pid-file=no", "--realtime=no", "--high-priority=no", "--log-target=stderr"],
        env=server_env, stdout=log, stderr=subprocess.STDOUT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    # HOME: no ~/.asoundrc or ~/.config/pulse of the user's in the way
    env.update(PULSE_SERVER=f"unix:{sock}", HOME=str(d), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT))
    try:
        deadline = time.monotonic() + 20
        while True:
            ok = subprocess.run(["pactl", "info"], env=env, capture_output=True, text=True)
            if ok.returncode == 0 and "Default Source: feed.monitor" in ok.stdout:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (d / "pulseaudio.log").read_text()[-1500:]
                pytest.skip(f"PulseAudio does not start here (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def _asr(env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asr.cli", "stream", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _wait_for(read, pattern: str, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pattern not in read():
        if proc.poll() is not None:
            raise AssertionError(f"the command exited ({proc.returncode}) before {pattern!r}:\n{read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} after {timeout} s:\n{read()}")
        time.sleep(0.05)


def _play(env, wav: Path) -> None:
    subprocess.run(["paplay", "--device=feed", str(wav)], env=env, check=True, timeout=60)


@functools.lru_cache(maxsize=None)
def _offline_cers(onnx_dir: Path, wav: Path, ref: str) -> tuple[float, ...]:
    """Character error rates of the offline transcripts of the utterance after 1 s of silence
    (as the tests play it), started at 16 offsets across one encoder frame. A live capture starts
    at an arbitrary offset, and a tiny model overfit on six cuts is far from shift-invariant:
    measured on one utterance, its CER ranges from 0.18 to 0.53 with where the speech falls in
    the 40 ms frame."""
    rec = Recognizer(onnx_dir, endpoint=None)
    x = read_wav(wav)
    out = []
    for k in range(16):
        lead = np.zeros(int(round((1.0 + k * rec.frame_seconds / 16) * 16000)), np.float32)
        out.append(cer(ref, rec.transcribe(np.concatenate([lead, x, np.zeros(16000, np.float32)])).text))
    return tuple(out)


def _check_live(output: str, saved: Path, endpoint: EndpointConfig, onnx_dir: Path, wav: Path, ref: str) -> str:
    """Checks what ``asr stream --mic --save saved.wav`` printed; returns the transcript.

    1. The device delivered the utterance: it is in the recording (at the device's rate, 44.1 kHz),
       after the lead-in silence, intact (correlation with the WAV file after resampling to 16 kHz;
       PulseAudio's own resampling and 16-bit samples stay above 0.9, measured 0.96).
    2. What was shown live (final lines with their times and rules, the transcript) is exactly the
       runtime's decoding of that recording in one piece: blocks, queue, resampling, endpoints and
       the flush at the end lost or added nothing.
    3. It is recognition of the utterance: its CER against the reference text is within what the
       model gives for the file at any start offset (+0.15), and at most 0.7; an empty or garbled
       transcript fails."""
    x, rate = sf.read(str(saved), dtype="float32")
    assert rate == 44100, rate
    w = read_wav(wav)
    y = resample_poly(x, 160, 441)
    assert len(y) > len(w), (len(y), len(w))
    lag = int(np.argmax(correlate(y, w, mode="valid", method="fft")))
    corr = float(np.corrcoef(y[lag : lag + len(w)], w)[0, 1])
    assert corr > 0.9 and lag / 16000 > 0.9, (corr, lag / 16000)

    rec = Recognizer(onnx_dir, endpoint=endpoint)
    s = rec.create_stream()
    s.accept_waveform(rate, x)
    s.input_finished()
    rec.decode(s)
    expect = [(f"{r.start:.2f}", f"{r.end:.2f}", r.endpoint or "", r.text) for r in s.segments if r.text]
    assert FINAL.findall(output) == expect, output
    transcript = re.search(r"^text: (.*)$", output, re.M).group(1)
    assert transcript == s.transcript().text, output

    cers = _offline_cers(onnx_dir, wav, ref)
    assert min(cers) < 0.4, f"the model itself does not recognize this utterance ({ref!r}): CER {min(cers):.2f}"
    got = cer(ref, transcript)
    assert got <= min(max(cers) + 0.15, 0.7), (
        f"mic transcript {transcript!r}: CER {got:.2f} (offline {min(cers):.2f}-{max(cers):.2f}), ref {ref!r}")
    return transcript


def test_list_devices_and_bad_device(pulse, live_model):
    r = _asr(pulse, "--list-devices")
    assert r.returncode == 0, r.stderr
    rows = {m.group(2): m for m in re.finditer(r"^([* ])\s+(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+ALSA$", r.stdout, re.M)}
    names = {m.group(3): m for m in rows.values()}
    assert {"pulse", "default"} <= set(names), r.stdout
    for name in ("pulse", "default"):
        assert int(names[name].group(4)) > 0 and names[name].group(5) == "44100", r.stdout  # channels, rate
    assert names["default"].group(1) == "*", r.stdout

    for bad, says in (("nosuchmic", "no input device named 'nosuchmic'"), ("97", "no input device with index 97")):
        r = _asr(pulse, "--mic", "--device", bad, "--onnx", str(live_model.onnx_dir), "--seconds", "1")
        assert r.returncode == 1
        assert says in r.stderr and "pulse" in r.stderr and "default" in r.stderr, r.stderr  # the choices
        assert "Traceback" not in r.stderr, r.stderr
    assert _asr(pulse, "--mic", "--device", "pulse").returncode == 1  # --onnx missing: a clear error, no capture
    # an index works like a name
    r = _asr(pulse, "--mic", "--device", names["pulse"].group(2), "--onnx", str(live_model.onnx_dir), "--seconds", "0.5")
    assert r.returncode == 0 and "'pulse'" in r.stderr, r.stderr


def test_save_to_a_bad_name_is_a_clear_error(pulse, live_model, tmp_path):
    """--save to a name without an extension or to a directory used to be a TypeError traceback
    from soundfile; to a .flac or .ogg name, a bare "Invalid combination of format, subtype and
    endian". Each is now one error line that says what --save writes."""
    (tmp_path / "rec.wav").mkdir()
    for name in ("rec", "rec.flac", ".", "rec.wav"):
        r = _asr(pulse, "--mic", "--onnx", str(live_model.onnx_dir), "--seconds", "0.5", "--save", str(tmp_path / name))
        assert r.returncode == 1, r.stderr
        assert f"error: cannot write --save {tmp_path / name}: " in r.stderr and "FILE.wav" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "listening" not in r.stderr, r.stderr


def test_the_recording_survives_a_killed_process(tmp_path):
    """--save's WAV header used to be written at close: a process killed while recording (kill
    -9, a crash) left a file whose header said 0 samples. ``WavRecorder`` rewrites it after every
    block: a process that dies without closing leaves a valid float WAV of every block written,
    read alike by libsndfile and scipy."""
    from scipy.io import wavfile

    x = np.random.default_rng(0).uniform(-1, 1, 3 * 4410).astype(np.float32)
    path = tmp_path / "rec.wav"
    code = ("import os, sys, numpy as np\nfrom serve.mic import WavRecorder\n"
            "x = np.frombuffer(sys.stdin.buffer.read(), np.float32)\n"
            f"w = WavRecorder({str(path)!r}, 44100)\n"
            "for i in range(0, len(x), 4410):\n    w.write(x[i : i + 4410])\n"
            "os._exit(9)  # no close, no interpreter shutdown: as kill -9\n")
    r = subprocess.run([sys.executable, "-c", code], input=x.tobytes(), cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == 9, r.stderr
    y, rate = sf.read(str(path), dtype="float32")
    assert rate == 44100 and np.array_equal(y, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning about the header
        rate, z = wavfile.read(str(path))
    assert rate == 44100 and z.dtype == np.float32 and np.array_equal(z, x)


def test_mic_blocks_longer_than_the_no_audio_limit(pulse, live_model):
    """--piece-ms 5500: the first block arrives after 5.5 s, which is not a device that
    delivers nothing (it used to be the "delivered no audio for 5 s" error every time)."""
    r = _asr(pulse, "--mic", "--onnx", str(live_model.onnx_dir), "--piece-ms", "5500", "--seconds", "5.5")
    assert r.returncode == 0, r.stderr
    assert "captured 5.50 s" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_missing_portaudio_is_a_clear_error(tmp_path):
    """Without libportaudio, `sounddevice` cannot load: the command says what to install."""
    code = ("import ctypes.util, sys\nfind = ctypes.util.find_library\n"
            "ctypes.util.find_library = lambda name: None if 'portaudio' in name else find(name)\n"
            "from asr.cli import main\nmain(['stream', '--list-devices'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "cannot load PortAudio" in r.stderr and "libportaudio2" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_mic_transcribes_speech_until_seconds(pulse, live_model, tmp_path):
    """Not a terminal: partial results as lines, a final line (rule2 endpoint, with times) and the
    transcript, then it stops by itself after --seconds; torch is never imported. The recording
    (--save) holds the utterance, and the output is exactly its decoding (:func:`_check_live`).

    The tiny model may emit a token on the lead-in's digital silence (one session's model
    printed "A" on 2 s of zeros offline too): such a segment is closed by rule2 before the
    speech's and must have started in the lead-in; the speech's segment is the last final."""
    wav, ref = live_model.utterances[0]
    dur = len(read_wav(wav)) / 16000
    seconds = round(1.0 + dur + 2.5, 2)  # silence, the utterance, then enough silence for rule2 (1.2 s)
    out, err, saved = tmp_path / "out.txt", tmp_path / "err.txt", tmp_path / "mic.wav"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-c", CLI, "stream", "--mic", "--onnx", str(live_model.onnx_dir),
                                 "--seconds", f"{seconds:.2f}", "--save", str(saved)],
                                cwd=ROOT, env=pulse, stdout=fo, stderr=fe)
        try:
            _wait_for(err.read_text, "listening", proc, timeout=120)
            t0 = time.monotonic()
            time.sleep(1.0)
            _play(pulse, wav)
            rc = proc.wait(timeout=seconds + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
        elapsed = time.monotonic() - t0
    stdout, stderr = out.read_text(), err.read_text()
    assert rc == 0, stderr
    assert "TORCH-FREE" in stderr, stderr
    assert "44100 Hz" in stderr, stderr  # captured at the device's rate, resampled by the runtime
    assert f"captured {seconds:.2f} s at 44100 Hz" in stderr, stderr  # not the last 100 ms block's end
    assert elapsed < seconds + 15, (elapsed, seconds)
    partials = [line for line in stdout.splitlines() if line.startswith("partial ")]
    finals = FINAL.findall(stdout)
    assert len(partials) >= 3, stdout  # the text grew while the speech played
    assert 1 <= len(finals) <= 2, stdout
    assert all(rule == "rule2" for _, _, rule, _ in finals), stdout
    assert all(float(start) < 1.0 for start, _, _, _ in finals[:-1]), stdout  # in the lead-in silence
    start, end, rule, text = finals[-1]
    assert 0 <= float(start) and float(end) - float(start) >= dur, stdout
    assert float(end) <= seconds + 0.5, stdout
    assert sf.info(str(saved)).frames == round(seconds * 44100)  # --seconds of audio
    transcript = _check_live(stdout, saved, EndpointConfig(), live_model.onnx_dir, wav, ref)
    assert transcript == " ".join(t for _, _, _, t in finals), stdout


def test_mic_ctrl_c_on_a_terminal_flushes_the_last_words(pulse, live_model, tmp_path):
    """On a terminal (a pty, 60 columns): the partial text is rewritten in place and never wraps;
    Ctrl-C typed on the terminal stops the capture, and the last words, which no endpoint has
    closed (rule2 is set to 30 s), are decoded and printed, exactly the recording's decoding;
    exit status 0."""
    wav, ref = live_model.utterances[0]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO  # no "^C" echoed into the output; Ctrl-C still signals (ISIG)
    termios.tcsetattr(slave, termios.TCSANOW, attrs)

    def controlling_tty() -> None:  # runs in the child after setsid(): the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    saved = tmp_path / "mic.wav"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "stream", "--mic", "--device", "pulse", "--rule2", "30",
                             "--onnx", str(live_model.onnx_dir), "--save", str(saved)],
                            cwd=ROOT, env={**pulse, "TERM": "xterm"},
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=controlling_tty)
    os.close(slave)
    buf = io.BytesIO()

    def reader() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            buf.write(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        _wait_for(lambda: buf.getvalue().decode(errors="replace"), "listening", proc, timeout=120)
        time.sleep(1.0)
        _play(pulse, wav)
        time.sleep(0.3)
        os.write(master, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the command
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        t.join(5)
        os.close(master)
    output = buf.getvalue().decode(errors="replace").replace("\r\n", "\n")
    assert rc == 0, output
    assert "TORCH-FREE" in output and "Traceback" not in output, output
    assert "partial " not in output  # a terminal gets in-place rewrites, not partial lines
    rewrites = output.split(LiveDisplay.CLEAR)
    assert len(rewrites) >= 4, output
    for piece in rewrites[1:-1]:  # each in-place partial fits the 60 columns, cut at its start
        if not piece.startswith("final"):
            assert "\n" not in piece and len(piece) <= 59, repr(piece)
    lines = output.replace(LiveDisplay.CLEAR, "\n")
    finals = FINAL.findall(lines)
    assert len(finals) == 1, output
    assert finals[0][2] == "", output  # closed by Ctrl-C, not by an endpoint
    endpoint = EndpointConfig(rule2=EndpointRule(True, 30.0, 0.0))
    assert _check_live(lines, saved, endpoint, live_model.onnx_dir, wav, ref) == finals[0][3]


@contextlib.contextmanager
def _mic_running(pulse, live_model, tmp_path, *args):
    """``asr stream --mic`` (not a terminal, --rule2 30: no endpoint closes the utterance) with
    --save, started and listening: (proc, stdout file, stderr file, recording); killed at the
    end of the block if it is still running."""
    out, err, saved = tmp_path / "out.txt", tmp_path / "err.txt", tmp_path / "mic.wav"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-c", CLI, "stream", "--mic", "--rule2", "30", "--onnx",
                                 str(live_model.onnx_dir), "--save", str(saved), *args],
                                cwd=ROOT, env=pulse, stdout=fo, stderr=fe)
    try:
        _wait_for(err.read_text, "listening", proc, timeout=120)
        yield proc, out, err, saved
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _decoded(saved: Path, endpoint: EndpointConfig, onnx_dir: Path) -> list[tuple[str, str, str, str]]:
    """The final lines the runtime gives for the recording decoded in one piece."""
    x, rate = sf.read(str(saved), dtype="float32")
    rec = Recognizer(onnx_dir, endpoint=endpoint)
    s = rec.create_stream()
    s.accept_waveform(rate, x)
    s.input_finished()
    rec.decode(s)
    return [(f"{r.start:.2f}", f"{r.end:.2f}", r.endpoint or "", r.text) for r in s.segments if r.text]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_mic_sigterm_stops_like_ctrl_c(pulse, live_model, tmp_path, sig):
    """SIGTERM (a service manager, `timeout`, `kill`) or SIGHUP (the terminal closed)
    mid-utterance stops like the first Ctrl-C:
    the last words are decoded and printed, the transcript follows, exit status 0, and the
    recording is a complete WAV file. It used to kill the command at once: no last words, no
    transcript, exit 143, and a WAV header that still said 0 samples (other readers than
    libsndfile saw an empty or broken file)."""
    from scipy.io import wavfile

    wav, ref = live_model.utterances[0]
    with _mic_running(pulse, live_model, tmp_path) as (proc, out, err, saved):
        time.sleep(1.0)
        _play(pulse, wav)
        time.sleep(0.3)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    stdout, stderr = out.read_text(), err.read_text()
    assert rc == 0, stderr
    assert "Traceback" not in stderr and "captured " in stderr, stderr
    assert "full scale" not in stderr, stderr  # speech at a normal level: no clipping warning
    finals = FINAL.findall(stdout)
    assert len(finals) == 1 and finals[0][2] == "", stdout  # closed by the signal, not by an endpoint
    endpoint = EndpointConfig(rule2=EndpointRule(True, 30.0, 0.0))
    assert _check_live(stdout, saved, endpoint, live_model.onnx_dir, wav, ref) == finals[0][3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wavfile.WavFileWarning)  # libsndfile's PEAK chunk
        rate, x = wavfile.read(str(saved))  # the header was written: the size of the data is right
    assert rate == 44100 and len(x) == sf.info(str(saved)).frames > 0


def test_mic_device_that_stops_delivering(pulse, live_model, tmp_path):
    """The device stops delivering mid-utterance (its sink suspended: no more samples, as an
    unplugged or stalled device): after 5 s the command prints the words captured until then
    (exactly the recording's decoding), then the error, exit status 1; the recording is closed.
    It used to hang for ever in PortAudio's stop (waiting for a capture thread that waits for
    the device), where neither the 5 s error nor Ctrl-C could end it; and the error, when it
    came (a device that failed), lost the last words."""
    wav, _ = live_model.utterances[0]
    with _mic_running(pulse, live_model, tmp_path) as (proc, out, err, saved):
        try:
            time.sleep(1.0)
            _play(pulse, wav)
            subprocess.run(["pactl", "suspend-sink", "feed", "1"], env=pulse, check=True, timeout=30)
            t0 = time.monotonic()
            rc = proc.wait(timeout=30)
            waited = time.monotonic() - t0
        finally:
            subprocess.run(["pactl", "suspend-sink", "feed", "0"], env=pulse, timeout=30)  # for the other tests
    stdout, stderr = out.read_text(), err.read_text()
    assert rc == 1, stderr
    assert "delivered no audio for 5 s" in stderr and "Traceback" not in stderr, stderr
    assert 4 < waited < 20, waited
    finals = FINAL.findall(stdout)
    assert finals and finals[-1][3], stdout  # the utterance's words
    assert finals == _decoded(saved, EndpointConfig(rule2=EndpointRule(True, 30.0, 0.0)), live_model.onnx_dir), stdout


def test_mic_survives_being_suspended(pulse, live_model, tmp_path):
    """A process stopped for longer than the 5 s no-audio limit (Ctrl-Z, then fg) goes on
    listening when it is continued; it used to stop at once with "delivered no audio for 5 s"
    (the time it was stopped counted as the device's silence)."""
    with _mic_running(pulse, live_model, tmp_path) as (proc, out, err, _):
        proc.send_signal(signal.SIGSTOP)
        time.sleep(6.5)
        proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)
        assert proc.poll() is None, err.read_text()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    assert rc == 0, err.read_text()
    assert "text: " in out.read_text()


def test_ctrl_c_during_set_up_stops_cleanly():
    """A Ctrl-C while ``run_live`` sets up (the resampler's filter: ~1 s for scipy's first
    import) is the first Ctrl-C: nothing is captured, the (empty) result is returned. It used to
    arrive before the handler was installed: KeyboardInterrupt, which the command reports as a
    second Ctrl-C ("interrupted", exit 130)."""
    from serve.mic import run_live

    class FakeStream:
        def accept_waveform(self, rate, samples):
            os.kill(os.getpid(), signal.SIGINT)  # typed while the filter is designed
            time.sleep(0.1)  # the handler runs here

        def input_finished(self):
            pass

        def pop_segments(self):
            return []

        def result(self):
            return Result(text="", is_final=True)

    class FakeRecognizer:
        def create_stream(self):
            return FakeStream()

        def decode(self, stream):
            return 0

    class FakeMic:
        rate = 16000
        block_seconds = 0.1
        started = False

        def start(self):
            self.started = True

        def stop(self):
            pass

        def read(self, timeout=None):
            return None

    mic = FakeMic()
    try:
        assert isinstance(run_live(FakeRecognizer(), mic), FakeStream)
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C during the set-up escaped run_live as KeyboardInterrupt")
    assert not mic.started
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_samples_past_full_scale_are_clipped(monkeypatch):
    """A float device past full scale (a high input gain: samples up to 3 here) is clipped to
    [-1, 1] as a fixed-point device would be; the runtime refuses samples beyond +-2, and such a
    block used to end the capture with a ValueError traceback. ``peak`` keeps the level before
    clipping, and ``clipped`` counts the samples at full scale (`asr stream --mic` warns)."""
    import types

    from serve.features import check_samples
    from serve.mic import Microphone

    sd = types.ModuleType("sounddevice")
    sd.PortAudioError = type("PortAudioError", (Exception,), {})
    device = {"index": 0, "name": "hot", "max_input_channels": 2, "default_samplerate": 48000.0, "hostapi": 0}
    sd.query_devices = lambda kind=None: device if kind == "input" else [device]
    sd.query_hostapis = lambda: [{"name": "Core Audio"}]
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    mic = Microphone()
    status = types.SimpleNamespace(input_overflow=False)
    loud = np.linspace(-3, 3, 4800, dtype=np.float32)
    for indata in (loud[:, None], np.stack([loud, loud], axis=1)):  # mono, and stereo downmixed
        mic._callback(indata, len(indata), None, status)
        block = mic.read(0)
        assert block.dtype == np.float32 and block.min() == -1 and block.max() == 1
        np.testing.assert_array_equal(block, np.clip(loud, -1, 1))
        check_samples(block)  # what Stream.accept_waveform checks
    assert mic.peak == 3.0
    assert mic.clipped == 2 * int(np.count_nonzero(np.abs(loud) >= 32767 / 32768))  # counted for the warning


def test_live_display(monkeypatch):
    """In place on a terminal (cut to its width, from the left), lines otherwise; empty segments
    are not shown."""

    def res(text, end, **kw):
        return Result(text=text, end=end, **kw)

    out = io.StringIO()
    d = LiveDisplay(out, tty=False)
    d.partial(res("HEL", 0.4))
    d.partial(res("HEL", 0.5))  # unchanged: nothing
    d.partial(res("HELLO", 0.6))
    d.final(res("HELLO", 1.8, start=0.0, is_final=True, endpoint="rule2"))
    d.final(res("", 4.2, start=1.8, is_final=True, endpoint="rule1"))
    d.final(res("WORLD", 5.0, start=4.2, is_final=True))
    assert out.getvalue().splitlines() == [
        "partial    0.40s | HEL", "partial    0.60s | HELLO",
        "final      0.00-1.80s (rule2) | HELLO", "final      4.20-5.00s | WORLD"]

    out = io.StringIO()
    d = LiveDisplay(out, tty=True)
    monkeypatch.setenv("COLUMNS", "30")
    d.partial(res("A" * 10, 1.0))
    d.partial(res("A" * 10 + " " + "B" * 30, 2.0))
    d.final(res("A" * 10 + " " + "B" * 30, 3.0, is_final=True, endpoint="rule2"))
    d.partial(res("C", 3.5))
    d.close()
    c = LiveDisplay.CLEAR
    assert out.getvalue() == (
        f"{c}   1.00s | AAAAAAAAAA"
        f"{c}...{'B' * 26}"
        f"{c}final      0.00-3.00s (rule2) | AAAAAAAAAA {'B' * 30}\n"
        f"{c}   3.50s | C"
        f"{c}")
