"""Transducer heads: prediction networks, the joint, and the RNN-T / TDT / pruned losses.

A :class:`TransducerHead` owns a prediction network (``LSTMPredictor`` or icefall's
``StatelessPredictor``) and a :class:`Joint`. Training never builds the (B, T, U+1, V) logits:
the loss is ``kernels.fused_transducer_loss`` on the projected encoder and prediction outputs
(or ``kernels.pruned_rnnt_loss`` for ``kind="pruned_rnnt"``, and with the TDT's durations for
``kind="pruned_tdt"``: a TDT model trained on k2's pruned lattice, decoded as a TDT).

The interface the decoders use (``asr.decoding.transducer``):

- ``head.blank`` (0), ``head.vocab_size`` (V), ``head.durations`` (None for RNN-T, a list of
  ints for TDT), ``head.joint.output_dim`` (V, or V + len(durations) for TDT);
- ``head.joint.project_enc(enc) -> (B, T, J)``: once per encoder frame;
- ``head.predictor.init_state(batch_size, device) -> list[Tensor]`` (batch is dim 1 of LSTM
  states, dim 0 of the stateless context);
- ``head.predictor.step(tokens (B,), state) -> (out (B, P), new_state)``;
- ``head.predictor.select_state(state, index (N,)) -> state``, ``merge_state(state_a,
  state_b, take_b (B,) bool) -> state`` and ``cat_state([state, ...]) -> state`` (the batches
  one after the other) for batched search;
- ``head.joint.project_pred(out) -> (..., J)`` and ``head.joint(enc_p, pred_p) -> logits``
  with enc_p, pred_p broadcastable (..., J);
- optional, for one stream: ``head.stepper()`` -> ``step(token, state) -> (pred_p (1, J),
  new_state)``, the two calls above in one, memoized by context for the stateless predictor.

Prediction starts from the blank token (blank doubles as start-of-sequence, as in NeMo and
icefall).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import kernels
from asr.config import check_dropout
from asr.encoders.base import run_lstm

__all__ = ["KINDS", "TransducerConfig", "TransducerHead", "LSTMPredictor", "StatelessPredictor", "Joint"]

KINDS = ("rnnt", "tdt", "pruned_rnnt", "pruned_tdt")


@dataclass
class TransducerConfig:
    # "stateless" (icefall's embedding + conv over the last context_size tokens) is the default:
    # it exports to sherpa-onnx's transducer contract; an LSTM prediction network does not load
    # there (sherpa routes stateful decoders to its NeMo path, see exporters/README.md).
    predictor: Literal["lstm", "stateless"] = "stateless"
    pred_dim: int = 320  # embedding and LSTM size (stateless: embedding size)
    pred_layers: int = 1  # LSTM layers
    context_size: int = 2  # stateless: tokens of left context (icefall uses 2)
    joint_dim: int = 320
    activation: Literal["tanh", "relu"] = "tanh"
    # TDT (kind="tdt" or "pruned_tdt"): duration set, logit under-normalization sigma, and omega, the
    # probability per step of training on the plain RNN-T loss instead (the TDT paper; NeMo's
    # defaults are [0, 1, 2, 3, 4], 0.02 and 0.1). sigma charges every step of an alignment: on
    # sparse units (BPE) 0.05 is what taught the mini Conformer blank jumps (0.02 did not; docs/mini_results.md).
    durations: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    sigma: float = 0.02
    omega: float = 0.1
    fastemit_lambda: float = 0.0  # FastEmit (Yu et al. 2021): label-arc gradients x (1 + lambda)
    # pruned RNN-T / TDT (kind="pruned_rnnt" / "pruned_tdt"): window size and weight of the simple
    # (linear joint) loss
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for k in ("pred_dim", "pred_layers", "context_size", "joint_dim"):
            if getattr(self, k) < 1:
                raise ValueError(f"TransducerConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.prune_range < 2:
            raise ValueError(f"TransducerConfig.prune_range must be >= 2 (no path survives a window of 1), got {self.prune_range}")
        for k in ("sigma", "fastemit_lambda", "simple_loss_scale"):
            if not 0.0 <= getattr(self, k) < math.inf:  # NaN too
                raise ValueError(f"TransducerConfig.{k} must be >= 0, got {getattr(self, k)}")
        if not 0.0 <= self.omega <= 1.0:
            raise ValueError(f"TransducerConfig.omega is a probability in [0, 1], got {self.omega}")
        check_dropout(self, "dropout")


class LSTMPredictor(nn.Module):
    """Embedding -> dropout -> LSTM. State: [h, c], each (layers, B, pred_dim)."""

    def __init__(self, vocab_size: int, dim: int, layers: int = 1, dropout: float = 0.1, blank: int = 0):
        super().__init__()
        self.blank = blank
        self.embed = nn.Embedding(vocab_size, dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.output_dim = dim

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> list[Tensor]:
        shape = (self.lstm.num_layers, batch_size, self.lstm.hidden_size)
        return [torch.zeros(shape, device=device), torch.zeros(shape, device=device)]

    def forward(self, tokens: Tensor, state: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """tokens (B, U) -> (B, U, P). Training passes [blank] + targets."""
        y, (h, c) = run_lstm(self.lstm, self.dropout(self.embed(tokens)), None if state is None else (state[0], state[1]))
        return y, [h, c]

    def step(self, tokens: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        y, new = self.forward(tokens[:, None], state)
        return y[:, 0], new

    @staticmethod
    def select_state(state: list[Tensor], index: Tensor) -> list[Tensor]:
        return [s.index_select(1, index) for s in state]

    @staticmethod
    def cat_state(states: list[list[Tensor]]) -> list[Tensor]:
        return [torch.cat(parts, 1) for parts in zip(*states)]

    @staticmethod
    def merge_state(old: list[Tensor], new: list[Tensor], take_new: Tensor) -> list[Tensor]:
        m = take_new.view(1, -1, 1)
        return [torch.where(m, n, o) for o, n in zip(old, new)]


def weights_key(*tensors: Tensor) -> tuple:
    """Changes whenever one of ``tensors`` is replaced or written in place (an optimizer step,
    ``load_state_dict``): what a cache computed from them is keyed by."""
    version = (lambda t: -1 if t.is_inference() else t._version)  # inference tensors have no counter
    return tuple((t.data_ptr(), version(t), t.device, t.dtype) for t in tensors if t is not None)


class StatelessPredictor(nn.Module):
    """icefall's stateless prediction network: the embeddings of the last ``context_size``
    tokens mixed by a grouped 1-D convolution, then ReLU. State: [context], (B, context-1)
    previous token ids (blank at the start)."""

    def __init__(self, vocab_size: int, dim: int, context_size: int = 2, dropout: float = 0.1, blank: int = 0):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.blank = blank
        self.context_size = context_size
        self.embed = nn.Embedding(vocab_size, dim)
        groups = max(1, dim // 4) if dim % 4 == 0 else 1
        self.conv = nn.Conv1d(dim, dim, context_size, groups=groups, bias=False) if context_size > 1 else None
        self.dropout = nn.Dropout(dropout)
        self.output_dim = dim

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> list[Tensor]:
        return [torch.full((batch_size, self.context_size - 1), self.blank, dtype=torch.long, device=device)]

    def forward(self, tokens: Tensor, state: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """tokens (B, U) -> (B, U, P); the context before the first token comes from ``state``
        (blanks when None)."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        ctx = torch.cat([state[0], tokens], dim=1)
        e = self.embed(ctx)  # (B, C-1+U, P)
        if self.conv is not None:
            e = self.conv(e.transpose(1, 2)).transpose(1, 2)
        y = torch.relu(self.dropout(e))
        return y, [ctx[:, ctx.shape[1] - (self.context_size - 1):]]

    def step(self, tokens: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if self.training or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            y, new = self.forward(tokens[:, None], state)
            return y[:, 0], new
        # decoding: one token per step, so the convolution over the context is a sum of one
        # precomputed row per context position (``_step_tables``): C gathers instead of an
        # embedding lookup and a grouped convolution (83 us per call on one CPU thread)
        ctx = torch.cat([state[0], tokens[:, None]], dim=1)
        tables = self._step_tables()
        y = tables[0].index_select(0, ctx[:, 0])
        for k in range(1, self.context_size):
            y = y + tables[k].index_select(0, ctx[:, k])
        return torch.relu(y), [ctx[:, 1:]]

    def _step_tables(self) -> Tensor:
        """(C, V, P): row ``v`` of table ``k`` is the convolution's output for token ``v`` at
        context position ``k`` (the embedding times the convolution's k-th tap, its groups laid
        out as a block-diagonal matrix). Rebuilt whenever the weights change."""
        emb = self.embed.weight
        if self.conv is None:
            return emb[None]
        w = self.conv.weight  # (P, P / groups, C)
        key = weights_key(emb, w)
        cached = getattr(self, "_tables", None)
        if cached is None or cached[0] != key:
            P, gs, C = w.shape
            blocks = w.reshape(P // gs, gs, gs, C)  # (groups, out, in, tap)
            taps = [torch.block_diag(*blocks[..., k].unbind(0)) for k in range(C)]  # (P out, P in) each
            self._tables = cached = (key, torch.stack([emb @ t.T for t in taps]))
        return cached[1]

    @staticmethod
    def select_state(state: list[Tensor], index: Tensor) -> list[Tensor]:
        return [state[0].index_select(0, index)]

    @staticmethod
    def cat_state(states: list[list[Tensor]]) -> list[Tensor]:
        return [torch.cat([s[0] for s in states], 0)]

    @staticmethod
    def merge_state(old: list[Tensor], new: list[Tensor], take_new: Tensor) -> list[Tensor]:
        return [torch.where(take_new.view(-1, 1), new[0], old[0])]


class Joint(nn.Module):
    """logits = out(activation(enc_proj(enc) + pred_proj(pred))); out has V (+ D) rows."""

    def __init__(self, enc_dim: int, pred_dim: int, joint_dim: int, output_dim: int, activation: str = "tanh"):
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, joint_dim)
        self.pred_proj = nn.Linear(pred_dim, joint_dim)
        self.out = nn.Linear(joint_dim, output_dim)
        self.activation = activation
        self.output_dim = output_dim

    def project_enc(self, enc: Tensor) -> Tensor:
        return self.enc_proj(enc)

    def project_pred(self, pred: Tensor) -> Tensor:
        return self.pred_proj(pred)

    def forward(self, enc_p: Tensor, pred_p: Tensor) -> Tensor:
        z = enc_p + pred_p
        z = torch.tanh(z) if self.activation == "tanh" else torch.relu(z)
        return self.out(z)

    def forward_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """``forward`` as a plain function (the same ops, so the same bits), without the module
        dispatch that costs as much as the joint itself in a per-frame loop of one stream."""
        w, b = self.out.weight, self.out.bias
        act = torch.tanh if self.activation == "tanh" else torch.relu
        linear = F.linear
        return lambda enc_p, pred_p: linear(act(enc_p + pred_p), w, b)


def _full(x: Tensor) -> Tensor:
    """float16/bfloat16 (autocast's outputs) -> float32; float32/64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class TransducerHead(nn.Module):
    """Prediction network + joint + loss for ``kind`` in {"rnnt", "tdt", "pruned_rnnt", "pruned_tdt"}."""

    def __init__(self, kind: str, enc_dim: int, vocab_size: int, cfg: TransducerConfig, blank: int = 0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"transducer kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind
        self.cfg = cfg
        self.blank = blank
        self.vocab_size = vocab_size
        if kind in ("tdt", "pruned_tdt"):
            d = list(cfg.durations)
            if not d or len(set(d)) != len(d) or min(d) < 0 or max(d) < 1:
                raise ValueError(f"TDT durations must be distinct ints >= 0 with one > 0, got {d}")
            self.durations: list[int] | None = d
        else:
            self.durations = None
        if cfg.predictor == "lstm":
            self.predictor: nn.Module = LSTMPredictor(vocab_size, cfg.pred_dim, cfg.pred_layers, cfg.dropout, blank)
        elif cfg.predictor == "stateless":
            self.predictor = StatelessPredictor(vocab_size, cfg.pred_dim, cfg.context_size, cfg.dropout, blank)
        else:
            raise ValueError(f"predictor must be 'lstm' or 'stateless', got {cfg.predictor!r}")
        out_dim = vocab_size + (len(self.durations) if self.durations else 0)
        self.joint = Joint(enc_dim, self.predictor.output_dim, cfg.joint_dim, out_dim, cfg.activation)
        self.enc_dropout = nn.Dropout(cfg.dropout)
        if kind.startswith("pruned"):
            # the "simple" joint: am[t] + lm[u] -> V (k2's linear joint over the full lattice)
            self.simple_am = nn.Linear(enc_dim, vocab_size)
            self.simple_lm = nn.Linear(self.predictor.output_dim, vocab_size)

    STEP_MEMO_SIZE = 1 << 16  # entries of (1, J) floats: 64 MiB at J=256 when full

    def stepper(self) -> Callable[[int, list[Tensor]], tuple[Tensor, list[Tensor]]]:
        """For decoding one stream: ``step(token, state) -> (pred_p (1, J), new_state)``, i.e.
        ``joint.project_pred(predictor.step(tensor([token]), state)[0])`` and the new state.
        The stateless predictor's output depends only on its last ``context_size`` tokens, so
        its results are memoized by context (a label step becomes a dictionary lookup once its
        context was seen, in any utterance). The memo is checked against the weights here, once
        per search call (emptied when they have changed since), and empties itself when full.
        A state the memo handed out is looked up by identity (it lives in the memo, so its id
        is its own), which spares reading its context back from the tensor on every label.
        The LSTM predictor, whose state is the whole history, is just stepped."""
        pred, project = self.predictor, self.joint.project_pred
        if not isinstance(pred, StatelessPredictor) or torch.is_grad_enabled():
            def step(token: int, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
                out, new = pred.step(torch.tensor([token], device=state[0].device), state)
                return project(out), new
            return step
        p = self.joint.pred_proj
        wkey = weights_key(pred.embed.weight, None if pred.conv is None else pred.conv.weight, p.weight, p.bias)
        memo = self.__dict__.get("_step_memo")
        if memo is None or memo[0] != wkey:
            memo = self.__dict__["_step_memo"] = (wkey, {}, {})
        table, context_of, size = memo[1], memo[2], self.STEP_MEMO_SIZE  # context_of: id(state) -> its tokens

        def step(token: int, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
            ctx = context_of.get(id(state))
            key = (*(state[0][0].tolist() if ctx is None else ctx), token)
            hit = table.get(key)
            if hit is None:
                if len(table) >= size:
                    table.clear()
                    context_of.clear()
                out, new = pred.step(torch.tensor([token], device=state[0].device), state)
                hit = table[key] = (project(out), new)
                context_of[id(new)] = key[1:]
            return hit

        return step

    def loss(self, enc: Tensor, enc_lens: Tensor, targets: list[list[int]],
             blank_stops: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-utterance losses (B,) in nats and a (B,) bool mask of utterances that cannot
        align (their loss is 0 and they get no gradient). ``blank_stops`` (B, T), TDT only:
        the last frame a blank from each frame may land on (``kernels.tdt_loss``); an omega
        step's plain RNN-T loss ignores them."""
        device = enc.device
        B = enc.shape[0]
        U = max((len(t) for t in targets), default=0)
        tgt = torch.full((B, max(U, 1)), self.blank + 1 if self.vocab_size > 1 else 0, dtype=torch.long)
        for b, t in enumerate(targets):
            if t:
                tgt[b, : len(t)] = torch.tensor(t)
        tgt = tgt[:, :U].to(device)
        tgt_lens = torch.tensor([len(t) for t in targets], dtype=torch.long, device=device)
        sos = torch.full((B, 1), self.blank, dtype=torch.long, device=device)
        pred, _ = self.predictor(torch.cat([sos, tgt], dim=1))
        # the joint and the loss in float32 even under bf16/fp16 autocast (on a GPU): the kernels
        # take one dtype for the projections and the joint's weights, and a lattice of log-probs
        # rounded to 8 bits (or underflowing in fp16) gives wrong losses and gradients
        with torch.autocast(device.type, enabled=False):
            return self._loss(_full(enc), _full(pred), tgt, enc_lens, tgt_lens, blank_stops)

    def _loss(self, enc: Tensor, pred: Tensor, tgt: Tensor, enc_lens: Tensor, tgt_lens: Tensor,
              blank_stops: Tensor | None) -> tuple[Tensor, Tensor]:
        if blank_stops is not None and self.durations is None:
            raise ValueError("blank_stops limits TDT blank jumps; this head is an RNN-T")
        enc = self.enc_dropout(enc)
        enc_p = self.joint.project_enc(enc)
        pred_p = self.joint.project_pred(pred)
        w, b_ = self.joint.out.weight, self.joint.out.bias
        act = self.cfg.activation
        fe = self.cfg.fastemit_lambda
        # TDT's omega: the probability per step of training on the plain RNN-T loss instead
        tdt_step = self.durations is not None and not (self.training and self.cfg.omega > 0 and random.random() < self.cfg.omega)
        V = self.vocab_size
        if self.kind.startswith("pruned"):
            if not tdt_step:  # pruned RNN-T, or pruned TDT's omega step: the token logits only
                w, b_ = w[:V], None if b_ is None else b_[:V]
            out = kernels.pruned_rnnt_loss(
                enc_p, pred_p, self.simple_am(enc), self.simple_lm(pred), tgt, enc_lens, tgt_lens, joint=(w, b_),
                s_range=self.cfg.prune_range, blank=self.blank, simple_loss_scale=self.cfg.simple_loss_scale,
                activation=act, reduction="none", fastemit_lambda=fe, durations=self.durations if tdt_step else None,
                sigma=self.cfg.sigma, blank_stops=blank_stops if tdt_step else None)
            loss = out.loss
        elif tdt_step:
            loss = kernels.fused_transducer_loss(
                enc_p, pred_p, w, b_, tgt, enc_lens, tgt_lens, blank=self.blank, durations=self.durations,
                sigma=self.cfg.sigma, activation=act, reduction="none", fastemit_lambda=fe, blank_stops=blank_stops)
        else:  # RNN-T, or TDT's omega step: the plain RNN-T loss on the token logits
            loss = kernels.fused_transducer_loss(
                enc_p, pred_p, w[:V], None if b_ is None else b_[:V], tgt, enc_lens, tgt_lens, blank=self.blank,
                activation=act, reduction="none", fastemit_lambda=fe)
        bad = ~torch.isfinite(loss.detach())
        loss = torch.where(bad, torch.zeros_like(loss), loss)
        return loss, bad.cpu()
