"""Models with every head: losses, decoding, and real chunk-wise streaming == whole-utterance."""

from __future__ import annotations

import math

import pytest
import torch

from asr.decoding.streaming import StreamingRecognizer, chunkwise_decode
from asr.heads.transducer import TransducerConfig
from asr.models import ASRModel, ModelConfig

ENCODERS = {
    "conformer": {"d_model": 32, "num_layers": 2, "num_heads": 2, "subsampling_channels": 16, "att_contexts": [[8, 0], [8, 2]]},
    "lstm": {"num_layers": 1, "hidden_size": 32, "proj_size": 16},
    "ssm": {"d_model": 32, "num_layers": 1},
}
HEADS = [("ctc", 0.0, "lstm"), ("rnnt", 0.0, "lstm"), ("tdt", 0.3, "stateless"), ("pruned_rnnt", 0.0, "stateless"),
         ("pruned_tdt", 0.3, "stateless")]


def make_model(encoder: str, head: str, ctc_weight: float, predictor: str) -> ASRModel:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, encoder_config=ENCODERS[encoder], head=head, vocab_size=12, ctc_weight=ctc_weight,
                      transducer=TransducerConfig(predictor=predictor, pred_dim=16, joint_dim=16))
    return ASRModel(cfg).eval()


def same(a, b) -> bool:
    return all(x.tokens == y.tokens and x.frames == y.frames and abs(x.score - y.score) < 1e-3 for x, y in zip(a, b))


@pytest.mark.parametrize("head,ctc_weight,predictor", HEADS)
def test_every_head_trains_a_step(head, ctc_weight, predictor):
    m = make_model("lstm", head, ctc_weight, predictor).train()
    x, lens = torch.randn(3, 60, 80), torch.tensor([60, 41, 9])
    targets = [[1, 2, 3], [4, 5], [6] * 40]  # the last one cannot align under CTC / pruning
    out = m(x, lens, targets)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    out["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if head in ("ctc", "pruned_rnnt") or ctc_weight > 0:
        assert out["unalignable"].tolist() == [False, False, True]
        assert out["tokens"] == 5
    if ctc_weight > 0:
        assert {"transducer_loss", "ctc_loss"} <= out.keys()


@pytest.mark.parametrize("head,ctc_weight,predictor", HEADS)
def test_every_head_trains_under_bf16_autocast(head, ctc_weight, predictor):
    """What the trainer runs on a GPU (``precision: auto`` is bf16 autocast), here through the
    CPU's autocast: every head's loss is finite, near the float32 loss (the encoder runs in
    bf16, the transducer's joint and loss in float32) and backpropagates."""
    m = make_model("lstm", head, ctc_weight, predictor)  # eval: no dropout, no omega draws
    x, lens = torch.randn(3, 60, 80, generator=torch.Generator().manual_seed(2)), torch.tensor([60, 41, 30])
    targets = [[1, 2, 3], [4, 5], [6, 7]]
    ref = m(x, lens, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, lens, targets)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=0.03, atol=0.0)
    out["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("head", ["tdt", "pruned_tdt"])
def test_tdt_omega_uses_plain_rnnt_loss(head):
    m = make_model("lstm", head, 0.0, "lstm").train()
    x, lens, tg = torch.randn(2, 40, 80), torch.tensor([40, 33]), [[1, 2], [3]]
    m.transducer.cfg.omega = 1.0  # always the RNN-T loss: duration logits get no gradient
    m(x, lens, tg)["loss"].backward()
    V = m.config.vocab_size
    assert m.transducer.joint.out.weight.grad[V:].abs().sum() == 0
    m.zero_grad()
    m.transducer.cfg.omega = 0.0
    m(x, lens, tg)["loss"].backward()
    assert m.transducer.joint.out.weight.grad[V:].abs().sum() > 0


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("head,ctc_weight,predictor", HEADS)
def test_chunkwise_equals_whole(encoder, head, ctc_weight, predictor):
    m = make_model(encoder, head, ctc_weight, predictor)
    torch.manual_seed(1)
    x, lens = torch.randn(3, 137, 80), torch.tensor([137, 90, 5])
    methods = ["greedy"] if head == "ctc" else ["greedy", "beam"]
    for method in methods:
        assert same(m.decode(x, lens, method=method), chunkwise_decode(m, x, lens, method=method)), method
    if ctc_weight > 0:
        assert same(m.decode(x, lens, use_ctc=True), chunkwise_decode(m, x, lens, use_ctc=True))


@pytest.mark.parametrize("head", ["ctc", "tdt"])
def test_streaming_recognizer_any_feed_size(head):
    m = make_model("conformer", head, 0.0, "lstm")
    m.encoder.set_context(8, 2)
    torch.manual_seed(2)
    x = torch.randn(1, 90, 80)
    (whole,) = m.decode(x, torch.tensor([90]))
    for step in (1, 7, 24, 90):
        rec = StreamingRecognizer(m)
        partial_lengths = []
        for i in range(0, 90, step):
            partial_lengths.append(len(rec.accept_features(x[0, i:i + step]).tokens))
        h = rec.finish()
        assert h.tokens == whole.tokens and h.frames == whole.frames, step
        assert partial_lengths == sorted(partial_lengths)  # partial results only grow
    with pytest.raises(ValueError, match="finished"):
        rec.accept_features(x[0, :5])
    with pytest.raises(ValueError, match=r"\(n, 80\)"):
        StreamingRecognizer(m).accept_features(torch.zeros(5, 40))


def test_model_errors():
    with pytest.raises(ValueError, match="head must be"):
        ASRModel(ModelConfig(encoder="lstm", head="las", vocab_size=5))
    m = make_model("lstm", "rnnt", 0.0, "lstm")
    with pytest.raises(ValueError, match="no CTC head"):
        m.decode(torch.randn(1, 20, 80), torch.tensor([20]), use_ctc=True)
    with pytest.raises(ValueError, match="greedy' or 'beam"):
        m.decode(torch.randn(1, 20, 80), torch.tensor([20]), method="viterbi")


def test_multi_lookahead_training_serves_every_context():
    """One Conformer trained with two look-aheads (a context sampled per step) learns under
    both, and streams exactly at both: chunk-wise decoding equals whole-utterance decoding."""
    torch.manual_seed(0)
    contexts = [[6, 0], [6, 3]]
    cfg = ModelConfig(encoder="conformer", head="ctc", vocab_size=8,
                      encoder_config={"d_model": 32, "num_layers": 2, "num_heads": 2, "subsampling_channels": 16,
                                      "att_contexts": contexts, "dropout": 0.0, "att_dropout": 0.0})
    m = ASRModel(cfg)
    x, lens = torch.randn(4, 112, 80), torch.tensor([112, 100, 90, 80])
    targets = [[1, 2, 3, 4, 5, 6], [7, 6, 5, 4], [2, 2, 3, 1], [5, 1, 7]]

    def loss_at(ctx):
        m.eval()
        m.encoder.set_context(*ctx)
        with torch.no_grad():
            return float(m(x, lens, targets)["loss"])

    before = {tuple(c): loss_at(c) for c in contexts}
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    seen = set()
    for _ in range(60):
        seen.add(m.encoder._active_context())
        out = m(x, lens, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert seen == {tuple(c) for c in contexts}  # both contexts were trained
    for c in contexts:
        after = loss_at(c)
        assert after < 0.5 * before[tuple(c)], (c, before, after)
        assert same(m.decode(x, lens), chunkwise_decode(m, x, lens)), c


def _warmup_trainer(tiny_data, tmp_path, **model):
    """A Trainer of a small LSTM RNN-T with ``model`` settings on the tiny corpus, set up, with
    one batch; its transducer loss records the steps it ran at in ``calls``."""
    from asr.data.dataset import ASRDataset, make_sampler
    from asr.training.trainer import TrainConfig, Trainer, _load_cuts

    tc = TrainConfig(exp_dir=str(tmp_path), max_steps=6, log_every=1)
    tc.data.train = [str(tiny_data / "manifests/cuts_train.jsonl.gz")]
    tc.data.tokenizer = str(tiny_data / "lang_bpe48")
    tc.data.sampler.max_duration = 15
    tc.model = ModelConfig(encoder="lstm", encoder_config=ENCODERS["lstm"], head="rnnt", **model)
    tr = Trainer(tc, progress=False)
    cuts = _load_cuts(tc.data.train)
    tr.setup(cuts)
    tr.wrap()
    batch = ASRDataset(tr.tokenizer, tc.features, None)[next(iter(make_sampler(cuts, tc.data.sampler, train=True)))]
    calls = []
    real = tr.model.transducer.loss
    tr.model.transducer.loss = lambda *a, **k: calls.append(tr.step) or real(*a, **k)
    return tr, tc, cuts, batch, calls


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_ctc_warmup_trains_the_ctc_head_alone_then_the_transducer(ctc_weight, tiny_data, tmp_path):
    """``model.ctc_warmup_steps``: the first optimizer steps update the encoder through the CTC
    head only (the transducer gets exactly zero gradient and its loss is not computed), later
    steps train the transducer (and the CTC head only when ctc_weight > 0)."""
    from asr.heads.ctc import CTCHead

    torch.manual_seed(0)
    cfg = ModelConfig(encoder="lstm", encoder_config=ENCODERS["lstm"], head="tdt", vocab_size=12, dropout=0.0,
                      ctc_weight=ctc_weight, ctc_warmup_steps=2)
    m = ASRModel(cfg).train()
    x, lens, tg = torch.randn(2, 40, 80), torch.tensor([40, 33]), [[1, 2], [3]]
    out = m(x, lens, tg, ctc_only=True)
    out["loss"].backward()
    assert all(p.grad is not None for p in m.parameters())  # every parameter in the graph (DDP)
    assert all(p.grad.abs().sum() == 0 for p in m.transducer.parameters())
    assert m.ctc.proj.weight.grad.abs().sum() > 0 and any(p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    with torch.no_grad():  # eval: no dropout, so both sides see the same encoder output
        m.eval()
        enc, enc_lens = m.encode(x, lens)
        ref, _ = CTCHead.loss(m.ctc(enc), enc_lens, tg)
        assert torch.allclose(m(x, lens, tg, ctc_only=True)["loss"], ref.sum() / 3)
        m.train()
    m.zero_grad()
    m(x, lens, tg)["loss"].backward()
    assert any(p.grad.abs().sum() > 0 for p in m.transducer.parameters())
    assert bool(m.ctc.proj.weight.grad.abs().sum() > 0) == (ctc_weight > 0)
    with pytest.raises(ValueError, match="ctc_warmup_steps"):
        ASRModel(ModelConfig(encoder="lstm", encoder_config=ENCODERS["lstm"], head="rnnt", vocab_size=12, ctc_warmup_steps=-1))

    # through the trainer: steps 1-2 are the warm-up (CTC alone), step 3 trains the transducer
    tr, _, _, batch, calls = _warmup_trainer(tiny_data, tmp_path, ctc_weight=ctc_weight, ctc_warmup_steps=2)
    for _ in range(3):
        res = tr.train_step([batch], 1)
        assert math.isfinite(res["loss"]) and "skipped" not in res
    assert calls == [2]  # the transducer's loss ran only after the two warm-up steps


def test_ctc_token_errors_are_the_greedy_transcripts_edit_distances():
    """``CTCHead.token_errors`` (numba) against a plain Levenshtein distance of the collapsed
    argmax path, for utterances with and without frames or tokens."""
    from asr.heads.ctc import CTCHead

    def lev(a, b):
        prev = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            cur = [i] + [0] * len(b)
            for j, y in enumerate(b, 1):
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
            prev = cur
        return prev[-1]

    g = torch.Generator().manual_seed(0)
    lp = (torch.randn(6, 30, 6, generator=g) + torch.tensor([1.5, 0, 0, 0, 0, 0])).log_softmax(-1)
    lens = torch.tensor([30, 12, 1, 0, 25, 30])
    targets = [[1, 2, 3], [4], [], [2, 2], [5, 1, 1, 3, 2, 4, 4], [3] * 40]
    best = lp.argmax(-1)
    want = []
    for k, ref in enumerate(targets):
        path = best[k, : lens[k]].tolist()
        hyp = [t for i, t in enumerate(path) if t != 0 and (i == 0 or path[i - 1] != t)]
        want.append(lev(hyp, ref))
    assert CTCHead.token_errors(lp, lens, targets).tolist() == want
    assert want[3] == 2 and want[5] >= 30 and len(set(want)) > 3


@pytest.mark.parametrize("until", ["accuracy", "max_steps"])
def test_ctc_warmup_goes_on_until_the_ctc_head_reads(until, tiny_data, tmp_path):
    """``model.ctc_warmup_accuracy``: after ``ctc_warmup_steps`` the warm-up goes on while the
    CTC head's greedy token accuracy on the last 10 steps' batches is below it (an untrained
    model's is about 0), ends once it is reached (or at ``ctc_warmup_max_steps``), and the
    decision is checkpointed: a resumed trainer carries the same state."""
    from asr.training.trainer import Trainer

    tr, tc, cuts, batch, calls = _warmup_trainer(tiny_data, tmp_path, ctc_weight=0.0, ctc_warmup_steps=1, ctc_warmup_accuracy=0.9,
                                                 ctc_warmup_max_steps=3 if until == "max_steps" else 0)
    accs = []
    for _ in range(3):  # steps 1-3: the minimum, then below the accuracy
        res = tr.train_step([batch], 1)
        accs.append(res["ctc_accuracy"])
    assert calls == [] and tr.ctc_warmup_end is None and len(tr.ctc_errors) == 3, (calls, accs)
    assert all(a < 0.5 for a in accs) and all(0 < e and 0 < n for e, n in tr.ctc_errors)
    if until == "accuracy":  # as if the head read its batches: 95 of 100 tokens right
        tr.ctc_errors = [(5, 100)] * 10
    res = tr.train_step([batch], 1)
    assert "ctc_accuracy" not in res and calls == [3] and tr.ctc_warmup_end == 3
    if until == "max_steps":  # the accuracy never came: the limit ended it
        assert sum(e for e, _ in tr.ctc_errors) / sum(n for _, n in tr.ctc_errors) > 0.5
    tr._save(1, 4)
    again = Trainer(tc, progress=False)
    again.setup(cuts)
    again.resume()
    assert (again.step, again.ctc_warmup_end, again.ctc_errors) == (4, 3, tr.ctc_errors)
    assert not again.in_ctc_warmup()
    with pytest.raises(ValueError, match="ctc_warmup_accuracy"):
        ASRModel(ModelConfig(encoder="lstm", encoder_config=ENCODERS["lstm"], head="rnnt", vocab_size=12, ctc_warmup_accuracy=1.0))
    with pytest.raises(ValueError, match="ctc_warmup_max_steps"):
        ASRModel(ModelConfig(encoder="lstm", encoder_config=ENCODERS["lstm"], head="rnnt", vocab_size=12, ctc_warmup_steps=5,
                             ctc_warmup_max_steps=3))


@pytest.mark.parametrize("encoder", ["conformer", "lstm"])
def test_ctc_guard_streams_exactly(encoder):
    """A hybrid TDT+CTC's greedy search with its blank jumps guarded by the CTC head
    (``ctc_guard``): whole utterance, chunk by chunk and live give the same result, which is
    the guarded search on the CTC head's blank probabilities."""
    from asr.decoding.transducer import greedy_search

    m = make_model(encoder, "pruned_tdt", 0.3, "stateless")
    if encoder == "conformer":
        m.encoder.set_context(8, 2)
    with torch.no_grad():  # long blank jumps, and a CTC head that calls some frames blank and some not
        m.transducer.joint.out.bias[m.config.vocab_size + 2 :] += 4.0
        m.transducer.joint.out.bias[0] += 2.0
    torch.manual_seed(3)
    x, lens = torch.randn(3, 137, 80), torch.tensor([137, 90, 5])
    with torch.no_grad():
        enc, enc_lens = m.encode(x, lens)
        p = float(m.ctc(enc)[0, :, 0].exp().median())  # about half the frames pass
        ok = m.jump_guard(enc, p)
        want = greedy_search(m.transducer, enc, enc_lens, jump_ok=ok)[0]
    assert 0.3 < ok[0].float().mean() < 0.7
    guarded = m.decode(x, lens, ctc_guard=p)
    assert same(guarded, want)
    assert not same(guarded, m.decode(x, lens))  # the guard cut some jumps short
    assert same(chunkwise_decode(m, x, lens, ctc_guard=p), guarded)
    rec = StreamingRecognizer(m, ctc_guard=p)
    for i in range(0, 137, 13):
        rec.accept_features(x[0, i : i + 13])
    h = rec.finish()
    assert h.tokens == guarded[0].tokens and h.frames == guarded[0].frames


@pytest.mark.parametrize("head", ["tdt", "pruned_tdt"])
def test_training_under_the_ctc_guard(head):
    """``train_ctc_guard``: the TDT loss drops the blank arcs that jump over a frame the guard
    would stop them at (the CTC head's blank probability at or below the threshold): it equals
    the loss with those stops, exceeds the unguarded loss, and trains (finite gradients)."""
    import dataclasses

    from asr.decoding.transducer import jump_stops

    m = make_model("lstm", head, 0.3, "stateless")
    with torch.no_grad():  # long blank jumps are likely, so the stops matter
        m.transducer.joint.out.bias[m.config.vocab_size + 2 :] += 2.0
    x, lens = torch.randn(3, 60, 80), torch.tensor([60, 41, 30])
    targets = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    with torch.no_grad():
        enc, enc_lens = m.encode(x, lens)
        p = float(m.ctc(enc)[0, :, 0].exp().median())
    free = m.losses(enc, enc_lens, targets)
    guarded_cfg = dataclasses.replace(m.config, train_ctc_guard=p)
    g = ASRModel(guarded_cfg)
    g.load_state_dict(m.state_dict())
    g.eval()
    guarded = g.losses(enc, enc_lens, targets)
    assert guarded["transducer_loss"] > free["transducer_loss"] + 1e-3
    stops = jump_stops(m.jump_guard(enc, p))
    want, _ = m.transducer.loss(enc, enc_lens, targets, blank_stops=stops)
    assert math.isclose(guarded["transducer_loss"], float(want.detach().sum()) / 9, rel_tol=1e-6)
    assert (stops < 60).float().mean() > 0.3  # walls: the guard stops some jumps
    g.train()
    out = g(x, lens, targets)
    out["loss"].backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in g.parameters() if q.requires_grad)
    tiny = ASRModel(dataclasses.replace(m.config, train_ctc_guard=1e-9))
    tiny.load_state_dict(m.state_dict())
    assert math.isclose(tiny.eval().losses(enc, enc_lens, targets)["transducer_loss"], free["transducer_loss"], rel_tol=1e-9)
    with pytest.raises(ValueError, match="train_ctc_guard trains a hybrid TDT"):
        ASRModel(dataclasses.replace(m.config, head="pruned_rnnt", train_ctc_guard=0.9))
    with pytest.raises(ValueError, match="train_ctc_guard trains a hybrid TDT"):
        ASRModel(dataclasses.replace(m.config, ctc_weight=0.0, train_ctc_guard=0.9))
    with pytest.raises(ValueError, match=r"in \(0, 1\) \(0: off\), got 1.5"):
        ASRModel(dataclasses.replace(m.config, train_ctc_guard=1.5))
    with pytest.raises(ValueError, match="this head is an RNN-T"):
        make_model("lstm", "rnnt", 0.3, "stateless").transducer.loss(enc, enc_lens, targets, blank_stops=stops)


def test_ctc_guard_needs_a_hybrid_tdt():
    x, lens = torch.randn(1, 40, 80), torch.tensor([40])
    with pytest.raises(ValueError, match="no CTC head"):
        make_model("lstm", "tdt", 0.0, "stateless").decode(x, lens, ctc_guard=0.9)
    with pytest.raises(ValueError, match="applies to TDT models"):
        make_model("lstm", "rnnt", 0.3, "stateless").decode(x, lens, ctc_guard=0.9)
    hybrid = make_model("lstm", "tdt", 0.3, "stateless")
    with pytest.raises(ValueError, match=r"in \(0, 1\), got 1.5"):
        hybrid.decode(x, lens, ctc_guard=1.5)
    with pytest.raises(ValueError, match="greedy search"):
        hybrid.decode(x, lens, method="beam", ctc_guard=0.9)
    with pytest.raises(ValueError, match="greedy search"):
        chunkwise_decode(hybrid, x, lens, use_ctc=True, ctc_guard=0.9)
