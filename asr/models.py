"""ASRModel = feature normalization + encoder + heads; its config; save and load.

Heads (``ModelConfig.head``):

- ``ctc``: a linear layer and CTC;
- ``rnnt``: prediction network + joint, trained by ``kernels.fused_transducer_loss``;
- ``tdt``: the same with duration outputs (``transducer.durations``, ``sigma``, ``omega``);
- ``pruned_rnnt``: k2-style pruned RNN-T (``kernels.pruned_rnnt_loss``);
- ``pruned_tdt``: a TDT trained on the same pruned lattice (``kernels.pruned_rnnt_loss`` with
  ``durations``); it decodes, exports and runs like a ``tdt`` head;
- hybrid: any transducer head with ``ctc_weight > 0`` adds an auxiliary CTC head on the shared
  encoder; the loss is ``(1 - ctc_weight) * transducer + ctc_weight * ctc`` (the Stateful
  Conformer paper's hybrid; NeMo uses 0.3). ``decode(..., use_ctc=True)`` decodes that head.
- CTC warm-up (``ctc_warmup_steps > 0``, transducer heads): the first optimizer steps train the
  encoder through the CTC head alone (``forward(..., ctc_only=True)``, which the trainer sets);
  then the transducer joins with ``ctc_weight`` (0 is allowed: the CTC head then stops
  learning). Measured on the mini corpus (Conformer, characters, 15 CPU minutes): from scratch
  the RNN-T's loss stalled at 1.9 per character for the whole budget with almost every word
  deleted (WER 95-98%), while CTC leaves its plateau after a few hundred steps; after 450 CTC
  steps the hybrid TDT's transducer loss fell below 1.3 within 70 steps. The transducer
  computation is skipped during the warm-up. ``ctc_warmup_accuracy`` > 0 makes it go on past
  ``ctc_warmup_steps`` until the CTC head's greedy token accuracy on the training batches
  reaches that value (or to ``ctc_warmup_max_steps``); the trainer decides
  (``Trainer.in_ctc_warmup``) from ``CTCHead.token_errors``, which ``forward(ctc_only=True)``
  returns as ``ctc_errors``.
- Guarded training (``train_ctc_guard``, hybrid TDT+CTC): the TDT loss keeps only the blank
  jumps that the CTC-guarded greedy search (``decode(ctc_guard=...)``, :meth:`ASRModel.jump_guard`)
  would let through: a blank may pass only over frames whose CTC blank probability exceeds the
  threshold (``kernels.tdt_loss(blank_stops=...)``), meant to teach the duration head not to
  jump over the frames where pieces begin. Measured on the mini corpus (BPE, sigma 0.10 and
  0.15): such TDTs were worse and no faster than TDTs guarded only in decoding (most blanks
  stopped jumping, or the jumps moved to labels; docs/mini_results.md). Off by default.

Losses are per token: the sum over alignable utterances divided by their token count.

A model file is a plain dict that ``torch.load(weights_only=True)`` reads: no pickled classes,
so a checkpoint from a stranger cannot run code. It carries everything needed to transcribe:

    {"format": "asr-model", "version": 1,
     "config": ModelConfig as a dict, "features": FeatureConfig as a dict,
     "tokenizer": sentencepiece model bytes, "state_dict": weights, "meta": {...}}
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import torch
from torch import nn

from .config import check_dropout, from_dict, to_dict
from .data.features import FeatureConfig
from .data.tokenizer import Tokenizer
from .decoding.ctc import Hypothesis, ctc_greedy
from .decoding.transducer import jump_stops
from .encoders import build_encoder
from .heads.ctc import CTCHead
from .heads.transducer import KINDS as TRANSDUCER_KINDS
from .heads.transducer import TransducerConfig, TransducerHead

if TYPE_CHECKING:
    from .decoding.lm import LMFusion

__all__ = ["ModelConfig", "ASRModel", "load", "save_atomic", "Transcript"]

log = logging.getLogger(__name__)

FORMAT = "asr-model"
VERSION = 1


@dataclass
class ModelConfig:
    encoder: str = "conformer"
    encoder_config: dict = field(default_factory=dict)  # build_encoder(encoder, **encoder_config)
    head: Literal["ctc", "rnnt", "tdt", "pruned_rnnt", "pruned_tdt"] = "ctc"
    vocab_size: int = 0  # set from the tokenizer
    dropout: float = 0.1
    ctc_weight: float = 0.0  # transducer heads: > 0 adds the auxiliary CTC head (hybrid)
    ctc_warmup_steps: int = 0  # transducer heads: train the CTC head alone for this many steps first (CTC: no effect)
    # ... and after them until the CTC head's greedy token accuracy (1 - token error rate) on the
    # training batches of the last 10 steps (all ranks) reaches this: a warm-up still on the CTC
    # plateau goes on (0: the warm-up ends at ctc_warmup_steps whatever the CTC head does)
    ctc_warmup_accuracy: float = 0.0
    ctc_warmup_max_steps: int = 0  # the warm-up ends here even on the plateau (0: no limit)
    # hybrid TDT+CTC: > 0 trains the TDT's blank jumps under the CTC guard of greedy search
    # (``decode(ctc_guard=...)``) at this threshold: a blank arc of the loss may pass only over
    # frames whose CTC blank probability (the CTC head's, without dropout or gradient) exceeds it
    train_ctc_guard: float = 0.0
    transducer: TransducerConfig = field(default_factory=TransducerConfig)


@dataclass
class Transcript:
    text: str
    tokens: list[str]
    timestamps: list[float]  # seconds, start of each token


def check_model_config(config: ModelConfig) -> None:
    """A ValueError naming the first setting of ``config`` that no model can have (checked by
    :class:`ASRModel` and, before any data is read, by the trainer)."""
    if config.head != "ctc" and config.head not in TRANSDUCER_KINDS:
        raise ValueError(f"ModelConfig.head must be one of ctc, {', '.join(TRANSDUCER_KINDS)}, got {config.head!r}")
    if not 0.0 <= config.ctc_weight < 1.0:
        raise ValueError(f"ModelConfig.ctc_weight must be in [0, 1), got {config.ctc_weight}")
    check_dropout(config, "dropout")
    if "input_dim" in config.encoder_config:
        raise ValueError("ModelConfig.encoder_config.input_dim is the feature dimension: set features.num_mel_bins instead")
    if config.ctc_warmup_steps < 0:
        raise ValueError(f"ModelConfig.ctc_warmup_steps must be >= 0, got {config.ctc_warmup_steps}")
    if not 0.0 <= config.ctc_warmup_accuracy < 1.0:
        raise ValueError(f"ModelConfig.ctc_warmup_accuracy must be in [0, 1) (the CTC head's token accuracy), got {config.ctc_warmup_accuracy}")
    if config.ctc_warmup_max_steps and config.ctc_warmup_max_steps < config.ctc_warmup_steps:
        raise ValueError(f"ModelConfig.ctc_warmup_max_steps ({config.ctc_warmup_max_steps}) must be 0 (no limit) or at least "
                         f"ctc_warmup_steps ({config.ctc_warmup_steps})")
    if config.train_ctc_guard:
        if config.head not in ("tdt", "pruned_tdt") or config.ctc_weight <= 0:
            raise ValueError("ModelConfig.train_ctc_guard trains a hybrid TDT+CTC's blank jumps (head tdt or "
                             f"pruned_tdt with ctc_weight > 0), got head {config.head!r}, ctc_weight {config.ctc_weight}")
        if not 0.0 < config.train_ctc_guard < 1.0:
            raise ValueError(f"ModelConfig.train_ctc_guard is a blank probability in (0, 1) (0: off), got {config.train_ctc_guard}")


class ASRModel(nn.Module):
    """Features (B, T, 80) -> normalization -> encoder -> CTC and/or transducer head."""

    def __init__(self, config: ModelConfig, features: FeatureConfig = FeatureConfig(), tokenizer: Tokenizer | None = None):
        super().__init__()
        if config.vocab_size <= 0:
            if tokenizer is None:
                raise ValueError("ModelConfig.vocab_size is not set and no tokenizer was given")
            config = dataclasses.replace(config, vocab_size=len(tokenizer))
        check_model_config(config)
        self.config = config
        self.features = features
        self.tokenizer = tokenizer
        # Global feature normalization, filled from training data (see set_feature_stats).
        self.register_buffer("feat_mean", torch.zeros(features.num_mel_bins))
        self.register_buffer("feat_std", torch.ones(features.num_mel_bins))
        self.encoder = build_encoder(config.encoder, input_dim=features.num_mel_bins, **config.encoder_config)
        self.transducer = None
        if config.head != "ctc":
            self.transducer = TransducerHead(config.head, self.encoder.output_dim, config.vocab_size, config.transducer)
        self.ctc = None
        if config.head == "ctc" or config.ctc_weight > 0 or config.ctc_warmup_steps > 0 or config.ctc_warmup_accuracy > 0:
            self.ctc = CTCHead(self.encoder.output_dim, config.vocab_size, config.dropout)

    # ------------------------------------------------------------------ compute
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp_min(1e-3))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Global mean and variance normalization, in the model's dtype (float32 features for a
        ``model.half()`` come out float16)."""
        return ((x - self.feat_mean) / self.feat_std).to(self.feat_mean.dtype)

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F), (B,) -> encoder output (B, T', D), (B,)."""
        return self.encoder(self.normalize(x), x_lens)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor, targets: list[list[int]], ctc_only: bool = False) -> dict:
        """Training losses. Returns {"loss": mean per-token loss over alignable utterances,
        "loss_sum", "tokens", "frames", "unalignable": (B,) bool}, plus "transducer_loss" and
        "ctc_loss" (per token, detached) for a hybrid. ``ctc_only``: the CTC head's loss alone
        (the CTC warm-up of a transducer model)."""
        enc, enc_lens = self.encode(x, x_lens)
        return self.losses(enc, enc_lens, targets, ctc_only)

    def losses(self, enc: torch.Tensor, enc_lens: torch.Tensor, targets: list[list[int]], ctc_only: bool = False) -> dict:
        if ctc_only and self.ctc is None:
            raise ValueError("ctc_only: this model has no CTC head")
        parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.transducer is not None and not ctc_only:
            stops = None
            if self.config.train_ctc_guard:
                with torch.no_grad():
                    stops = jump_stops(self.jump_guard(enc, self.config.train_ctc_guard))
            parts["transducer"] = self.transducer.loss(enc, enc_lens, targets, blank_stops=stops)
        errors = None
        if self.ctc is not None and (ctc_only or self.transducer is None or self.config.ctc_weight > 0):
            log_probs = self.ctc(enc)
            parts["ctc"] = CTCHead.loss(log_probs, enc_lens, targets)
            if ctc_only:  # the trainer's measure of the warm-up (``ctc_warmup_accuracy``)
                errors = CTCHead.token_errors(log_probs, enc_lens, targets)
        bad = torch.zeros(len(targets), dtype=torch.bool)
        for _, b in parts.values():
            bad |= b
        ok = ~bad.to(enc.device)
        tokens = sum(len(t) for t, b in zip(targets, bad.tolist()) if not b)
        w = self.config.ctc_weight if self.transducer is not None else 1.0
        sums = {name: loss[ok].sum() for name, (loss, _) in parts.items()}
        if "transducer" not in sums:
            loss_sum = sums["ctc"]
        else:
            loss_sum = (1.0 - w) * sums["transducer"] + (w * sums["ctc"] if "ctc" in sums else 0.0)
        if torch.is_grad_enabled():
            # a head left out of this loss still takes part in the graph (zero gradients), so DDP
            # finds every parameter used without find_unused_parameters
            for name, head in (("transducer", self.transducer), ("ctc", self.ctc)):
                if head is not None and name not in parts:
                    loss_sum = loss_sum + 0.0 * sum(p.sum() for p in head.parameters())
        out = {
            "loss": loss_sum / max(1, tokens),
            "loss_sum": loss_sum.detach(),
            "tokens": tokens,
            "frames": int(enc_lens.sum()),
            "unalignable": bad,
        }
        if len(sums) > 1:
            for name, v in sums.items():
                out[f"{name}_loss"] = float(v.detach()) / max(1, tokens)
        if errors is not None:
            out["ctc_errors"] = int(errors[ok.cpu()].sum())
        return out

    @torch.no_grad()
    def decode(self, x: torch.Tensor, x_lens: torch.Tensor, method: str = "greedy", beam: int = 4, use_ctc: bool = False,
               fusion: "LMFusion | None" = None, ctc_guard: float | None = None) -> list[Hypothesis]:
        """Batched decoding of features. ``method``: "greedy" or "beam" (CTC prefix beam search,
        or modified beam search for transducers); ``use_ctc`` decodes a hybrid's CTC head;
        ``fusion``: an n-gram LM for the beam search (:mod:`asr.decoding.lm`); ``ctc_guard``: a
        hybrid TDT+CTC's greedy search lets a blank jump pass only over frames whose CTC blank
        probability exceeds this (:meth:`jump_guard`)."""
        self._check_decoding(method, beam, use_ctc, fusion, ctc_guard)  # before the encoder runs
        enc, enc_lens = self.encode(x, x_lens)
        return self.decode_encoded(enc, enc_lens, method, beam, use_ctc, fusion, ctc_guard)

    def jump_guard(self, enc: torch.Tensor, threshold: float) -> torch.Tensor:
        """(B, T) bool: the frames of the encoder output ``enc`` that a TDT blank jump may pass
        over in greedy search (``greedy_search(jump_ok=...)``): those whose blank probability
        under the hybrid's CTC head exceeds ``threshold``. The CTC head marks where pieces
        begin; a TDT jump predicted over such a frame lands on it instead of skipping it.
        Threshold 0.9 was chosen on the mini corpus's dev set (docs/mini_results.md). The CTC
        head runs without its dropout, so in training (``train_ctc_guard``) it marks the frames
        it would mark in decoding."""
        self.check_ctc_guard(threshold)
        return self.ctc.proj(enc).log_softmax(-1)[..., self.transducer.blank] > math.log(threshold)

    def _check_decoding(self, method: str, beam: int, use_ctc: bool, fusion, ctc_guard: float | None) -> None:
        """A ValueError for decoding settings this model cannot decode with."""
        if method not in ("greedy", "beam"):
            raise ValueError(f"decoding method must be 'greedy' or 'beam', got {method!r}")
        if method == "beam" and (isinstance(beam, bool) or not isinstance(beam, int) or beam < 1):
            raise ValueError(f"beam must be an int >= 1, got {beam!r}")
        if fusion is not None and method != "beam":
            raise ValueError("LM fusion needs beam search (method 'beam')")
        if (use_ctc or self.transducer is None) and self.ctc is None:
            raise ValueError("this model has no CTC head (train a hybrid with ctc_weight > 0)")
        if ctc_guard is not None:
            self.check_ctc_guard(ctc_guard, method, use_ctc)

    def check_ctc_guard(self, threshold: float, method: str = "greedy", use_ctc: bool = False) -> None:
        """A ValueError unless this model, decoded by ``method`` (and ``use_ctc``), can guard TDT
        jumps at ``threshold`` (:meth:`jump_guard`)."""
        if method != "greedy" or use_ctc:
            raise ValueError("the CTC guard applies to the transducer's greedy search (method 'greedy', not use_ctc)")
        if self.transducer is None or self.transducer.durations is None:
            raise ValueError("the CTC guard applies to TDT models (a transducer head with durations)")
        if self.ctc is None:
            raise ValueError("the CTC guard needs a hybrid TDT+CTC model (ctc_weight > 0): this model has no CTC head")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"the CTC guard's threshold is a blank probability in (0, 1), got {threshold}")

    def decode_encoded(self, enc: torch.Tensor, enc_lens: torch.Tensor, method: str = "greedy", beam: int = 4, use_ctc: bool = False,
                       fusion: "LMFusion | None" = None, ctc_guard: float | None = None) -> list[Hypothesis]:
        self._check_decoding(method, beam, use_ctc, fusion, ctc_guard)
        lm = fusion.kwargs() if fusion is not None else {}
        if use_ctc or self.transducer is None:
            log_probs = self.ctc(enc)
            if method == "greedy":
                return ctc_greedy(log_probs, enc_lens)
            from .decoding.ctc import ctc_prefix_beam_search

            return ctc_prefix_beam_search(log_probs, enc_lens, beam=beam, **lm)
        if method == "greedy":
            from .decoding.transducer import greedy_search

            jump_ok = self.jump_guard(enc, ctc_guard) if ctc_guard is not None else None
            return greedy_search(self.transducer, enc, enc_lens, jump_ok=jump_ok)[0]
        from .decoding.beam import modified_beam_search

        return modified_beam_search(self.transducer, enc, enc_lens, beam=beam, **lm)[0]

    # ------------------------------------------------------------------ user API
    @property
    def frame_seconds(self) -> float:
        """Seconds per encoder output frame."""
        return self.features.frame_shift * self.encoder.subsampling

    def hyp_to_transcript(self, hyp: Hypothesis) -> Transcript:
        tok = self._require_tokenizer()
        return Transcript(
            text=tok.decode(hyp.tokens),
            tokens=[tok.id_to_piece(t) for t in hyp.tokens],
            timestamps=[round(f * self.frame_seconds, 3) for f in hyp.frames],
        )

    @torch.no_grad()
    def transcribe(self, audio: "Sequence[str | os.PathLike | np.ndarray | torch.Tensor] | str | os.PathLike | np.ndarray | torch.Tensor",
                   sample_rate: int | None = None, ctc_guard: float | None = None, method: str = "greedy", beam: int = 4,
                   use_ctc: bool = False, fusion: "LMFusion | None" = None, batch_seconds: float = 120.0) -> list[Transcript]:
        """Transcribe files (any rate, resampled; multi-channel downmixed) or arrays/tensors: mono
        (N,) float samples in [-1, 1] at ``sample_rate`` (default the model's; files keep their
        own). One file, array or tensor, or a sequence of them: one :class:`Transcript` each, in
        order. Arrays get the checks files get: integer PCM, more than one channel, NaN or inf,
        samples beyond +-2 and less than 50 ms are ValueErrors. ``ctc_guard``: a hybrid TDT's
        blank jumps checked by its CTC head (:meth:`jump_guard`). ``method``, ``beam``,
        ``use_ctc``, ``fusion`` (an LM, ``method="beam"``): as in :meth:`decode`. The audio is
        decoded in batches of similar length holding up to ``batch_seconds`` of padded audio
        (the results do not depend on the batching)."""
        self._check_decoding(method, beam, use_ctc, fusion, ctc_guard)
        if not batch_seconds > 0:
            raise ValueError(f"batch_seconds must be > 0, got {batch_seconds}")
        from serve.features import check_input_rate, check_length, check_samples

        from .data.audio import read_audio, resample

        if isinstance(audio, (str, bytes, os.PathLike, np.ndarray, torch.Tensor)):
            audio = [audio]
        elif not isinstance(audio, Sequence):
            audio = list(audio)  # a generator, a set ...
        if len(audio) == 0:
            raise ValueError("no audio given")
        if all(isinstance(a, numbers.Real) for a in audio):
            raise ValueError("audio is a list of numbers: pass one recording as an array (np.asarray(samples, np.float32))")
        rate = self.features.sample_rate
        from_rate = rate if sample_rate is None else check_input_rate(sample_rate, rate)
        feats = []
        for i, a in enumerate(audio):
            if isinstance(a, (str, bytes, os.PathLike)):
                samples = read_audio(os.fsdecode(a), rate)
            else:
                try:
                    x = check_samples(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)
                except (ValueError, TypeError) as e:
                    raise ValueError(f"audio {i}: {e}") from None
                check_length(len(x), from_rate, f"audio {i}")
                samples = resample(x, from_rate, rate)
            feats.append(torch.from_numpy(self.features.compute(samples)))
        was_training = self.training
        self.eval()
        device = self.feat_mean.device
        hyps: list[Hypothesis | None] = [None] * len(feats)
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0], reverse=True)
        max_frames = batch_seconds / self.features.frame_shift
        try:
            while order:  # longest first: each batch pads to its first utterance
                n = max(1, min(len(order), int(max_frames // feats[order[0]].shape[0])))
                batch, order = order[:n], order[n:]
                lens = torch.tensor([feats[i].shape[0] for i in batch])
                x = torch.nn.utils.rnn.pad_sequence([feats[i] for i in batch], batch_first=True)
                out = self.decode(x.to(device), lens.to(device), method=method, beam=beam, use_ctc=use_ctc,
                                  fusion=fusion, ctc_guard=ctc_guard)
                for i, h in zip(batch, out):
                    hyps[i] = h
        finally:
            self.train(was_training)
        return [self.hyp_to_transcript(h) for h in hyps]

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; load it from a model file or pass one")
        return self.tokenizer

    # ------------------------------------------------------------------ files
    def to_checkpoint(self, meta: dict | None = None) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": to_dict(self.config),
            "features": to_dict(self.features),
            "tokenizer": self.tokenizer.to_bytes() if self.tokenizer is not None else None,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "meta": meta or {},
        }

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        save_atomic(self.to_checkpoint(meta), path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, source: str = "<checkpoint>") -> "ASRModel":
        """The model of a model file's dict, or of a training checkpoint's (its weights as of
        that step). A dict that is not one, or whose parts do not fit together, is a ValueError
        naming ``source``."""
        ckpt = model_dict(ckpt, source)
        try:
            config = from_dict(ModelConfig, ckpt["config"])
            features = from_dict(FeatureConfig, ckpt["features"])
            tok = Tokenizer.from_bytes(ckpt["tokenizer"]) if ckpt.get("tokenizer") else None
            model = cls(config, features, tok)
            model.load_state_dict(ckpt["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a damaged or hand-edited file
            what = f"missing {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:300]
            raise ValueError(f"{source}: a damaged model file ({type(e).__name__}: {what})") from None
        model.eval()
        return model


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely; clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a model file (an `asr export` directory describes itself in model.json)")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's own text (advice to unpickle arbitrary code included) is not for this user
        import pickle

        why = ("not a file torch.load reads without running code" if isinstance(e, pickle.UnpicklingError)
               else (str(e).strip().splitlines() or [""])[0])
        if len(why) > 200:  # at a word, marked
            why = why[:200].rsplit(" ", 1)[0] + " ..."
        raise ValueError(f"{path}: cannot read model file ({type(e).__name__}: {why}); it may be truncated or not a model") from None


def model_dict(ckpt, source: str = "<checkpoint>") -> dict:
    """The model-file dict in ``ckpt`` (a model file's, or a training checkpoint's ``model``),
    or a ValueError naming ``source``: not a model, or of another format version."""
    if isinstance(ckpt, dict) and ckpt.get("format") != FORMAT and isinstance(ckpt.get("model"), dict) \
            and ckpt["model"].get("format") == FORMAT:
        ckpt = ckpt["model"]  # a training checkpoint (checkpoints/ckpt-*.pt)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{source}: not an asr model file (no '{FORMAT}' format tag)")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{source}: model file version {ckpt.get('version')} is not supported (expected {VERSION})")
    return ckpt


def load(path: str | Path) -> ASRModel:
    """Load a model file written by training (``asr.load``)."""
    return ASRModel.from_checkpoint(read_checkpoint(path), str(path))
