"""sherpa-onnx (PyPI) running the ``sherpa-onnx/`` files of an ``asr export`` directory.

sherpa-onnx is a runtime none of us wrote; running an exported model through it, unmodified,
on real test sets checks the export contract where it matters::

    asr decode --onnx DIR --runtime sherpa --cuts cuts_test.jsonl.gz [--int8]
               [--compare-to DIR/decode]      # identical transcripts vs our runtime

>>> rec = SherpaRecognizer("exp/model/onnx")              # transducer files, else the CTC file
>>> rec.transcribe_many([samples_a, samples_b])            # float32 at rec.sample_rate
['HELLO WORLD', 'GOOD MORNING']

Two properties of sherpa-onnx's online recognizers shape any comparison with our runtime:

- it runs only full windows (``processed + T < ready``), so each utterance gets silence
  appended: by default :attr:`SherpaRecognizer.tail_seconds`, one window plus one shift of
  feature frames, enough for every window that holds speech to run. Our runtime needs none (it
  decodes its last, partial window in ``input_finished``), but a causal model may emit its
  last tokens only during the silence that follows them, so a comparison feeds both runtimes
  the same audio: ``asr decode --tail-padding SECONDS`` appends the same silence on both sides;
- its transducer greedy search emits at most one symbol per encoder frame; our runtime's
  default is up to 10, so compare transducers with ``--max-symbols 1`` on our side.

Imports no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["SherpaRecognizer", "sherpa_kind"]


def sherpa_kind(card: dict, use_ctc: bool = False) -> str:
    """"transducer" or "ctc": which of the export's sherpa-onnx contracts to run (the
    transducer when there is one, unless ``use_ctc``); ValueError saying why when neither."""
    info = card.get("sherpa_onnx") or {}
    order = ["ctc"] if use_ctc else ["transducer", "ctc"]
    reasons = []
    for kind in order:
        entry = info.get(kind) or {"unsupported": "not in model.json"}
        if "unsupported" not in entry:
            return kind
        reasons.append(f"{kind}: {entry['unsupported']}")
    raise ValueError("this export has no sherpa-onnx files to run (" + "; ".join(reasons) + ")")


class SherpaRecognizer:
    """A ``sherpa_onnx.OnlineRecognizer`` built from an export directory's ``model.json``.

    Args:
        model_dir: an ``asr export`` directory (with ``model.json`` and ``sherpa-onnx/``).
        int8: run the int8 copies (``asr export --int8``).
        use_ctc: the CTC file even when there is a transducer (a hybrid's CTC head).
        num_threads: onnxruntime threads.
    """

    def __init__(self, model_dir: str | os.PathLike, int8: bool = False, use_ctc: bool = False, num_threads: int = 1):
        try:
            import sherpa_onnx
        except ImportError:
            raise ImportError("sherpa-onnx is not installed: pip install sherpa-onnx (the dev extra installs it)") from None
        self.dir = Path(model_dir)
        card_path = self.dir / "model.json"
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path} not found: give an `asr export` directory")
        self.card = json.loads(card_path.read_text())
        self.kind = sherpa_kind(self.card, use_ctc)
        info = self.card["sherpa_onnx"][self.kind]
        names = ("encoder", "decoder", "joiner") if self.kind == "transducer" else ("ctc",)
        files = {}
        for name in names:
            entry = self.card["files"].get(f"sherpa_{name}")
            if entry is None or (int8 and "int8" not in entry):
                raise ValueError(f"model.json lists no {'int8 ' if int8 else ''}sherpa-onnx {name} file (export with --int8?)")
            path = self.dir / entry["int8" if int8 else "path"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (model.json lists it)")
            files[name] = str(path)
        self.files = files
        tokens = str(self.dir / info["files"]["tokens"])
        if self.kind == "transducer":
            self.rec = sherpa_onnx.OnlineRecognizer.from_transducer(
                tokens=tokens, encoder=files["encoder"], decoder=files["decoder"], joiner=files["joiner"],
                num_threads=num_threads, decoding_method="greedy_search", **info["kwargs"])
        else:
            self.rec = sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(tokens=tokens, model=files["ctc"], num_threads=num_threads,
                                                                      **info["kwargs"])
        self.int8 = int8
        self.sample_rate = int(info["kwargs"]["sample_rate"])
        feats = self.card["features"]
        frames = int(self.card["window"]) + int(self.card["shift"])
        self.tail_seconds = frames * float(feats["frame_shift"]) + float(feats["frame_length"])

    def __repr__(self) -> str:
        return f"SherpaRecognizer({self.dir}, {self.kind}, {'int8' if self.int8 else 'fp32'})"

    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files.values())

    def transcribe_many(self, audios: list[np.ndarray], tail_seconds: float | None = None) -> list[str]:
        """Texts of whole recordings (float32 mono at :attr:`sample_rate`), decoded together as
        one batch of streams (``decode_streams`` on the ready ones until none is), with
        ``tail_seconds`` (default :attr:`tail_seconds`) of silence after each. Whitespace is
        normalized (single spaces)."""
        tail = np.zeros(round((self.tail_seconds if tail_seconds is None else tail_seconds) * self.sample_rate), np.float32)
        streams = []
        for a in audios:
            s = self.rec.create_stream()
            s.accept_waveform(self.sample_rate, np.concatenate([np.asarray(a, np.float32), tail]))
            s.input_finished()
            streams.append(s)
        while True:
            ready = [s for s in streams if self.rec.is_ready(s)]
            if not ready:
                break
            self.rec.decode_streams(ready)
        return [" ".join(self.rec.get_result(s).split()) for s in streams]
