"""The exported sherpa-onnx files load unmodified in sherpa-onnx (PyPI) through its public
Python API and give the same tokens as our torch streaming decoding.

Both sides decode the same audio (synthetic, with 0.5 s of silence appended, as sherpa-onnx's
examples do to flush the last window). sherpa-onnx computes kaldi fbank itself; the torch side
uses kaldi-native-fbank with ``FeatureConfig.kaldi_native_options()`` and feeds
``StreamingRecognizer`` exactly the windows sherpa-onnx ran (it only runs full windows). The
models are tiny, with a prediction network, joint and CTC head set so that they emit tokens
with clear margins like trained models (see ``helpers.make_emitting_*``); the test checks that
they do emit several different tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sherpa_onnx  # the dev extra installs it (with kaldi-native-fbank): never skipped
import torch

from asr.decoding.ctc import ctc_greedy
from asr.decoding.streaming import StreamingRecognizer
from asr.decoding.transducer import greedy_search
from exporters import export

from .helpers import (
    knf_features,
    make_emitting_ctc,
    make_emitting_transducer,
    synthetic_audio,
    tiny_model,
    tokenizer,
)

TAIL = 8000  # 0.5 s of silence


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest single-threaded


def _audio(seed: int) -> np.ndarray:
    return np.concatenate([synthetic_audio(2.5, seed), np.zeros(TAIL, np.float32)])


def _hybrid(family: str, **encoder):
    """Stateless-predictor transducer + CTC head, set to emit on the audio of seed 0."""
    V = len(tokenizer())
    model = tiny_model(family, ctc_weight=0.3, context_size=1, pred_dim=V, joint_dim=2 * V,
                       activation="relu", **encoder)
    feats = torch.from_numpy(knf_features(_audio(0), model.features))
    make_emitting_transducer(model, feats)
    make_emitting_ctc(model, feats)
    return model


def _recognizer(out, kind: str):
    card = json.loads((out / "model.json").read_text())
    info = card["sherpa_onnx"][kind]
    files = {k: str(out / v) for k, v in info["files"].items()}
    if kind == "transducer":
        return sherpa_onnx.OnlineRecognizer.from_transducer(
            tokens=files["tokens"], encoder=files["encoder"], decoder=files["decoder"], joiner=files["joiner"],
            num_threads=1, decoding_method="greedy_search", **info["kwargs"])
    return sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
        tokens=files["tokens"], model=files["model"], num_threads=1, **info["kwargs"])


def _ids(tokens: list[str]) -> list[int]:
    # sherpa-onnx prints the sentencepiece word boundary as a space
    sp = tokenizer().sp
    return [sp.piece_to_id(t.replace(" ", "\u2581")) for t in tokens]


def _sherpa_decode(rec, audios: list[np.ndarray]) -> tuple[list[list[int]], list[int]]:
    """Decode the streams together (batched); -> token ids and windows run, per stream."""
    streams = []
    for a in audios:
        s = rec.create_stream()
        s.accept_waveform(16000, a)
        s.input_finished()
        streams.append(s)
    windows = [0] * len(streams)
    while True:
        ready = [i for i, s in enumerate(streams) if rec.is_ready(s)]
        if not ready:
            break
        rec.decode_streams([streams[i] for i in ready])
        for i in ready:
            windows[i] += 1
    return [_ids(rec.tokens(s)) for s in streams], windows


def _torch_decode(model, audio: np.ndarray, windows: int, use_ctc: bool) -> list[int]:
    feats = torch.from_numpy(knf_features(audio, model.features))
    p = model.encoder.streaming_params()
    used = feats[: (windows - 1) * p["shift"] + p["window"]]
    assert used.shape[0] == (windows - 1) * p["shift"] + p["window"], "sherpa-onnx ran more windows than there are"
    hyp = StreamingRecognizer(model, use_ctc=use_ctc).accept_features(used)
    if not use_ctc:  # the model's construction promises at most one symbol per frame: check it
        assert len(set(hyp.frames)) == len(hyp.frames)
        enc = model.encoder
        x = model.normalize(used)[None]
        state, dec = enc.init_state(1), None
        with torch.no_grad():
            for i in range(windows):
                y, yl, state = enc.forward_chunk(x[:, i * p["shift"] : i * p["shift"] + p["window"]],
                                                 torch.tensor([p["window"]]), state)
                one, dec = greedy_search(model.transducer, y, yl, max_symbols=1, state=dec)
        assert one[0].tokens == hyp.tokens
    return hyp.tokens


def _check(model, out, kind: str) -> None:
    rec = _recognizer(out, kind)
    audios = [_audio(0), _audio(1)]
    got, windows = _sherpa_decode(rec, audios)
    p = model.encoder.streaming_params()
    n = knf_features(audios[0], model.features).shape[0]
    # sherpa-onnx runs window k when k * shift + window < frames ready
    assert windows[0] == sum(1 for k in range(n) if k * p["shift"] + p["window"] < n)
    for audio, toks, w in zip(audios, got, windows):
        want = _torch_decode(model, audio, w, use_ctc=kind == "ctc")
        assert len(set(want)) >= 3, f"the test model should emit several tokens, got {want}"
        assert toks == want, f"sherpa-onnx {kind}: {toks}\ntorch streaming: {want}"
    # one stream alone gives what it gave in the batch
    alone, _ = _sherpa_decode(rec, audios[1:])
    assert alone[0] == got[1]


@pytest.mark.parametrize(
    "family, encoder, model_type",
    [
        ("conformer", {}, "conformer"),  # causal subsampling: feature cache packed into cached_conv
        ("conformer", {"causal_subsampling": False}, "conformer"),  # icefall's 3-tensor layout
        ("lstm", {}, "lstm"),
        ("ssm", {}, "lstm"),  # state packed into h
    ],
    ids=["conformer", "conformer-noncausal-sub", "lstm", "ssm"],
)
def test_sherpa_transducer_and_ctc_match_torch_streaming(family, encoder, model_type, tmp_path):
    model = _hybrid(family, **encoder)
    card = export(model, tmp_path)
    assert card["sherpa_onnx"]["transducer"]["model_type"] == model_type
    _check(model, tmp_path, "transducer")
    _check(model, tmp_path, "ctc")


def test_sherpa_ctc_model_and_lookahead(tmp_path):
    """A CTC-only Citrinet (packed state), and a Conformer exported at another look-ahead."""
    model = tiny_model("citrinet", head="ctc")
    make_emitting_ctc(model, torch.from_numpy(knf_features(_audio(0), model.features)))
    card = export(model, tmp_path / "citrinet")
    assert "unsupported" in card["sherpa_onnx"]["transducer"]
    _check(model, tmp_path / "citrinet", "ctc")

    model = _hybrid("conformer")
    export(model, tmp_path / "conformer", lookahead_ms=160)  # context [0, 2]: no attention cache
    model.encoder.set_context(0, 2)
    _check(model, tmp_path / "conformer", "transducer")
    _check(model, tmp_path / "conformer", "ctc")  # its packed state holds an empty attention cache
    # no reshape of an empty tensor in the packed graph (torch's ONNX shape inference crashed on one)
    import onnx

    for path in (tmp_path / "conformer" / "sherpa-onnx").rglob("*ctc*.onnx"):
        m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        dims = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                for v in [*m.graph.value_info, *m.graph.input]}
        empty = [n.name for n in m.graph.node if n.op_type == "Reshape" and 0 in dims.get(n.input[0], [])]
        assert not empty, (path.name, empty)


def test_sherpa_int8_files_load(tmp_path):
    model = _hybrid("lstm")
    card = export(model, tmp_path, int8=True)
    files = {k: str(tmp_path / v["int8"]) for k, v in card["files"].items() if k.startswith("sherpa_")}
    rec = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(tmp_path / "sherpa-onnx/tokens.txt"), encoder=files["sherpa_encoder"],
        decoder=files["sherpa_decoder"], joiner=files["sherpa_joiner"], num_threads=1,
        **card["sherpa_onnx"]["transducer"]["kwargs"])
    got, _ = _sherpa_decode(rec, [_audio(0)])
    assert got[0], "the int8 transducer should still emit tokens"
    rec = sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
        tokens=str(tmp_path / "sherpa-onnx/tokens.txt"), model=files["sherpa_ctc"], num_threads=1,
        **card["sherpa_onnx"]["ctc"]["kwargs"])
    got, _ = _sherpa_decode(rec, [_audio(0)])
    assert got[0]


@pytest.mark.parametrize("head, predictor", [("rnnt", "lstm"), ("tdt", "stateless")])
def test_models_sherpa_cannot_run_get_no_transducer_files(head, predictor, tmp_path):
    model = tiny_model("lstm", head=head, predictor=predictor)
    card = export(model, tmp_path)
    reason = card["sherpa_onnx"]["transducer"]["unsupported"]
    assert ("LSTM prediction network" if predictor == "lstm" else "TDT") in reason
    assert not (tmp_path / "sherpa-onnx" / "encoder.onnx").exists()
    assert (tmp_path / "encoder.onnx").exists() and (tmp_path / "decoder.onnx").exists()


def test_sherpa_offline_recognizers_take_the_offline_files(tmp_path):
    """Bonus contract: the whole-utterance files load in sherpa-onnx's OfflineRecognizer
    (icefall's offline transducer and zipformer CTC contracts) and match torch decoding."""
    model = _hybrid("conformer")
    card = export(model, tmp_path)
    audio = _audio(0)
    feats = torch.from_numpy(knf_features(audio, model.features))
    with torch.no_grad():
        enc, enc_lens = model.encode(feats[None], torch.tensor([feats.shape[0]]))
        want_t = greedy_search(model.transducer, enc, enc_lens)[0][0].tokens
        want_c = ctc_greedy(model.ctc(enc), enc_lens)[0].tokens
    info = card["sherpa_onnx"]["offline_transducer"]
    f = {k: str(tmp_path / v) for k, v in info["files"].items()}
    rec = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=f["encoder"], decoder=f["decoder"], joiner=f["joiner"], tokens=f["tokens"], num_threads=1, **info["kwargs"])
    s = rec.create_stream()
    s.accept_waveform(16000, audio)
    rec.decode_stream(s)
    assert len(set(want_t)) >= 3 and _ids(s.result.tokens) == want_t
    info = card["sherpa_onnx"]["offline_ctc"]
    f = {k: str(tmp_path / v) for k, v in info["files"].items()}
    rec = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model=f["model"], tokens=f["tokens"], num_threads=1, **info["kwargs"])
    s = rec.create_stream()
    s.accept_waveform(16000, audio)
    rec.decode_stream(s)
    assert len(set(want_c)) >= 3 and _ids(s.result.tokens) == want_c
