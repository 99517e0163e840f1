"""Bad models and bad audio: clear errors naming the problem, and defined results at the edges."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from serve import EndpointConfig, Recognizer

from .helpers import build, synthetic_audio


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A TDT + CTC hybrid (every file kind) with int8 copies, and a CTC-only model."""
    root = tmp_path_factory.mktemp("errors")
    _, tdt = build(root, "lstm", "tdt", ctc_weight=0.3, int8=True)
    _, ctc = build(root, "lstm", "ctc")
    return tdt, ctc


@pytest.fixture
def copy(exported, tmp_path):
    count = iter(range(100))

    def make(which: int = 0):
        dst = tmp_path / f"model{next(count)}"
        shutil.copytree(exported[which], dst)
        return dst

    return make


def _edit_card(path, **changes):
    card = json.loads((path / "model.json").read_text())
    card.update(changes)
    (path / "model.json").write_text(json.dumps(card))


def test_missing_files(copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        Recognizer(tmp_path / "nowhere")
    d = copy()
    (d / "joiner.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="joiner.onnx"):
        Recognizer(d)
    Recognizer(d, use_ctc=True)  # the CTC head needs no joiner
    (d / "tokens.txt").unlink()
    with pytest.raises(FileNotFoundError, match="tokens"):
        Recognizer(d, use_ctc=True)
    d = copy()
    (d / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json"):
        Recognizer(d)


def test_truncated_or_corrupt_onnx(copy):
    d = copy()
    data = (d / "encoder.onnx").read_bytes()
    (d / "encoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"encoder\.onnx.*truncated or corrupt"):
        Recognizer(d)
    d = copy()
    (d / "ctc.int8.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match=r"ctc\.int8\.onnx"):
        Recognizer(d, use_ctc=True, int8=True)
    d = copy()
    (d / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Recognizer(d)


def test_metadata_that_contradicts_the_files(copy):
    # model.json against the files' own metadata
    d = copy()
    card = json.loads((d / "model.json").read_text())
    _edit_card(d, window=card["window"] + 4)
    with pytest.raises(ValueError, match=r"window=.*model\.json says window="):
        Recognizer(d)
    for edit in ({"blank_id": 3}, {"features": {**card["features"], "sample_rate": 8000}}, {"encoder": "ssm"}):
        d = copy()  # any setting the files state too (they decoded to garbage before)
        _edit_card(d, **edit)
        with pytest.raises(ValueError, match=rf"metadata says {next(iter(edit))}=.*model\.json says {next(iter(edit))}="):
            Recognizer(d)
    # model.json against the graphs' shapes (the files' metadata removed)
    d = copy()
    for name in ("encoder.onnx", "joiner.onnx", "decoder.onnx"):
        m = onnx.load(str(d / name))
        del m.metadata_props[:]
        onnx.save(m, str(d / name))
    _edit_card(d, window=card["window"] + 4)
    with pytest.raises(ValueError, match=rf"window={card['window'] + 4} but encoder\.onnx takes x of shape"):
        Recognizer(d)
    _edit_card(d, window=card["window"], durations=[0, 1])
    with pytest.raises(ValueError, match=r"joiner\.onnx outputs \d+ logits but model\.json says vocab_size=\d+ \+ 2 durations"):
        Recognizer(d)
    # the vocabulary size against tokens.txt
    d = copy()
    _edit_card(d, vocab_size=card["vocab_size"] + 1)
    with pytest.raises(ValueError, match=r"tokens\.txt has \d+ symbols but .* says vocab_size="):
        Recognizer(d)
    with (d / "tokens.txt").open("a") as f:
        f.write(f"extra {card['vocab_size']}\n")
    with pytest.raises(ValueError, match="vocab_size"):
        Recognizer(d)
    # states
    d = copy()
    states = card["encoder_states"]
    states[0]["shape"][-1] += 1
    _edit_card(d, encoder_states=states)
    with pytest.raises(ValueError, match="encoder_states|state"):
        Recognizer(d)


def test_requests_the_model_cannot_serve(copy, exported):
    tdt, ctc = exported
    with pytest.raises(ValueError, match="greedy"):
        Recognizer(ctc, decoding="beam")
    with pytest.raises(ValueError, match="decoding"):
        Recognizer(tdt, decoding="exhaustive")
    with pytest.raises(ValueError, match="int8"):
        Recognizer(ctc, int8=True)
    with pytest.raises(ValueError, match="beam"):
        Recognizer(tdt, decoding="beam", beam=0)
    with pytest.raises(ValueError, match="num_threads"):
        Recognizer(tdt, num_threads=0)
    d = copy()
    _edit_card(d, hybrid_ctc=False)
    with pytest.raises(ValueError, match="no CTC head"):
        Recognizer(d, use_ctc=True)


def test_bad_audio(exported):
    rec = Recognizer(exported[0])
    s = rec.create_stream()
    x = synthetic_audio(0.5)
    for rate in (0, -16000, 0.0, 16000.5, float("nan"), "16000"):
        with pytest.raises(ValueError, match="sample_rate"):
            s.accept_waveform(rate, x)
    bad = x.copy()
    bad[100] = np.nan
    with pytest.raises(ValueError, match="NaN or inf.*index 100"):
        s.accept_waveform(16000, bad)
    bad[100] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        s.accept_waveform(16000, bad)
    with pytest.raises(ValueError, match="int16"):
        s.accept_waveform(16000, (x * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="mono"):
        s.accept_waveform(16000, np.stack([x, x], axis=1))
    assert s.samples_received == 0, "rejected audio must not be consumed"
    s.accept_waveform(16000, x)
    with pytest.raises(ValueError, match="sample rate changed"):
        s.accept_waveform(8000, x)
    s.input_finished()
    with pytest.raises(ValueError, match="input_finished"):
        s.accept_waveform(16000, x)
    rec.decode(s)
    assert s.result().is_final
    other = Recognizer(exported[1])
    with pytest.raises(ValueError, match="this recognizer"):
        other.decode([s])
    # a whole recording under 50 ms is refused, as ASRModel.transcribe refuses it (it was '')
    with pytest.raises(ValueError, match=r"recording 1: audio is too short: 25.0 ms \(400 samples"):
        rec.transcribe_many([x, x[:400]])
    with pytest.raises(ValueError, match=r"recording 0: .*NaN"):
        rec.transcribe(np.full(1600, np.nan, np.float32))
    assert rec.transcribe(x[:800], sample_rate=16000).is_final  # exactly 50 ms


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_empty_and_tiny_streams_give_empty_final_results(exported, decoding):
    rec = Recognizer(exported[0], decoding=decoding)
    empty = rec.create_stream()
    empty.input_finished()
    assert not rec.is_ready(empty) and empty.is_final
    tiny = rec.create_stream()
    tiny.accept_waveform(16000, np.zeros(40, np.float32))  # less than one feature frame
    tiny.input_finished()
    assert rec.decode([empty, tiny]) == 0
    for s in (empty, tiny):
        r = s.result()
        assert r.is_final and r.text == "" and r.tokens == [] and r.timestamps == [] and r.endpoint is None
        assert s.segments == [] and s.transcript().text == ""
    # a stream with a few ms of audio runs one zero-padded window and ends
    short = rec.create_stream()
    short.accept_waveform(16000, synthetic_audio(0.12))
    assert not rec.is_ready(short)
    short.input_finished()
    assert rec.decode(short) >= 1 and short.result().is_final
    # finishing twice is harmless
    short.input_finished()
    assert rec.decode(short) == 0


def test_endpoint_none_means_one_segment(exported):
    rec = Recognizer(exported[0], endpoint=None)
    assert rec.endpoint == EndpointConfig(enabled=False)
