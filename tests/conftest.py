"""Shared fixtures: audio made here (espeak-ng speech, synthetic signals), never downloaded."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Without a GPU the Triton kernels run in triton's interpreter. It must be chosen before triton
# is first imported (torch may import it): re-importing triton's native library aborts.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import soundfile as sf
import torch

torch.set_num_threads(2)


def speak(text: str, path: Path, voice: str = "en-us", rate: int = 170) -> Path:
    """espeak-ng speech to a WAV file (22050 Hz mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `bash tests/run.sh`, which installs it")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
    return path


def run_with_terminal_stderr(cmd: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``cmd`` with its stderr on a pseudo-terminal (24 x 100: a 0-column pty shows no
    progress bar) and its stdout on a pipe -> (return code, stdout, what the terminal got)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    err = b""
    try:
        while chunk := os.read(master, 4096):
            err += chunk
    except OSError:  # EIO: the child has closed the terminal
        pass
    finally:
        os.close(master)
    stdout, _ = proc.communicate(timeout=timeout)
    return proc.returncode, stdout.decode(), err.decode(errors="replace")


def write_audio(path: Path, samples: np.ndarray, sr: int, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sr, format=fmt)
    return path


def tone(seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.shape)
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """A short real utterance at 22050 Hz."""
    return speak("the quick brown fox jumps over the lazy dog", tmp_path_factory.mktemp("speech") / "fox.wav")


TINY_CORPUS = dict(
    train_hours=0.03, dev_minutes=0.3, test_minutes=0.3,
    num_train_speakers=4, num_eval_speakers=2, num_unseen_speakers=3,
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny mini-LibriSpeech (TTS) with manifests and a tokenizer, built once per session:
    DIR/corpus/LibriSpeech, DIR/manifests/cuts_<split>.jsonl.gz, DIR/lang_bpe48/."""
    from asr.cli import main
    from asr.data.corpus import MiniCorpusConfig, build_mini_librispeech

    out = tmp_path_factory.mktemp("tiny_data")
    build_mini_librispeech(out / "corpus", MiniCorpusConfig(**TINY_CORPUS), num_jobs=2, progress=False)
    main(["prepare", "--corpus", str(out / "corpus" / "LibriSpeech"), "--out", str(out), "--train-parts", "train", "--vocab-size", "48"])
    return out


TINY_TRAIN = [
    "model.encoder=lstm",
    "model.encoder_config={preset: small, num_layers: 2, hidden_size: 256, proj_size: 128, input_size: 128}",
    "data.sampler.max_duration=60", "data.sampler.num_workers=0", "data.augment.spec_augment=false",
    "optim.lr=0.003", "optim.warmup_steps=10", "optim.schedule=constant",
    "max_epochs=200", "max_steps=200", "log_every=5", "save_every_steps=50", "average_last=1",
    "valid_every_epochs=50", "save_every_epochs=50", "data.sortagrad_epochs=1",
]


@pytest.fixture(scope="session")
def trained_ctc(tiny_data, tmp_path_factory) -> Path:
    """A small LSTM CTC model overfit on the first 6 training cuts of ``tiny_data`` (200 steps,
    constant lr 0.003), trained once per session: DIR/model.pt, DIR/cuts_few.jsonl.gz (the 6
    cuts), DIR/metrics.jsonl. Its transcripts of those cuts are real (character error rate well
    below chance), which the end-to-end and live-serving tests rely on."""
    from lhotse import CutSet

    from asr.cli import main

    exp = tmp_path_factory.mktemp("exp")
    # Overfit a few cuts: enough steps on little data to get past CTC's all-blank plateau.
    few = CutSet.from_file(tiny_data / "manifests/cuts_train.jsonl.gz").subset(first=6)
    few.to_file(exp / "cuts_few.jsonl.gz")
    cfg = exp / "conf.yaml"
    cfg.write_text(
        f"data:\n  train: [{exp}/cuts_few.jsonl.gz]\n"
        f"  dev: [{tiny_data}/manifests/cuts_dev.jsonl.gz]\n  tokenizer: {tiny_data}/lang_bpe48\n"
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny LSTM trains as fast on one thread; the machine is shared
    try:
        main(["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", *TINY_TRAIN])
    finally:
        torch.set_num_threads(n)
    return exp


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (OpenMP barriers dominate their ops), especially
    on a shared 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
