"""Loading an exported directory (``asr export``) into onnxruntime sessions, with checks.

:class:`OnnxModel` reads ``model.json`` and ``tokens.txt``, opens the top-level graphs that
the chosen head needs (``encoder.onnx`` + ``decoder.onnx`` + ``joiner.onnx`` for a transducer,
``ctc.onnx`` for CTC; their ``*.int8.onnx`` copies with ``int8=True``) and checks that the
card, the tokens and every graph agree: the encoder's window and feature dimension, the state
tensors (names, shapes, batch axes), the joiner's logits (``vocab_size`` + durations), the
decoder's context size and state, the CTC vocabulary, and the facts each file carries in its
own ``metadata_props``. Every failure is a ``FileNotFoundError`` or ``ValueError`` that names
the file and the numbers that disagree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["OnnxModel", "StateSpec", "load_tokens", "tokens_to_text"]

CARD_FORMAT = "streaming-asr-onnx"
CARD_VERSION = 1
WORD = "\u2581"  # sentencepiece's word boundary

_REQUIRED = ("head", "vocab_size", "blank_id", "features", "window", "shift", "subsampling", "encoder_states", "files")
_DTYPES = {"float32": np.float32, "float": np.float32, "int64": np.int64}


@dataclass(frozen=True)
class StateSpec:
    name: str
    shape: tuple[int, ...]  # batch-1 shape
    dtype: type
    batch_axis: int

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=self.dtype)


def load_tokens(path: Path) -> list[str]:
    """``tokens.txt`` (``symbol id`` per line, ids 0..V-1 in any order) -> symbols by id."""
    if not path.is_file():
        raise FileNotFoundError(f"tokens file not found: {path}")
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}: line {n} is not 'symbol id': {line!r}")
        sym, idx = parts[0], int(parts[1])
        if idx in table:
            raise ValueError(f"{path}: id {idx} appears twice (line {n})")
        table[idx] = sym
    if sorted(table) != list(range(len(table))):
        raise ValueError(f"{path}: ids must be 0..{len(table) - 1} without gaps")
    return [table[i] for i in range(len(table))]


def tokens_to_text(symbols: list[str], ids, unk_id: int = 1) -> str:
    """sentencepiece's decoding of ``ids`` (blank and <unk> dropped, as ``Tokenizer.decode``):
    pieces joined, the word boundary as a space, leading and trailing spaces removed."""
    text = "".join(symbols[i] for i in ids if i > unk_id).replace(WORD, " ")
    return text.strip(" ")


def _session(path: Path, num_threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        size = path.stat().st_size
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load {path}: not a valid ONNX model ({size} bytes; truncated or corrupt?): {first}") from None


def _dims(shape) -> list:
    return [d if isinstance(d, int) else None for d in shape]


class OnnxModel:
    """The sessions and facts of one exported directory (see the module docstring).

    Attributes: ``card`` (model.json), ``symbols`` (tokens by id), ``use_ctc``, ``window``,
    ``shift``, ``feature_dim``, ``frame_seconds`` (seconds per encoder frame), ``vocab_size``,
    ``blank``, ``durations`` (None unless TDT), ``states`` (encoder :class:`StateSpec` list),
    ``encoder`` (the streaming session: encoder.onnx or ctc.onnx), ``decoder``/``joiner`` (None
    for CTC), ``ctc_guard`` (ctc_guard.onnx when asked for with ``ctc_guard=True``, else None),
    ``files`` (the files loaded).
    """

    def __init__(self, model_dir: str | os.PathLike, int8: bool = False, use_ctc: bool = False, num_threads: int = 1,
                 ctc_guard: bool = False):
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"model directory not found: {self.dir}")
        card_path = self.dir / "model.json"
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path} not found: is {self.dir} a directory written by `asr export`?")
        try:
            card = json.loads(card_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{card_path} is not valid JSON: {e}") from None
        if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
            raise ValueError(f"{card_path}: not a model card of `asr export` (format is not {CARD_FORMAT!r})")
        if card.get("version") != CARD_VERSION:
            raise ValueError(f"{card_path}: card version {card.get('version')} is not supported (expected {CARD_VERSION})")
        missing = [k for k in _REQUIRED if k not in card]
        if missing:
            raise ValueError(f"{card_path} lacks {', '.join(missing)}")
        self.card = card
        self.head = card["head"]
        self.vocab_size = int(card["vocab_size"])
        self.blank = int(card["blank_id"])
        self.unk = int(card.get("unk_id", 1))
        self.window, self.shift = int(card["window"]), int(card["shift"])
        self.subsampling = int(card["subsampling"])
        features = card["features"]
        self.features = features
        self.feature_dim = int(features.get("num_mel_bins", 0))
        self.frame_seconds = float(features.get("frame_shift", 0.01)) * self.subsampling
        if self.window < 1 or not 1 <= self.shift <= self.window:
            raise ValueError(f"{card_path}: window={self.window}, shift={self.shift} are not a valid streaming window")

        tok_path = self.dir / (card.get("tokens") or "tokens.txt")
        self.symbols = load_tokens(tok_path)
        self.tokenizer_path = self.dir / card["tokenizer"] if card.get("tokenizer") else None  # sentencepiece's bpe.model
        if len(self.symbols) != self.vocab_size:
            raise ValueError(f"{tok_path} has {len(self.symbols)} symbols but {card_path} says vocab_size={self.vocab_size}")
        # tokens that write nothing (blank, <unk>, a lone word boundary): not speech to the endpointer
        self.silent_ids = frozenset(i for i in range(self.vocab_size) if not self.text([i]))

        transducer = self.head != "ctc"
        has_ctc = self.head == "ctc" or bool(card.get("hybrid_ctc"))
        self.use_ctc = use_ctc or not transducer
        if self.use_ctc and not has_ctc:
            raise ValueError(f"{self.dir}: this {self.head} model has no CTC head (use_ctc needs a hybrid or CTC model)")
        tdt = self.head in ("tdt", "pruned_tdt")  # the pruned TDT differs in training only
        self.durations = list(card["durations"]) if tdt and card.get("durations") else None
        if tdt and not self.durations:
            raise ValueError(f"{card_path}: a TDT model needs 'durations'")
        self.states = [
            StateSpec(s["name"], tuple(int(d) for d in s["shape"]), _DTYPES.get(s.get("dtype", "float32"), np.float32), int(s["batch_axis"]))
            for s in card["encoder_states"]
        ]
        self.int8 = int8
        self.num_threads = num_threads
        self.files: dict[str, Path] = {}
        keys = ["ctc"] if self.use_ctc else ["encoder", "decoder", "joiner"]
        sessions = {k: self._open(k) for k in keys}
        self.encoder = sessions["ctc" if self.use_ctc else "encoder"]
        self.decoder = sessions.get("decoder")
        self.joiner = sessions.get("joiner")
        self._check_encoder("ctc" if self.use_ctc else "encoder")
        self.decoder_kind = None
        if not self.use_ctc:
            self._check_transducer()
        self.ctc_guard = None
        if ctc_guard:
            if self.use_ctc or not self.durations or not has_ctc:
                raise ValueError(f"{self.dir}: the CTC guard applies to a hybrid TDT+CTC model decoded as a transducer "
                                 f"(this is a {self.head} model{' with a CTC head' if has_ctc else ''}"
                                 f"{', decoded by its CTC head' if self.use_ctc else ''})")
            if "ctc_guard" not in card["files"]:
                raise ValueError(f"{self.dir / 'model.json'} lists no ctc_guard.onnx: export the model again with this version")
            self.ctc_guard = self._open("ctc_guard")

    # ------------------------------------------------------------------ LMs
    def spell(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text by the model's sentencepiece tokenizer (``bpe.model``, written
        by ``asr export``); what a word LM needs to spell its vocabulary."""
        if self.tokenizer_path is None:
            raise ValueError(f"{self.dir / 'model.json'} names no tokenizer model (bpe.model), which spells a word LM's "
                             "words: export the model again with this version")
        if not self.tokenizer_path.is_file():
            raise FileNotFoundError(f"{self.tokenizer_path} not found (model.json names it as the tokenizer)")
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(self.tokenizer_path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.tokenizer_path} is not a sentencepiece model: {e}") from None
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        if pieces != self.symbols:
            raise ValueError(f"{self.tokenizer_path} does not match {self.dir / 'tokens.txt'} ({len(pieces)} against "
                             f"{len(self.symbols)} pieces)")
        return sp.encode(list(texts), out_type=int)

    def load_lm(self, path, unit: str = "token"):
        """An ARPA LM (``asr lm``) over this model's tokens (``unit="token"``) or a word LM
        (``"word"``) spelled by its tokenizer, for the beam search (``asr.decoding.lexicon.load_lm``)."""
        from asr.decoding.lexicon import load_lm  # numpy only

        return load_lm(path, unit, self.symbols, self.spell)

    # ------------------------------------------------------------------ loading
    def _open(self, key: str):
        entry = self.card["files"].get(key)
        if entry is None:
            raise ValueError(f"{self.dir / 'model.json'} lists no '{key}' file, which a {self.head} model decoded "
                             f"{'with its CTC head' if self.use_ctc else 'as a transducer'} needs")
        rel = entry.get("int8") if self.int8 else entry.get("path")
        if rel is None:
            raise ValueError(f"{self.dir} has no int8 copy of {entry.get('path')}: export with `asr export --int8`")
        path = self.dir / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (model.json lists it as the {key} graph)")
        sess = _session(path, self.num_threads)
        self.files[key] = path
        meta = sess.get_modelmeta().custom_metadata_map
        for k in sorted(set(meta) & set(self.card)):  # every setting both state (ids, features, encoder ...) must agree
            try:
                value = json.loads(meta[k])
            except json.JSONDecodeError:
                value = meta[k]
            if value != self.card[k]:
                raise ValueError(f"{path.name}'s metadata says {k}={meta[k]} but {self.dir / 'model.json'} says {k}={json.dumps(self.card[k])}")
        return sess

    def _check_encoder(self, key: str) -> None:
        sess, name = self.encoder, self.files[key].name
        ins, outs = sess.get_inputs(), sess.get_outputs()
        want = ["x", "x_lens"] + [s.name for s in self.states]
        got = [i.name for i in ins]
        if got != want:
            raise ValueError(f"{name} takes inputs {got} but model.json describes {want}")
        x = _dims(ins[0].shape)
        if len(x) != 3:
            raise ValueError(f"{name}: input x has rank {len(x)}, expected (N, window, features)")
        if x[1] is not None and x[1] != self.window:
            raise ValueError(f"model.json says window={self.window} but {name} takes x of shape {ins[0].shape}")
        if x[2] is not None and x[2] != self.feature_dim:
            raise ValueError(f"model.json says num_mel_bins={self.feature_dim} but {name} takes x of shape {ins[0].shape}")
        for spec, inp in zip(self.states, ins[2:]):
            dims = _dims(inp.shape)
            if len(dims) != len(spec.shape):
                raise ValueError(f"{name}: state {spec.name} has rank {len(dims)} but model.json gives shape {list(spec.shape)}")
            for axis, (d, s) in enumerate(zip(dims, spec.shape)):
                if axis != spec.batch_axis and d is not None and d != s:
                    raise ValueError(f"{name}: state {spec.name} has shape {inp.shape} but model.json gives {list(spec.shape)} (batch axis {spec.batch_axis})")
        want_out = ["log_probs" if self.use_ctc else "encoder_out", "log_probs_lens" if self.use_ctc else "encoder_out_lens"]
        want_out += [f"new_{s.name}" for s in self.states]
        if [o.name for o in outs] != want_out:
            raise ValueError(f"{name} has outputs {[o.name for o in outs]} but model.json's states need {want_out}")
        last = _dims(outs[0].shape)[-1]
        if self.use_ctc and last is not None and last != self.vocab_size:
            raise ValueError(f"{name} outputs {last} log-probs per frame but model.json says vocab_size={self.vocab_size}")
        dim = self.card.get("encoder_dim")
        if not self.use_ctc and last is not None and dim is not None and last != dim:
            raise ValueError(f"{name} outputs {last}-dim frames but model.json says encoder_dim={dim}")
        self.encoder_dim = last if last is not None else dim
        self.encoder_outputs = [o.name for o in outs]

    def _check_transducer(self) -> None:
        card = self.card
        jn, dn = self.files["joiner"].name, self.files["decoder"].name
        j_in, j_out = self.joiner.get_inputs(), self.joiner.get_outputs()
        if [i.name for i in j_in] != ["encoder_out", "decoder_out"] or len(j_out) != 1:
            raise ValueError(f"{jn}: expected inputs (encoder_out, decoder_out) and one output, got {[i.name for i in j_in]}")
        width = self.vocab_size + (len(self.durations) if self.durations else 0)
        out_dim = _dims(j_out[0].shape)[-1]
        what = f"vocab_size={self.vocab_size}" + (f" + {len(self.durations)} durations" if self.durations else "")
        if out_dim is not None and out_dim != width:
            raise ValueError(f"{jn} outputs {out_dim} logits but model.json says {what} = {width}")
        if card.get("joiner_output_dim") is not None and card["joiner_output_dim"] != width:
            raise ValueError(f"model.json says joiner_output_dim={card['joiner_output_dim']} but {what} = {width}")
        enc_dim = _dims(j_in[0].shape)[-1]
        if enc_dim is not None and self.encoder_dim is not None and enc_dim != self.encoder_dim:
            raise ValueError(f"{jn} takes {enc_dim}-dim encoder frames but {self.files['encoder'].name} outputs {self.encoder_dim}")
        self.joint_dim = _dims(j_in[1].shape)[-1]
        d_in, d_out = self.decoder.get_inputs(), self.decoder.get_outputs()
        if d_in[0].name != "y" or d_out[0].name != "decoder_out":
            raise ValueError(f"{dn}: expected input y and output decoder_out, got {[i.name for i in d_in]} -> {[o.name for o in d_out]}")
        dec_dim = _dims(d_out[0].shape)[-1]
        if dec_dim is not None and self.joint_dim is not None and dec_dim != self.joint_dim:
            raise ValueError(f"{dn} outputs {dec_dim}-dim vectors but {jn} takes decoder_out of {self.joint_dim}")
        predictor = card.get("predictor", "stateless")
        if predictor == "stateless":
            if len(d_in) != 1 or len(d_out) != 1:
                raise ValueError(f"model.json says predictor=stateless but {dn} has inputs {[i.name for i in d_in]} (a stateless decoder takes only y)")
            y = _dims(d_in[0].shape)
            ctx = int(card.get("context_size", 1))
            if len(y) != 2 or (y[1] is not None and y[1] != ctx):
                raise ValueError(f"model.json says context_size={ctx} but {dn} takes y of shape {d_in[0].shape}")
            self.context_size = ctx
            self.decoder_kind = "stateless"
            self.decoder_states: list[StateSpec] = []
        else:
            names = [i.name for i in d_in]
            specs = card.get("decoder_states") or []
            want = ["y"] + [s["name"] for s in specs]
            if names != want:
                raise ValueError(f"{dn} takes inputs {names} but model.json's decoder_states describe {want}")
            self.decoder_states = [
                StateSpec(s["name"], tuple(int(d) for d in s["shape"]), _DTYPES.get(s.get("dtype", "float32"), np.float32), int(s["batch_axis"]))
                for s in specs
            ]
            for spec, inp in zip(self.decoder_states, d_in[1:]):
                dims = _dims(inp.shape)
                if len(dims) != len(spec.shape) or any(
                    d is not None and d != s for a, (d, s) in enumerate(zip(dims, spec.shape)) if a != spec.batch_axis
                ):
                    raise ValueError(f"{dn}: state {spec.name} has shape {inp.shape} but model.json gives {list(spec.shape)}")
            self.context_size = 1
            self.decoder_kind = "stateful"

    # ------------------------------------------------------------------ running
    def init_encoder_state(self) -> list[np.ndarray]:
        return [s.zeros() for s in self.states]

    def run_encoder(self, x: np.ndarray, x_lens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        feeds = {"x": x, "x_lens": x_lens}
        for spec, s in zip(self.states, states):
            feeds[spec.name] = s
        out = self.encoder.run(None, feeds)
        return out[0], out[1], out[2:]

    def run_ctc_guard(self, enc: np.ndarray) -> np.ndarray:
        """(N, T) blank log-probabilities of the CTC head on encoder frames (N, T, D)."""
        return self.ctc_guard.run(None, {"encoder_out": enc})[0]

    def run_joiner(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return self.joiner.run(None, {"encoder_out": enc, "decoder_out": dec})[0]

    def run_decoder(self, y: np.ndarray, states: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"y": y}
        for spec, s in zip(self.decoder_states, states or []):
            feeds[spec.name] = s
        out = self.decoder.run(None, feeds)
        return out[0], out[1:]

    def text(self, ids) -> str:
        return tokens_to_text(self.symbols, ids, self.unk)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())
