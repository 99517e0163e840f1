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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (OpenMP barriers dominate their ops), especially
    on a shared 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
