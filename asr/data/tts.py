"""Local text-to-speech engines for the embedded corpus: espeak-ng, flite and festival.

Each engine runs as a subprocess that writes a WAV file; the audio is read back, resampled to
16 kHz with ``scipy.signal.resample_poly`` (espeak-ng speaks at 22050 Hz, flite's ``kal`` at
8 kHz) and returned as float32 samples in [-1, 1]. All three engines are deterministic: the same
voice and text give the same samples, which the corpus builder relies on.

A voice is a ``Voice``: engine, voice name, rate and pitch. The units differ by engine:

- espeak-ng: ``voice`` is ``accent+variant`` (``en-gb-scotland+f2``), ``rate`` is words per
  minute (``-s``), ``pitch`` is espeak-ng's 0-99 pitch (``-p``).
- flite: ``voice`` is a built-in voice (``kal``, ``kal16``, ``awb``, ``rms``, ``slt``), ``rate``
  is the duration stretch (> 1 is slower), ``pitch`` is the target mean F0 in Hz (0 keeps the
  voice's own; ``rms`` ignores it).
- festival: ``voice`` is a festival voice (``kal_diphone``), ``rate`` is the duration stretch,
  ``pitch`` is the target mean F0 in Hz (0 keeps the voice's own).

Debian packages: ``espeak-ng``, ``flite``, ``festival festvox-kallpc16k``.
"""

from __future__ import annotations

import os
import re
import tempfile
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = [
    "SAMPLE_RATE",
    "ENGINES",
    "FLITE_VOICES",
    "FLITE_BASE_F0",
    "Voice",
    "TTSError",
    "synthesize",
    "check_engines",
    "tool_versions",
    "resample",
    "estimate_seconds",
    "espeak_accents",
    "espeak_variants",
    "festival_voices",
]

SAMPLE_RATE = 16000
Engine = Literal["espeak-ng", "flite", "festival"]
ENGINES: tuple[str, ...] = ("espeak-ng", "flite", "festival")

# flite 2.2's built-in voices usable for open text (awb_time is limited-domain) and their own
# mean F0 in Hz (measured), used to turn a pitch shift in semitones into a target F0.
FLITE_VOICES: tuple[str, ...] = ("kal", "kal16", "awb", "rms", "slt")
FLITE_BASE_F0: dict[str, float] = {"kal": 92.0, "kal16": 92.0, "awb": 129.0, "rms": 101.0, "slt": 170.0}
FESTIVAL_BASE_F0: dict[str, float] = {"kal_diphone": 103.0}

_INSTALL = {  # Debian packages
    "espeak-ng": "espeak-ng",
    "flite": "flite",
    "festival": "festival festvox-kallpc16k",
}
_TIMEOUT_S = 60.0


class TTSError(RuntimeError):
    """One synthesis call failed (non-zero exit, timeout, empty or unreadable output)."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine, a voice of that engine, a rate and a pitch.

    See the module docstring for the units of ``rate`` and ``pitch`` per engine.
    """

    engine: Engine
    voice: str
    rate: float
    pitch: float

    def describe(self) -> str:
        """``engine:voice@rate/pitch`` with engine-specific units, for logs and SPEAKERS.TXT."""
        if self.engine == "espeak-ng":
            return f"{self.engine}:{self.voice}@{self.rate:g}wpm/p{self.pitch:g}"
        pitch = "default" if self.pitch <= 0 else f"{self.pitch:g}Hz"
        return f"{self.engine}:{self.voice}@x{self.rate:g}/{pitch}"


def check_engines(engines: set[str] | list[str] | tuple[str, ...]) -> None:
    """Raise a clear error, naming every one, when needed TTS programs are missing from PATH."""
    for engine in sorted(set(engines)):
        if engine not in _INSTALL:
            raise ValueError(f"unknown TTS engine {engine!r}; expected one of {list(ENGINES)}")
    missing = [e for e in sorted(set(engines)) if shutil.which(e) is None]
    if missing:
        raise FileNotFoundError(
            f"TTS program(s) {', '.join(map(repr, missing))} not found on PATH; install them with "
            f"`apt-get install {' '.join(_INSTALL[e] for e in missing)}` (or `bash scripts/bootstrap.sh`)"
        )


def tool_versions(engines: set[str] | list[str] | tuple[str, ...]) -> dict[str, str]:
    """Version strings of the given engines (first line of their version output)."""
    out: dict[str, str] = {}
    for engine in sorted(set(engines)):
        cmd = {"espeak-ng": ["espeak-ng", "--version"], "flite": ["flite", "--version"],
               "festival": ["festival", "--version"]}[engine]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            text = (proc.stdout or proc.stderr).strip().splitlines()
            out[engine] = text[0] if text else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            out[engine] = "unavailable"
    return out


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of ``x`` (T,) from ``sr_in`` to ``sr_out``; returns (T',) float64."""
    if sr_in == sr_out:
        return x.astype(np.float64, copy=False)
    ratio = Fraction(sr_out, sr_in)
    return resample_poly(x.astype(np.float64, copy=False), ratio.numerator, ratio.denominator)


def estimate_seconds(voice: Voice, text: str) -> float:
    """Rough spoken duration of one sentence ``text`` by ``voice``, in seconds.

    Fitted on the measured durations of the default corpus (about 1,650 utterances); one
    utterance is off by ~10%, a split's total by ~3%. Used only to plan how many sentences make
    an utterance and a chapter; the corpus reports measured durations.
    """
    chars = len(text)
    if voice.engine == "espeak-ng":
        return 0.15 + chars * 8.85 / max(voice.rate, 1.0)
    return 0.25 + chars * 0.052 * voice.rate


def _festival_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command(voice: Voice, text: str, wav: Path, workdir: Path) -> tuple[list[str], bytes | None]:
    if voice.engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice.voice, "-s", str(int(round(voice.rate))),
               "-p", str(int(round(voice.pitch))), "-w", str(wav)]
        return cmd, text.encode("utf-8")  # text on stdin: never parsed as an option
    if voice.engine == "flite":
        cmd = ["flite", "-voice", voice.voice, "--setf", f"duration_stretch={voice.rate:.4f}"]
        if voice.pitch > 0:
            cmd += ["--setf", f"int_f0_target_mean={voice.pitch:.2f}"]
        txt = workdir / "flite.txt"
        txt.write_text(text + "\n", encoding="utf-8")
        return cmd + ["-f", str(txt), "-o", str(wav)], None
    if voice.engine == "festival":
        lines = [f"(voice_{voice.voice})", f"(Parameter.set 'Duration_Stretch {voice.rate:.4f})"]
        if voice.pitch > 0:
            std = 0.14 * voice.pitch
            lines.append(
                f"(set! int_lr_params '((target_f0_mean {voice.pitch:.2f}) (target_f0_std {std:.2f}) "
                "(model_f0_mean 170) (model_f0_std 34)))"
            )
        lines.append(f"(utt.save.wave (utt.synth (Utterance Text {_festival_string(text)})) "
                     f"{_festival_string(str(wav))} 'riff)")
        script = workdir / "festival.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return ["festival", "--batch", str(script)], None
    raise ValueError(f"unknown TTS engine {voice.engine!r}; expected one of {list(ENGINES)}")


def synthesize(voice: Voice, text: str, workdir: str | Path) -> np.ndarray:
    """Speak ``text`` with ``voice``; returns (T,) float32 samples in [-1, 1] at 16 kHz.

    ``workdir`` is a private scratch directory (one per worker). Raises ``TTSError`` when the
    engine fails, times out or produces no audio.
    """
    workdir = Path(workdir)
    wav = workdir / "tts.wav"
    if wav.exists():
        wav.unlink()
    cmd, stdin = _command(voice, text, wav, workdir)
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise TTSError(f"{voice.describe()} timed out after {_TIMEOUT_S:.0f} s on {text[:60]!r}") from e
    except OSError as e:
        raise TTSError(f"{voice.describe()} could not run {cmd[0]!r}: {e}") from e
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-300:]
        raise TTSError(f"{voice.describe()} exited with {proc.returncode} on {text[:60]!r}: {err}")
    if not wav.is_file() or wav.stat().st_size <= 44:
        raise TTSError(f"{voice.describe()} wrote no audio for {text[:60]!r}")
    try:
        data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise TTSError(f"{voice.describe()} wrote an unreadable WAV for {text[:60]!r}: {e}") from e
    finally:
        try:
            os.unlink(wav)
        except OSError:
            pass
    x = data.mean(axis=1)
    if x.size < sr // 10 or not np.isfinite(x).all() or float(np.abs(x).max()) < 1e-4:
        raise TTSError(f"{voice.describe()} produced silent or invalid audio for {text[:60]!r}")
    return resample(x, int(sr)).astype(np.float32)


def _run_text(cmd: list[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FileNotFoundError(f"could not run {' '.join(cmd)}: {e}") from e
    return proc.stdout


def espeak_accents() -> set[str]:
    """English espeak-ng voices (``en-us``, ``en-gb-scotland`` ...), mbrola ones excluded."""
    names = set()
    for line in _run_text(["espeak-ng", "--voices=en"]).splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and not cols[4].startswith(("mb/", "!v/")):
            names.add(cols[1])
    return names


def espeak_variants() -> set[str]:
    """espeak-ng voice variants (the ``+name`` part: ``m3``, ``f2``, ``klatt``, ``croak`` ...)."""
    names = set()
    for line in _run_text(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        for col in line.split():
            if col.startswith("!v/"):
                names.add(col[3:])
    return names


def festival_voices() -> set[str]:
    """Installed festival voices (``kal_diphone`` ...)."""
    with tempfile.TemporaryDirectory(prefix="festival-") as d:
        script = Path(d) / "list.scm"
        script.write_text("(print (voice.list))\n", encoding="utf-8")
        out = _run_text(["festival", "--batch", str(script)])
    return set(re.findall(r"[A-Za-z0-9_]+", out)) - {"nil"}  # nil: the empty list
