"""Fixtures for the live-serving tests (WebSocket server, browser page, microphone, load tool).

``live_model``: a *real* small model, the session's LSTM CTC model overfit on six utterances of
the tiny TTS corpus (``tests/conftest.py: trained_ctc``), exported to ONNX, with those six
utterances as 16 kHz WAV files and their reference texts. Its transcripts are real speech
recognition, so a test can tell a correct live transcript from an empty, garbled or mixed-up
one (:func:`cer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import soundfile as sf

__all__ = ["LiveModel", "cer", "read_wav"]


class LiveModel(NamedTuple):
    """``onnx_dir``: an ``asr export`` directory (CTC, fp32 and int8 files); ``utterances``:
    ``[(wav_path, reference_text), ...]``, 16 kHz mono PCM-16 WAV files of the training cuts,
    longest first."""

    onnx_dir: Path
    utterances: list[tuple[Path, str]]


def cer(ref: str, hyp: str) -> float:
    """Character error rate of ``hyp`` against ``ref`` (edit distance / len(ref); 1.0 for an
    empty ``ref`` unless ``hyp`` is empty too)."""
    from asr.decoding.wer import word_errors

    if not ref:
        return 0.0 if not hyp else 1.0
    return sum(word_errors(list(ref), list(hyp))) / len(ref)


def read_wav(path: Path) -> np.ndarray:
    """A WAV file of ``live_model`` as float32 samples in [-1, 1] (16 kHz)."""
    x, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000, (path, sr)
    return x


@pytest.fixture(scope="session")
def live_model(trained_ctc, tmp_path_factory) -> LiveModel:
    """The session's trained LSTM CTC model, exported (``exporters.export``, int8 copies too,
    no sherpa-onnx files), and its six training utterances as 16 kHz WAV files."""
    import torch
    from lhotse import CutSet

    import asr.models
    from exporters import export

    out = tmp_path_factory.mktemp("live_model")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export(asr.models.load(trained_ctc / "model.pt"), out / "onnx", int8=True, sherpa=False)
    finally:
        torch.set_num_threads(n)
    utts = []
    for cut in CutSet.from_file(trained_ctc / "cuts_few.jsonl.gz"):
        audio = cut.resample(16000).load_audio()[0]
        path = out / f"{cut.id}.wav"
        sf.write(str(path), audio, 16000, subtype="PCM_16")  # what Chromium's fake microphone reads
        utts.append((path, cut.supervisions[0].text, len(audio)))
    utts.sort(key=lambda u: -u[2])
    return LiveModel(out / "onnx", [(p, t) for p, t, _ in utts])


class ServerThread:
    """A :class:`serve.server.LiveServer` on its own event loop in a background thread, on a
    free port of 127.0.0.1 unless ``config`` says otherwise: ``with ServerThread(rec, cfg) as
    srv: ... srv.ws_url ...``; ``srv.server`` is the LiveServer (``stats()``)."""

    def __init__(self, recognizer, config=None):
        from serve.server import LiveServer, ServerConfig

        self.server = LiveServer(recognizer, config if config is not None else ServerConfig(port=0))
        self.loop = None
        self.thread = None

    def __enter__(self) -> "ServerThread":
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        started, failure = threading.Event(), []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.server.start())
            except BaseException as e:  # reported to the caller below
                failure.append(e)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="live-server", daemon=True)
        self.thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    @property
    def http_url(self) -> str:
        """The page's address: https when the server has a certificate."""
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "ws"
