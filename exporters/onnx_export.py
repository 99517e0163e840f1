"""``export(model, out_dir)``: every ONNX file of a model, its metadata card and tokens.txt.

Files (see ``exporters/README.md`` for the contracts and the sherpa-onnx mapping):

========================  ==========================================================
``encoder.onnx``          streaming encoder (transducer models)
``encoder.offline.onnx``  whole-utterance encoder, dynamic time axis
``decoder.onnx``          one prediction-network step (transducer models)
``joiner.onnx``           the joint network (transducer models)
``ctc.onnx``              streaming encoder + CTC head (CTC models, hybrids' CTC head)
``ctc.offline.onnx``      whole-utterance encoder + CTC head
``ctc_guard.onnx``        hybrid TDT+CTC: the CTC head's blank log-prob of encoder frames
``tokens.txt``            ``symbol id`` per line
``bpe.model``             the sentencepiece tokenizer (the runtime spells a word LM's words with it)
``model.json``            the metadata card (the same facts as each file's metadata_props)
``sherpa-onnx/``          the files in the contracts sherpa-onnx's online recognizers load
``*.int8.onnx``           ``--int8``: dynamically quantized copies (MatMul/Gemm/[Conv] weights)
========================  ==========================================================
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

from asr.encoders.conformer import query_group

from .graphs import (
    CtcGuardGraph,
    DecoderGraph,
    JoinerGraph,
    OfflineGraph,
    StreamingGraph,
    offline_encoder,
    state_batch_axes,
    state_names,
)
from .sherpa import ConformerEncoderGraph, LstmEncoderGraph, Zipformer2CtcGraph, plan

__all__ = ["export", "export_file", "select_context", "lookahead_choices", "OPSET", "CARD_FORMAT"]

log = logging.getLogger(__name__)

OPSET = 17
CARD_FORMAT = "streaming-asr-onnx"
CARD_VERSION = 1
SHERPA_DIR = "sherpa-onnx"


# ---------------------------------------------------------------------- context
def lookahead_choices(encoder) -> dict[int, tuple[int, int]]:
    """Look-ahead in ms -> the trained (left, right) context giving it (the first trained one
    when several share a look-ahead). Causal families: {0: None}."""
    if encoder.family != "conformer":
        return {0: None}  # type: ignore[dict-item]
    ms = encoder.subsampling * encoder.streaming_params()["frame_shift_ms"]
    out: dict[int, tuple[int, int]] = {}
    for left, right in encoder.contexts:
        out.setdefault(right * ms, (left, right))
    return out


def select_context(encoder, lookahead_ms: int | None) -> None:
    """Set the Conformer's context for ``lookahead_ms`` (None: keep the model's inference
    context). ValueError naming the valid choices otherwise."""
    if lookahead_ms is None:
        return
    choices = lookahead_choices(encoder)
    if lookahead_ms not in choices:
        valid = ", ".join(str(ms) for ms in sorted(choices))
        if encoder.family != "conformer":
            raise ValueError(
                f"--lookahead {lookahead_ms} ms: the {encoder.family} encoder is causal, its only "
                f"look-ahead is {valid} ms (choose its latency at training time with chunk_size)"
            )
        ctx = ", ".join(f"{ms} ms = [{lr[0]}, {lr[1]}]" for ms, lr in sorted(choices.items()))
        raise ValueError(
            f"--lookahead {lookahead_ms} ms is not a look-ahead this Conformer was trained for; "
            f"valid choices: {valid} ms (trained contexts: {ctx})"
        )
    if choices[lookahead_ms] is not None:
        encoder.set_context(*choices[lookahead_ms])


# ---------------------------------------------------------------------- metadata
def _json(v) -> str:
    return json.dumps(v, separators=(",", ":"))


def _facts(model, features_dict: dict) -> dict:
    """Everything a runtime needs to know about the model, as a JSON-able dict."""
    enc = model.encoder
    p = enc.streaming_params()
    head = model.transducer
    spec = enc.state_spec(1)
    facts = {
        "encoder": enc.family,
        "head": model.config.head,
        "hybrid_ctc": model.transducer is not None and model.ctc is not None,
        "vocab_size": model.config.vocab_size,
        "blank_id": 0,
        "unk_id": 1,
        "encoder_dim": enc.output_dim,
        "features": features_dict,
        "feature_normalization": "in-graph: inputs are raw fbank features, (x - mean) / std is the graphs' first op",
        "window": p["window"],
        "shift": p["shift"],
        "chunk_size": p["chunk_size"],
        "subsampling": enc.subsampling,
        "frame_shift_ms": p["frame_shift_ms"],
        "lookahead_frames": p["lookahead"],
        "latency_ms": p["latency_ms"],
        "lookahead_ms": p.get("attention_lookahead_ms", 0),
        "pad_length": p.get("pad_length", 0),
        "left_context": p.get("left_context"),
        "right_context": p.get("right_context"),
        "trained_contexts": [list(c) for c in getattr(enc, "contexts", [])],
        "encoder_states": [
            {"name": n, "shape": list(s), "dtype": str(dt).replace("torch.", ""), "batch_axis": a}
            for n, (s, dt), a in zip(state_names(enc), spec, state_batch_axes(enc))
        ],
        "durations": head.durations if head is not None else None,
    }
    if head is not None:
        pred = head.predictor
        facts.update(
            predictor=head.cfg.predictor,
            context_size=getattr(pred, "context_size", 1),
            joint_dim=head.joint.enc_proj.out_features,
            joiner_output_dim=head.joint.output_dim,
        )
        if head.cfg.predictor == "lstm":
            shape = [pred.lstm.num_layers, 1, pred.lstm.hidden_size]
            facts["decoder_states"] = [
                {"name": n, "shape": shape, "dtype": "float32", "batch_axis": 1} for n in ("h", "c")
            ]
        else:
            facts["decoder_states"] = []
    return facts


def _flat_metadata(facts: dict) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else _json(v)) for k, v in facts.items()}


def _io(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def desc(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims}

    return {"inputs": [desc(v) for v in m.graph.input], "outputs": [desc(v) for v in m.graph.output]}


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(path))
    keep = [p for p in m.metadata_props if p.key not in meta]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in meta.items():
        m.metadata_props.add(key=str(k), value=str(v))
    onnx.save(m, str(path))


# ---------------------------------------------------------------------- export
def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], meta: dict[str, str]) -> Path:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
            output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True,
        )
    module.eval()  # the exporter restores the training flag it found, recursively
    _set_metadata(path, meta)
    log.info("wrote %s", path)
    return path


def _states_io(names: list[str], axes: list[int]) -> tuple[list[str], list[str], dict]:
    outs = [f"new_{n}" for n in names]
    dyn = {n: {a: "N"} for n, a in zip(names, axes)}
    dyn.update({n: {a: "N"} for n, a in zip(outs, axes)})
    return names, outs, dyn


def _example(model, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, model.features.num_mel_bins, generator=g)
    lens = torch.tensor([frames] + [max(1, frames - 1)] * (batch - 1), dtype=torch.int64)
    return x, lens


def _export_streaming(model, path: Path, ctc: bool, meta: dict) -> Path:
    enc = model.encoder
    p = enc.streaming_params()
    x, lens = _example(model, 2, p["window"])
    state = enc.init_state(2)
    names, outs, dyn = _states_io(state_names(enc), state_batch_axes(enc))
    y = "log_probs" if ctc else "encoder_out"
    dyn.update({"x": {0: "N"}, "x_lens": {0: "N"}, y: {0: "N"}, f"{y}_lens": {0: "N"}})
    return _export(StreamingGraph(model, ctc), (x, lens, *state), path, ["x", "x_lens", *names],
                   [y, f"{y}_lens", *outs], dyn, meta)


def _export_offline(model, path: Path, ctc: bool, meta: dict) -> Path:
    enc = model.encoder
    copy_, forward = offline_encoder(model)
    group = 1
    if enc.family == "conformer":
        left, right = enc.context
        group = query_group(left, right + 1)
    # long enough that every length-dependent branch takes its general path while tracing
    frames = max(256, (2 * group + 1) * enc.subsampling + 3, 2 * 32 * enc.subsampling + 3)
    x, lens = _example(model, 2, frames)
    y = "log_probs" if ctc else "encoder_out"
    dyn = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, y: {0: "N", 1: "T_out"}, f"{y}_lens": {0: "N"}}
    return _export(OfflineGraph(copy_, forward, ctc), (x, lens), path, ["x", "x_lens"], [y, f"{y}_lens"], dyn, meta)


def _export_decoder(model, path: Path, meta: dict) -> Path:
    head = model.transducer
    graph = DecoderGraph(head)
    if graph.stateless:
        c = head.predictor.context_size
        y = torch.zeros(2, c, dtype=torch.int64)
        return _export(graph, (y,), path, ["y"], ["decoder_out"], {"y": {0: "N"}, "decoder_out": {0: "N"}}, meta)
    y = torch.zeros(2, dtype=torch.int64)
    h, c = head.predictor.init_state(2)
    names, outs, dyn = _states_io(["h", "c"], [1, 1])
    dyn.update({"y": {0: "N"}, "decoder_out": {0: "N"}})
    return _export(graph, (y, h, c), path, ["y", *names], ["decoder_out", *outs], dyn, meta)


def _export_joiner(model, path: Path, meta: dict) -> Path:
    head = model.transducer
    enc = torch.zeros(2, model.encoder.output_dim)
    dec = torch.zeros(2, head.joint.pred_proj.out_features)
    dyn = {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logits": {0: "N"}}
    return _export(JoinerGraph(head), (enc, dec), path, ["encoder_out", "decoder_out"], ["logits"], dyn, meta)


def _export_ctc_guard(model, path: Path, meta: dict) -> Path:
    enc = torch.zeros(2, 3, model.encoder.output_dim)
    dyn = {"encoder_out": {0: "N", 1: "T"}, "blank_log_prob": {0: "N", 1: "T"}}
    return _export(CtcGuardGraph(model), (enc,), path, ["encoder_out"], ["blank_log_prob"], dyn, meta)


def _export_sherpa_encoder(model, kind: str, path: Path, meta: dict) -> tuple[Path, dict]:
    graph = ConformerEncoderGraph(model) if kind == "conformer" else LstmEncoderGraph(model)
    p = model.encoder.streaming_params()
    x, _ = _example(model, 2, p["window"])
    shapes = graph.state_shapes()
    if kind == "conformer":
        names = ["cached_attn", "cached_conv", "processed_frames"]
        states = [torch.zeros(s[0], s[1], 2, s[3]) for s in shapes] + [torch.zeros(2, dtype=torch.int64)]
        axes = [2, 2]
        ins = ["x", *names]
        outs = ["encoder_out", "new_cached_attn", "new_cached_conv"]
        dyn = {"processed_frames": {0: "N"}}
    else:
        names = ["h", "c"]
        states = [torch.zeros(s[0], 2, s[2]) for s in shapes]
        axes = [1, 1]
        ins = ["x", *names]
        outs = ["encoder_out", "new_h", "new_c"]
        dyn = {}
    dyn.update({"x": {0: "N"}, "encoder_out": {0: "N"}})
    for n, o, a in zip(names[:2], outs[1:], axes):
        dyn[n] = {a: "N"}
        dyn[o] = {a: "N"}
    sherpa_meta = graph.metadata()
    _export(graph, (x, *states), path, ins, outs, dyn, {**meta, **_flat_metadata(sherpa_meta)})
    return path, sherpa_meta


def _export_sherpa_ctc(model, path: Path, meta: dict) -> tuple[Path, dict]:
    graph = Zipformer2CtcGraph(model)
    p = model.encoder.streaming_params()
    x, _ = _example(model, 2, p["window"])
    states = []
    for shape, axis in zip(graph.state_shapes(), graph.BATCH_AXES):
        shape = list(shape)
        shape[axis] = 2
        states.append(torch.zeros(shape, dtype=torch.int64 if len(shape) == 1 else torch.float32))
    names = list(graph.SLOTS)
    outs = ["log_probs"] + [f"new_{n}" for n in names]
    dyn = {"x": {0: "N"}, "log_probs": {0: "N"}}
    for n, a in zip(names, graph.BATCH_AXES):
        dyn[n] = {a: "N"}
        dyn[f"new_{n}"] = {a: "N"}
    sherpa_meta = graph.metadata()
    _export(graph, (x, *states), path, ["x", *names], outs, dyn, {**meta, **_flat_metadata(sherpa_meta)})
    return path, sherpa_meta


def quantize(path: Path, conv: bool = False) -> Path:
    """``name.onnx`` -> ``name.int8.onnx``: int8 weights for MatMul/Gemm (and Conv with
    ``conv``, for QuartzNet/Citrinet, whose weights are nearly all 1-D convolutions), activations
    quantized dynamically at run time; metadata kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.name[: -len(".onnx")] + ".int8.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    ops = ["MatMul", "Gemm"] + (["Conv"] if conv else [])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization advises pre-processing on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(path), str(out), op_types_to_quantize=ops, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    meta["quantization"] = f"int8 dynamic ({', '.join(ops)} weights)"
    _set_metadata(out, meta)
    log.info("wrote %s", out)
    return out


def _remove_previous_export(out: Path) -> None:
    """An export into a directory that holds one already: the files its model.json lists (its
    int8 copies included) go first, so none of them outlives the new export (a stale
    ``encoder.int8.onnx`` of another look-ahead, say). Other files are left alone."""
    card_path = out / "model.json"
    if not card_path.is_file():
        return
    try:
        listed = json.loads(card_path.read_text()).get("files", {})
    except (json.JSONDecodeError, AttributeError):
        return
    gone = 0
    for entry in listed.values() if isinstance(listed, dict) else []:
        for key in ("path", "int8"):
            rel = entry.get(key) if isinstance(entry, dict) else None
            path = (out / rel).resolve() if isinstance(rel, str) else None
            if path is not None and path.is_relative_to(out.resolve()) and path.is_file():
                path.unlink()
                gone += 1
    card_path.unlink()
    if gone:
        log.info("%s held an export: its %d files removed first", out, gone)


def export(model, out_dir: str | Path, int8: bool = False, lookahead_ms: int | None = None, sherpa: bool = True) -> dict:
    """Export ``model`` (an ``asr.models.ASRModel``) to ``out_dir``; returns the card that is
    also written to ``out_dir/model.json``. ``lookahead_ms`` picks one of a Conformer's trained
    contexts (None: its inference context); ``int8`` adds quantized copies of every file;
    ``sherpa`` adds ``sherpa-onnx/`` where the model fits one of sherpa-onnx's contracts."""
    enc = model.encoder
    if enc.family == "lstm" and getattr(enc.config, "projection", "linear") == "recurrent":
        raise ValueError(
            "this LSTM encoder uses projection='recurrent' (LSTMP), which torch.onnx cannot "
            "export (ONNX LSTM has no projection); train with projection='linear' to export"
        )
    model = copy.deepcopy(model).cpu().float().eval()
    select_context(model.encoder, lookahead_ms)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the export is a directory")
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_export(out)
    features = dataclasses.asdict(model.features)
    facts = _facts(model, features)
    common = _flat_metadata({"framework": "streaming-asr", "format_version": CARD_VERSION, **facts})
    files: dict[str, dict] = {}

    def record(key: str, path: Path, kind: str) -> None:
        files[key] = {"path": str(path.relative_to(out)), "kind": kind, **_io(path)}

    if model.transducer is not None:
        record("encoder", _export_streaming(model, out / "encoder.onnx", False, {**common, "file": "encoder"}), "streaming")
        record("encoder_offline", _export_offline(model, out / "encoder.offline.onnx", False, {**common, "file": "encoder-offline"}), "offline")
        record("decoder", _export_decoder(model, out / "decoder.onnx", {**common, "file": "decoder"}), "decoder")
        record("joiner", _export_joiner(model, out / "joiner.onnx", {**common, "file": "joiner"}), "joiner")
    if model.ctc is not None:
        record("ctc", _export_streaming(model, out / "ctc.onnx", True, {**common, "file": "ctc"}), "streaming")
        record("ctc_offline", _export_offline(model, out / "ctc.offline.onnx", True, {**common, "file": "ctc-offline"}), "offline")
        if model.transducer is not None and model.transducer.durations is not None:
            record("ctc_guard", _export_ctc_guard(model, out / "ctc_guard.onnx", {**common, "file": "ctc-guard"}), "ctc guard")

    tok = model.tokenizer
    if tok is not None:
        tok.write_tokens_txt(out / "tokens.txt")
        (out / "bpe.model").write_bytes(tok.to_bytes())  # the runtime spells a word LM's words with it
    else:
        log.warning("the model has no tokenizer: no tokens.txt (and no sherpa-onnx files) written")

    sherpa_card: dict = {}
    sp = plan(model)
    sdir = out / SHERPA_DIR
    if sdir.exists():
        shutil.rmtree(sdir)
    if sherpa and tok is not None and (sp.transducer or sp.ctc):
        sdir.mkdir()
        shutil.copy(out / "tokens.txt", sdir / "tokens.txt")
    if not sherpa or tok is None:
        why = "not exported: the model has no tokenizer" if tok is None else "not requested (--no-sherpa)"
        if sp.transducer:
            sp.transducer, sp.transducer_reason = None, why
        if sp.ctc:
            sp.ctc, sp.ctc_reason = False, why
    if sp.transducer:
        _, smeta = _export_sherpa_encoder(model, sp.transducer, sdir / "encoder.onnx", {**common, "file": "sherpa-encoder"})
        # the stateless decoder and the joiner already follow sherpa-onnx's contract (its decoder
        # reads vocab_size and context_size, which every file's metadata carries)
        shutil.copy(out / "decoder.onnx", sdir / "decoder.onnx")
        _set_metadata(sdir / "decoder.onnx", {"file": "sherpa-decoder"})
        shutil.copy(out / "joiner.onnx", sdir / "joiner.onnx")
        _set_metadata(sdir / "joiner.onnx", {"file": "sherpa-joiner"})
        for name in ("encoder", "decoder", "joiner"):
            record(f"sherpa_{name}", sdir / f"{name}.onnx", f"sherpa-onnx {name}")
        sherpa_card["transducer"] = {
            "model_type": sp.transducer,
            "api": "sherpa_onnx.OnlineRecognizer.from_transducer",
            "files": {k: f"{SHERPA_DIR}/{k}.onnx" for k in ("encoder", "decoder", "joiner")} | {"tokens": f"{SHERPA_DIR}/tokens.txt"},
            "kwargs": sp.transducer_kwargs,
            "encoder_metadata": smeta,
            "notes": "greedy search emits at most one symbol per encoder frame and treats <unk> as blank",
        }
    else:
        sherpa_card["transducer"] = {"unsupported": sp.transducer_reason}
    if sp.ctc:
        _, smeta = _export_sherpa_ctc(model, sdir / "ctc.onnx", {**common, "file": "sherpa-ctc"})
        record("sherpa_ctc", sdir / "ctc.onnx", "sherpa-onnx zipformer2 ctc")
        sherpa_card["ctc"] = {
            "model_type": "zipformer2_ctc",
            "api": "sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc",
            "files": {"model": f"{SHERPA_DIR}/ctc.onnx", "tokens": f"{SHERPA_DIR}/tokens.txt"},
            "kwargs": sp.ctc_kwargs,
            "model_metadata": smeta,
        }
    else:
        sherpa_card["ctc"] = {"unsupported": sp.ctc_reason}
    # sherpa-onnx's offline recognizers take our whole-utterance files as they are (icefall's
    # offline contracts: x, x_lens -> output, lengths); their Python API sets only the rate and
    # the number of bins, like the online CTC one
    offline_kw = sp.ctc_kwargs
    if sp.transducer and sp.offline_features_ok:
        sherpa_card["offline_transducer"] = {
            "api": "sherpa_onnx.OfflineRecognizer.from_transducer",
            "files": {"encoder": "encoder.offline.onnx", "decoder": f"{SHERPA_DIR}/decoder.onnx",
                      "joiner": f"{SHERPA_DIR}/joiner.onnx", "tokens": f"{SHERPA_DIR}/tokens.txt"},
            "kwargs": offline_kw,
        }
    if sp.ctc and sp.offline_features_ok:
        sherpa_card["offline_ctc"] = {
            "api": "sherpa_onnx.OfflineRecognizer.from_zipformer_ctc",
            "files": {"model": "ctc.offline.onnx", "tokens": f"{SHERPA_DIR}/tokens.txt"},
            "kwargs": offline_kw,
        }

    if int8:
        for key in list(files):
            q = quantize(out / files[key]["path"], conv=model.encoder.family in ("quartznet", "citrinet"))
            files[key]["int8"] = str(q.relative_to(out))

    card = {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "opset": OPSET,
        **facts,
        "trained_lookaheads_ms": sorted(lookahead_choices(model.encoder)),
        "tokens": "tokens.txt" if tok is not None else None,
        "tokenizer": "bpe.model" if tok is not None else None,
        "files": files,
        "sherpa_onnx": sherpa_card,
    }
    (out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def export_file(model_path: str | Path, out_dir: str | Path, int8: bool = False, lookahead_ms: int | None = None,
                sherpa: bool = True) -> dict:
    """``asr export``: load a model file (``asr.models.load``) and export it."""
    from asr.models import load

    return export(load(model_path), out_dir, int8=int8, lookahead_ms=lookahead_ms, sherpa=sherpa)
