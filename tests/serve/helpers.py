"""Tiny exported models and audio for the runtime tests.

The models are the exporter tests' tiny ``ASRModel``s (``tests/exporters/helpers.py``) with
their heads set so that they behave like trained models on the synthetic audio: they emit
several different tokens, with clear margins, driven by the encoder frames
(:func:`make_emitting`, :func:`make_emitting_ctc`). :func:`build` also offers the raw random
model (``emitting=False``), whose transducer emits up to ``max_symbols`` labels on a frame,
which is what exercises that limit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from asr.decoding.streaming import StreamingRecognizer
from exporters import export
from tests.exporters.helpers import _standardized, knf_features, make_emitting_ctc, synthetic_audio, tiny_model, tokenizer

__all__ = ["build", "make_emitting", "torch_stream", "feed", "knf_features", "synthetic_audio", "V", "DUR_UNITS"]

V = len(tokenizer())
DUR_UNITS = 4  # joint units that drive the TDT duration logits


def make_emitting(model, feats: torch.Tensor, gain: float = 8.0, quantile: float = 0.9, beta: float = 0.5,
                  jitter: float = 0.02, seed: int = 1) -> None:
    """Set the prediction network and joint of ``model`` so that it emits like a trained model.

    Generalises ``tests.exporters.helpers.make_emitting_transducer`` to an LSTM prediction
    network and to TDT. The prediction output is (a multiple of) the one-hot vector of the last
    token: a stateless predictor with ``context_size=1`` and an identity embedding, or a
    one-layer LSTM whose gates write the embedded token into the cell and forget the rest
    (``h = tanh(1) * onehot``). Token ``v`` has joint units ``A_v`` (suppressed when ``v`` was
    the last token) and ``B_v`` fed the same projection of the standardized encoder frame, so
    ``logit_v = relu(A_v) - sum_{u != v} relu(B_u)`` and ``logit_blank = beta``: a token fires
    where its projection crosses 0 (top ``1 - quantile`` of the frames of ``feats``), never
    twice in a row, and after a label the next symbol on its frame is blank. TDT: ``DUR_UNITS``
    more joint units, linear in other random projections of the frame, drive the duration
    logits. ``jitter`` adds small random biases to the token logits so that the tokens that do
    not fire never tie exactly (beam search ranks them)."""
    head = model.transducer
    pred = head.predictor
    assert pred.output_dim == V and head.cfg.activation == "relu"
    extra = DUR_UNITS if head.durations is not None else 0
    J = head.joint.enc_proj.out_features
    assert J == 2 * V + extra, f"joint_dim must be {2 * V + extra}"
    enc, mu, sd = _standardized(model, feats)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(V, enc.shape[1], generator=g)
    u = u / u.norm(dim=1, keepdim=True) / sd
    thr = torch.quantile((enc - mu) @ u.T, quantile, dim=0)
    w, b = gain * u, -gain * (u @ mu + thr)
    w[:2], b[:2] = 0.0, -10 * gain  # blank and <unk> units never fire
    with torch.no_grad():
        pred.embed.weight.copy_(torch.eye(V))
        if hasattr(pred, "lstm"):
            lstm = pred.lstm
            assert lstm.num_layers == 1 and lstm.hidden_size == V
            big = 20.0
            lstm.weight_hh_l0.zero_()
            lstm.weight_ih_l0.zero_()
            lstm.bias_hh_l0.zero_()
            lstm.weight_ih_l0[2 * V : 3 * V] = big * torch.eye(V)  # cell input g = tanh(big * onehot)
            lstm.bias_ih_l0.copy_(torch.cat([torch.full((V,), big), torch.full((V,), -big), torch.zeros(V), torch.full((V,), big)]))
            scale = math.tanh(1.0)  # input gate 1, forget gate 0, output gate 1: h = tanh(onehot)
        else:
            assert pred.context_size == 1
            scale = 1.0
        jp = head.joint
        ew, eb = torch.cat([w, w]), torch.cat([b, b])
        pw = torch.cat([-1000 / scale * torch.eye(V), torch.zeros(V, V)])
        out = torch.cat([torch.eye(V), torch.eye(V) - 1], dim=1)  # A_v - sum_{u != v} B_u
        out[0] = 0.0
        if extra:
            ud = torch.randn(extra, enc.shape[1], generator=g)
            ud = ud / ud.norm(dim=1, keepdim=True) / sd
            ew = torch.cat([ew, 2.0 * ud])
            eb = torch.cat([eb, -2.0 * (ud @ mu) + 10.0])  # relu in its linear range
            pw = torch.cat([pw, torch.zeros(extra, V)])
            out = torch.cat([out, torch.zeros(V, extra)], dim=1)
            dur = torch.cat([torch.zeros(len(head.durations), 2 * V), 3.0 * torch.randn(len(head.durations), extra, generator=g)], 1)
            out = torch.cat([out, dur])
        jp.enc_proj.weight.copy_(ew)
        jp.enc_proj.bias.copy_(eb)
        jp.pred_proj.weight.copy_(pw)
        jp.pred_proj.bias.zero_()
        jp.out.weight.copy_(out)
        jp.out.bias.zero_()
        jp.out.bias[:V] = jitter * torch.randn(V, generator=g)
        jp.out.bias[0] = beta
        if extra:  # center the duration logits on the calibration frames
            hid = torch.relu(jp.project_enc(enc))
            jp.out.bias[V:] = -(hid @ jp.out.weight[V:].T).mean(0)


def build(tmp_path, family: str, head: str, predictor: str = "stateless", ctc_weight: float = 0.0, seed: int = 0,
          emitting: bool = True, gain: float = 3.0, int8: bool = False, calib: np.ndarray | None = None,
          beta: float = 0.5, **encoder):
    """(model, export dir): a tiny model (emitting, see above, or random) exported without the
    sherpa-onnx files. ``calib``: 16 kHz audio the emitting model is set on (default: 2.5 s of
    synthetic audio). ``beta``: the blank logit (see :func:`make_emitting`)."""
    extra = DUR_UNITS if head in ("tdt", "pruned_tdt") else 0
    kw = dict(context_size=1, pred_dim=V, joint_dim=2 * V + extra, activation="relu") if emitting else {}
    model = tiny_model(family, head=head, predictor=predictor, ctc_weight=ctc_weight, seed=seed, **kw, **encoder)
    if emitting:
        audio = synthetic_audio(2.5, seed=seed) if calib is None else calib
        feats = torch.from_numpy(knf_features(audio, model.features))
        if model.transducer is not None:
            make_emitting(model, feats, gain=gain, beta=beta, seed=seed + 1)
        if model.ctc is not None:
            make_emitting_ctc(model, feats, seed=seed + 2)
    name = f"{family}_{head}_{predictor}_{'e' if emitting else 'r'}{seed}_g{gain:g}{'_int8' if int8 else ''}{'_c' if calib is not None else ''}"
    out = tmp_path / name
    export(model, out, int8=int8, sherpa=False)
    return model, out


def torch_stream(model, audio: np.ndarray, method: str = "greedy", beam: int = 4, use_ctc: bool = False,
                 ctc_guard: float | None = None, fusion=None):
    """The torch reference: StreamingRecognizer on kaldi-native-fbank features, then finish()."""
    rec = StreamingRecognizer(model, method=method, beam=beam, use_ctc=use_ctc, ctc_guard=ctc_guard, fusion=fusion)
    rec.accept_features(torch.from_numpy(knf_features(audio, model.features)))
    return rec.finish()


def feed(rec, streams, audios, rates=None, seed: int = 0, max_piece: int = 6000) -> int:
    """Feed every stream its audio in random-size pieces, interleaved, decoding all streams
    together after every round; then input_finished() and decode to the end. Returns the
    number of encoder calls that ran more than one stream."""
    rng = np.random.default_rng(seed)
    rates = rates or [16000] * len(audios)
    pos = [0] * len(audios)
    batched = 0

    def run():
        nonlocal batched
        while True:
            ran = rec.decode_step(streams)
            if not ran:
                return
            batched += len(ran) > 1

    while any(p < len(a) for p, a in zip(pos, audios)):
        for i, (s, a) in enumerate(zip(streams, audios)):
            if pos[i] < len(a):
                n = int(rng.integers(1, max_piece))
                s.accept_waveform(rates[i], a[pos[i] : pos[i] + n])
                pos[i] += n
        run()
    for s in streams:
        s.input_finished()
    run()
    return batched
