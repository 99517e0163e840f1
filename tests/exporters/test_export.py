"""ONNX export: every file reproduces the torch model, metadata is complete and consistent,
int8 files run, and bad requests fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asr.decoding.transducer import initial_pred
from asr.encoders.base import make_pad_mask
from exporters import export, export_file

from .helpers import ATOL, FAMILIES, tiny_model, tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest single-threaded


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (model, export dir, card): a stateless-transducer + CTC hybrid per family."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            model = tiny_model(family, ctc_weight=0.3)
            out = tmp_path_factory.mktemp(f"export_{family}")
            cache[family] = (model, out, export(model, out))
        return cache[family]

    return get


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts)


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _raw_batch(lens: list[int], frames: int, seed: int = 0) -> torch.Tensor:
    """Raw fbank-like features; frames past each length are garbage (must never matter)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), frames, 80, generator=g) * 3 - 8
    for b, n in enumerate(lens):
        x[b, n:] = 1e3 * torch.randn(frames - n, 80, generator=g)
    return x


def _assert_close_valid(a: np.ndarray, b: torch.Tensor, lens: torch.Tensor) -> None:
    n = a.shape[1]
    m = make_pad_mask(lens, n).unsqueeze(-1).numpy()
    diff = float((np.abs(a - b.numpy()) * m).max()) if a.size else 0.0
    assert diff <= ATOL, f"max abs diff on valid frames {diff:.2e} > {ATOL}"


# ---------------------------------------------------------------------- numerics
@pytest.mark.parametrize("kind", ["encoder", "ctc"])
@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_onnx_equals_torch_streaming(family, kind, exported):
    """Raw features window by window (a stream that ends inside a window, one that ends
    early), states carried by the caller: outputs, lengths and states equal torch's."""
    model, out, _ = exported(family)
    sess = _session(out / f"{kind}.onnx")
    enc = model.encoder
    p = enc.streaming_params()
    window, shift = p["window"], p["shift"]
    windows = 4
    total = (windows - 1) * shift + window
    lens = torch.tensor([total, 2 * shift + 3, shift - 1])
    x = _raw_batch(lens.tolist(), total)
    xn = model.normalize(x)
    names = [i.name for i in sess.get_inputs()]
    state = enc.init_state(3)
    onnx_state = [s.numpy() for s in state]
    for i in range(windows):
        w_lens = (lens - i * shift).clamp(0, window)
        with torch.no_grad():
            y, y_lens, state = enc.forward_chunk(xn[:, i * shift : i * shift + window], w_lens, state)
            if kind == "ctc":
                y = model.ctc(y)
        res = sess.run(None, dict(zip(names, [x[:, i * shift : i * shift + window].numpy(), w_lens.numpy(), *onnx_state])))
        assert res[1].tolist() == y_lens.tolist()
        _assert_close_valid(res[0], y, y_lens)
        onnx_state = res[2:]
        for a, b in zip(onnx_state, state):
            assert a.shape == tuple(b.shape) and a.dtype == b.numpy().dtype
            assert np.abs(a - b.numpy()).max() <= ATOL
    # a batch of one stream runs too (dynamic batch axis)
    one = [s.numpy() for s in enc.init_state(1)]
    res = sess.run(None, dict(zip(names, [x[:1, :window].numpy(), lens[:1].clamp(max=window).numpy(), *one])))
    assert res[0].shape[0] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_offline_onnx_equals_torch_forward(family, exported):
    model, out, _ = exported(family)
    for kind in ("encoder", "ctc"):
        sess = _session(out / f"{kind}.offline.onnx")
        for lens in ([301, 123], [57], [640, 5, 330]):  # dynamic batch and time axes
            x = _raw_batch(lens, max(lens), seed=len(lens))
            xl = torch.tensor(lens)
            with torch.no_grad():
                y, y_lens = model.encode(x, xl)
                if kind == "ctc":
                    y = model.ctc(y)
            res = sess.run(None, {"x": x.numpy(), "x_lens": xl.numpy()})
            assert res[0].shape == tuple(y.shape)
            assert res[1].tolist() == y_lens.tolist()
            _assert_close_valid(res[0], y, y_lens)


@pytest.mark.parametrize("family, head, predictor", [("lstm", "rnnt", "stateless"), ("lstm", "tdt", "lstm"),
                                                      ("conformer", "pruned_rnnt", "lstm")])
def test_decoder_and_joiner_equal_torch(family, head, predictor, tmp_path):
    model = tiny_model(family, head=head, predictor=predictor)
    export(model, tmp_path, sherpa=False)
    th = model.transducer
    dec, join = _session(tmp_path / "decoder.onnx"), _session(tmp_path / "joiner.onnx")
    tokens = [[5, 7, 7, 3], [9, 2, 4, 11]]  # two streams, four steps
    with torch.no_grad():
        state, pred_p = initial_pred(th, 2, "cpu")
        if predictor == "lstm":
            h, c = [s.numpy() for s in th.predictor.init_state(2)]
            res = dec.run(None, {"y": np.zeros(2, np.int64), "h": h, "c": c})
        else:  # sherpa-onnx starts a stream with -1 ... -1, blank
            ctx = np.full((2, th.predictor.context_size), -1, np.int64)
            ctx[:, -1] = 0
            res = dec.run(None, {"y": ctx})
        assert np.abs(res[0] - pred_p.numpy()).max() <= ATOL
        cs = getattr(th.predictor, "context_size", 1)
        history = [[0] * cs for _ in range(2)]
        for step in range(4):
            y = torch.tensor([t[step] for t in tokens])
            out, state = th.predictor.step(y, state)
            pred_p = th.joint.project_pred(out)
            if predictor == "lstm":
                res = dec.run(None, {"y": y.numpy(), "h": res[1], "c": res[2]})
            else:
                for b in range(2):
                    history[b].append(tokens[b][step])
                ctx = np.array([hh[-cs:] for hh in history], np.int64)
                res = dec.run(None, {"y": ctx})
            assert np.abs(res[0] - pred_p.numpy()).max() <= ATOL
            enc = torch.randn(2, model.encoder.output_dim)
            logits = th.joint(th.joint.project_enc(enc), pred_p)
            got = join.run(None, {"encoder_out": enc.numpy(), "decoder_out": pred_p.numpy()})[0]
            assert got.shape == (2, th.joint.output_dim)
            assert np.abs(got - logits.numpy()).max() <= ATOL
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["durations"] == ([0, 1, 2] if head == "tdt" else None)
    assert card["joiner_output_dim"] == model.config.vocab_size + (3 if head == "tdt" else 0)


@pytest.mark.parametrize("family, head, ctc_weight", [("conformer", "rnnt", 0.3), ("citrinet", "ctc", 0.0)])
def test_int8_files_load_and_run(family, head, ctc_weight, tmp_path):
    model = tiny_model(family, head=head, ctc_weight=ctc_weight)
    card = export(model, tmp_path, int8=True)
    assert set(card["files"]) >= {"ctc", "ctc_offline", "sherpa_ctc"}
    for key, f in card["files"].items():
        fp, q = tmp_path / f["path"], tmp_path / f["int8"]
        assert q.name.endswith(".int8.onnx") and q.is_file()
        assert _meta(q)["quantization"].startswith("int8")
        ops = {n.op_type for n in onnx.load(str(q)).graph.node}
        assert "MatMulInteger" in ops or "ConvInteger" in ops, f"{key}: nothing was quantized"
        a, b = _session(fp), _session(q)
        feeds = {}
        g = np.random.default_rng(0)
        for i in a.get_inputs():
            shape = [2 if isinstance(d, str) else d for d in i.shape]
            if "T" in [d for d in i.shape if isinstance(d, str)]:
                shape[1] = 160
            if i.name == "x_lens":  # every frame valid
                feeds[i.name] = np.full(shape, 160 if "offline" in key else a.get_inputs()[0].shape[1], np.int64)
            elif i.name == "y":  # token ids
                feeds[i.name] = g.integers(0, 6, size=shape).astype(np.int64)
            elif i.type == "tensor(int64)":  # frame counters
                feeds[i.name] = np.zeros(shape, np.int64)
            else:
                feeds[i.name] = (g.standard_normal(shape) * (3 if i.name == "x" else 0.1) - (8 if i.name == "x" else 0)).astype(np.float32)
        ra, rb = a.run(None, feeds), b.run(None, feeds)
        for u, v in zip(ra, rb):
            assert u.shape == v.shape and u.dtype == v.dtype
            if u.dtype == np.float32 and u.size:
                assert np.isfinite(v).all()
                cos = float((u * v).sum() / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))
                assert cos > 0.9, f"{key}: int8 output drifts (cosine {cos:.3f})"


def test_export_again_into_the_same_directory_leaves_no_stale_file(tmp_path):
    """A second export (no int8 this time) first removes what the first one's model.json
    listed: no int8 copy of the old graphs stays; a file of the user's stays; --out a file is
    refused."""
    model = tiny_model("citrinet", head="ctc")
    export(model, tmp_path, int8=True)
    assert list(tmp_path.glob("*.int8.onnx"))
    (tmp_path / "notes.txt").write_text("mine")
    card = export(model, tmp_path, sherpa=False)
    assert not list(tmp_path.rglob("*.int8.onnx")) and not (tmp_path / "sherpa-onnx").exists()
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == sorted(Path(f["path"]).name for f in card["files"].values())
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is a file; the export is a directory"):
        export(model, tmp_path / "notes.txt")


# ---------------------------------------------------------------------- metadata
@pytest.mark.parametrize("family", FAMILIES)
def test_metadata_present_and_consistent(family, exported):
    model, out, card = exported(family)
    p = model.encoder.streaming_params()
    assert card["format"] == "streaming-asr-onnx"
    assert (card["window"], card["shift"], card["subsampling"]) == (p["window"], p["shift"], model.encoder.subsampling)
    assert card["features"]["num_mel_bins"] == 80 and card["features"]["snip_edges"] is False
    assert card["vocab_size"] == len(tokenizer()) == len((out / "tokens.txt").read_text().splitlines())
    assert (out / "tokens.txt").read_text().splitlines()[0] == "<blk> 0"
    assert card["blank_id"] == 0 and card["context_size"] == 2 and card["predictor"] == "stateless"
    if family == "conformer":
        assert (card["left_context"], card["right_context"], card["lookahead_ms"]) == (6, 1, 80)
        assert card["trained_lookaheads_ms"] == [0, 80, 160, 240]
    else:
        assert card["lookahead_ms"] == 0 and card["trained_lookaheads_ms"] == [0]
    for key, f in card["files"].items():
        meta = _meta(out / f["path"])
        for k in ("features", "window", "shift", "subsampling", "vocab_size", "blank_id", "durations",
                  "lookahead_ms", "encoder_states", "feature_normalization", "file"):
            assert k in meta, f"{key}: metadata lacks {k}"
        assert json.loads(meta["features"]) == card["features"]
        assert int(meta["window"]) == p["window"] and int(meta["vocab_size"]) in (card["vocab_size"], card["vocab_size"] - 1)
        sess = _session(out / f["path"])
        assert [i.name for i in sess.get_inputs()] == [i["name"] for i in f["inputs"]]
    # the streaming files' state inputs have the shapes init_state(1) gives, batch axis dynamic
    states = card["encoder_states"]
    assert [tuple(s["shape"]) for s in states] == [tuple(t.shape) for t in model.encoder.init_state(1)]
    for key in ("encoder", "ctc"):
        inputs = card["files"][key]["inputs"]
        assert [i["name"] for i in inputs[:2]] == ["x", "x_lens"]
        assert inputs[0]["shape"] == ["N", p["window"], 80]
        for spec, inp in zip(states, inputs[2:]):
            want = list(spec["shape"])
            want[spec["batch_axis"]] = "N"
            assert inp["name"] == spec["name"] and inp["shape"] == want
    # sherpa-onnx's metadata describes the sherpa graphs' state inputs
    sh = card["sherpa_onnx"]["transducer"]
    enc_in = {i["name"]: i["shape"] for i in card["files"]["sherpa_encoder"]["inputs"]}
    m = sh["encoder_metadata"]
    assert (m["T"], m["decode_chunk_len"]) == (p["window"], p["shift"])
    if family == "conformer":
        assert enc_in["cached_attn"] == [m["num_encoder_layers"], m["left_context"], "N", m["encoder_dim"]]
        assert enc_in["cached_conv"] == [m["num_encoder_layers"], m["cnn_module_kernel"] - 1, "N", m["encoder_dim"]]
    else:
        assert enc_in["h"] == [m["num_encoder_layers"], "N", m["d_model"]]
        assert enc_in["c"] == [m["num_encoder_layers"], "N", m["rnn_hidden_size"]]
    ctc_in = {i["name"]: i["shape"] for i in card["files"]["sherpa_ctc"]["inputs"]}
    cm = card["sherpa_onnx"]["ctc"]["model_metadata"]
    assert ctc_in["cached_key"] == [int(cm["left_context_len"]), "N", int(cm["query_head_dims"])]
    assert _meta(out / "sherpa-onnx/encoder.onnx")["model_type"] == sh["model_type"]
    assert _meta(out / "sherpa-onnx/decoder.onnx")["context_size"] == "2"


def test_conformer_streaming_graph_has_no_per_layer_shape_arithmetic(tmp_path):
    """A streaming window is a few frames, so its time is the number of nodes onnxruntime runs
    (docs/runtime.md, "What made the Conformer fast"). Adding layers must add only the layer's
    own arithmetic: no Shape/Range/trigonometry (position tables, index sizes) and no ScatterND
    (in-place writes), counted after onnxruntime's own graph optimization. One Gather per layer
    stays: it takes the layer's slice of the cache tensors."""
    counts = {}
    for layers in (2, 4):
        model = tiny_model("conformer", num_layers=layers)
        export(model, tmp_path / str(layers), sherpa=False)
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"opt{layers}.onnx")
        ort.InferenceSession(str(tmp_path / str(layers) / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(tmp_path / f"opt{layers}.onnx")).graph.node
        counts[layers] = {}
        for n in nodes:
            counts[layers][n.op_type] = counts[layers].get(n.op_type, 0) + 1
    per_layer = {op: (counts[4].get(op, 0) - counts[2].get(op, 0)) / 2 for op in counts[4] | counts[2]}
    shape_ops = {"Shape", "Range", "Sin", "Cos", "Exp", "ScatterND", "ConstantOfShape", "Expand", "Equal"}
    assert {op: n for op, n in per_layer.items() if op in shape_ops and n > 0} == {}, per_layer
    assert sum(per_layer.values()) <= 80, per_layer  # 74 now; 158 when every layer built its own tables


# ---------------------------------------------------------------------- choices and errors
def test_lookahead_picks_a_trained_context(tmp_path):
    model = tiny_model("conformer", ctc_weight=0.3)
    card = export(model, tmp_path, lookahead_ms=240, sherpa=False)
    assert (card["left_context"], card["right_context"], card["lookahead_ms"]) == (4, 3, 240)
    assert card["window"] == 4 * 8 and card["encoder_states"][0]["shape"] == [2, 4, 1, 32]
    assert model.encoder.context == (6, 1)  # the caller's model is untouched
    sess = _session(tmp_path / "encoder.onnx")
    assert sess.get_inputs()[0].shape == ["N", 32, 80]
    # the exported context streams like torch under that context
    model.encoder.set_context(4, 3)
    x = _raw_batch([32], 32)
    state = model.encoder.init_state(1)
    with torch.no_grad():
        y, _, _ = model.encoder.forward_chunk(model.normalize(x), torch.tensor([32]), state)
    res = sess.run(None, dict(zip([i.name for i in sess.get_inputs()], [x.numpy(), np.array([32]), *[s.numpy() for s in state]])))
    assert np.abs(res[0] - y.numpy()).max() <= ATOL


@pytest.mark.parametrize("family, ms, match", [
    ("conformer", 100, r"valid choices: 0, 80, 160, 240 ms"),
    ("lstm", 80, r"causal, its only look-ahead is 0 ms"),
])
def test_bad_lookahead_names_the_choices(family, ms, match, tmp_path):
    model = tiny_model(family, head="ctc")
    with pytest.raises(ValueError, match=match):
        export(model, tmp_path, lookahead_ms=ms)
    assert not (tmp_path / "model.json").exists()


def test_causal_family_accepts_zero_lookahead(tmp_path):
    card = export(tiny_model("quartznet", head="ctc"), tmp_path, lookahead_ms=0)
    assert card["lookahead_ms"] == 0 and set(card["files"]) == {"ctc", "ctc_offline", "sherpa_ctc"}


def test_lstmp_encoder_is_refused(tmp_path):
    model = tiny_model("lstm", head="ctc", projection="recurrent")
    with pytest.raises(ValueError, match="projection='recurrent'"):
        export(model, tmp_path)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        export_file(tmp_path / "nope.pt", tmp_path / "out")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot read model file"):
        export_file(tmp_path / "junk.pt", tmp_path / "out")


def test_cli_export(tmp_path, capsys):
    from asr.cli import main

    model = tiny_model("lstm", head="rnnt", ctc_weight=0.3)
    model.save(tmp_path / "model.pt")
    main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "onnx"), "--int8"])
    printed = capsys.readouterr().out
    assert "sherpa-onnx transducer: sherpa_onnx.OnlineRecognizer.from_transducer (model_type lstm)" in printed
    for name in ("encoder", "encoder.offline", "decoder", "joiner", "ctc", "ctc.offline"):
        assert (tmp_path / "onnx" / f"{name}.onnx").is_file() and (tmp_path / "onnx" / f"{name}.int8.onnx").is_file()
    assert (tmp_path / "onnx" / "sherpa-onnx" / "tokens.txt").is_file()
    with pytest.raises(SystemExit, match="error: model file not found"):
        main(["export", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="causal"):
        main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "y"), "--lookahead", "80"])


def test_state_packer_round_trip_with_empty_states():
    """StatePacker: states of any layout (batch on its own axis) pack into (N, S) and back;
    an empty state (a zero left context's attention cache) takes no columns and comes back
    empty; with nothing to carry the packed state is one unused column."""
    from exporters.graphs import StatePacker

    torch.manual_seed(0)
    shapes, axes = [(2, 0, 1, 4), (1, 3), (2, 1, 5)], [2, 0, 1]
    packer = StatePacker(shapes, axes)
    assert packer.width == 3 + 10
    states = [torch.randn(2, 0, 3, 4), torch.randn(3, 3), torch.randn(2, 3, 5)]
    packed = packer.pack(states)
    assert packed.shape == (3, 13)
    back = packer.unpack(packed)
    for a, b in zip(states, back):
        assert a.shape == b.shape and torch.equal(a, b)
    empty = StatePacker([(1, 0, 4)], [0])
    assert empty.width == 1
    packed = empty.pack([torch.randn(2, 0, 4)])
    assert packed.shape == (2, 1) and not packed.any()
    assert empty.unpack(packed)[0].shape == (2, 0, 4)
