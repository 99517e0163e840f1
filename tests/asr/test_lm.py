"""Token n-gram LM: Kneser-Ney estimates checked by hand, normalization, ARPA round trip, CLI."""

from __future__ import annotations

import gzip
import math
import random

import numpy as np
import pytest

from asr.decoding.lm import NgramLM


def test_kneser_ney_bigram_by_hand():
    # ids 1..3 are words, 4 = <s>, 5 = </s>; sentences "1 2" and "1 1 2"
    lm = NgramLM.train([[1, 2], [1, 1, 2]], order=2, vocab_size=4)
    p = lambda ctx, w: math.exp(lm.log_probs(ctx)[w])  # noqa: E731
    # unigrams count distinct left neighbours: 1 <- {<s>, 1}, 2 <- {1}, </s> <- {2}; D1 = 2/(2+2*1)
    # = 0.5, 4 words (1, 2, 3, </s>), so the uniform share is 0.5 * 3/4 * 1/4 = 3/32
    assert math.isclose(p((), 1), 1.5 / 4 + 3 / 32)
    assert math.isclose(p((), 3), 3 / 32)  # never seen: only the uniform share
    # bigrams keep raw counts: (<s>,1)=2, (1,2)=2, (2,</s>)=2, (1,1)=1; D2 = 1/(1+2*3) = 1/7;
    # after 1: 3 tokens, 2 types
    p2 = 7 / 32
    assert math.isclose(p((1,), 2), (2 - 1 / 7) / 3 + (1 / 7) * (2 / 3) * p2)
    assert math.isclose(p((1,), 3), (1 / 7) * (2 / 3) * (3 / 32))
    assert math.isclose(p((4,), 1), (2 - 1 / 7) / 2 + (1 / 7) * (1 / 2) * (1.5 / 4 + 3 / 32))
    assert math.isclose(p((3,), 2), p((), 2))  # an unseen context backs off with weight 1
    assert lm.log_probs(())[0] < -200 and lm.log_probs(())[4] < -200  # blank and <s> are never words


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_every_context_is_a_distribution(order):
    rng = random.Random(order)
    seqs = [[rng.randint(1, 6) for _ in range(rng.randint(1, 9))] for _ in range(60)]
    lm = NgramLM.train(seqs, order, vocab_size=7)
    contexts = {()} | {tuple(s[max(0, i - order + 1):i]) for s in seqs for i in range(len(s))}
    contexts |= {(lm.bos,) + tuple(s[:k]) for s in seqs for k in range(min(len(s), order - 1))}
    contexts |= {(6, 6, 6, 6), (2, 5)}  # unseen ones
    for ctx in contexts:
        assert math.isclose(float(np.exp(lm.log_probs(ctx)).sum()), 1.0, abs_tol=1e-9), ctx
    # a higher order fits its training text better
    if order > 1:
        assert lm.perplexity(seqs) < NgramLM.train(seqs, order - 1, 7).perplexity(seqs)


def test_arpa_round_trip_and_errors(tmp_path):
    rng = random.Random(0)
    seqs = [[rng.randint(1, 4) for _ in range(rng.randint(1, 7))] for _ in range(30)]
    lm = NgramLM.train(seqs, 3, vocab_size=5)
    symbols = ["<blk>", "<unk>", "A", "B", "\u2581"]
    for name in ("lm.arpa", "lm.arpa.gz"):
        lm.save_arpa(tmp_path / name, symbols)
        back = NgramLM.load_arpa(tmp_path / name, symbols)
        for ctx in [(), (lm.bos,), (2, 3), (lm.bos, 4), (1, 1)]:
            np.testing.assert_allclose(back.log_probs(ctx), lm.log_probs(ctx), atol=1e-5)
    text = gzip.open(tmp_path / "lm.arpa.gz", "rt").read()
    assert text.startswith("\n\\data\\\nngram 1=") and "\\3-grams:" in text and text.rstrip().endswith("\\end\\")
    with pytest.raises(ValueError, match="not a token of this model's tokenizer"):
        NgramLM.load_arpa(tmp_path / "lm.arpa", ["<blk>", "<unk>", "A", "C", "\u2581"])
    # a character LM under BPE pieces: its words are all pieces, but most pieces get no
    # probability, which would floor them and decode to nothing
    bpe = symbols + ["\u2581AB", "\u2581BA", "AB", "BB", "AAB"]
    with pytest.raises(ValueError, match="only 4 of this tokenizer's 9 tokens.*another tokenizer"):
        NgramLM.load_arpa(tmp_path / "lm.arpa", bpe)
    assert NgramLM.load_arpa(tmp_path / "lm.arpa", symbols + ["AB", "BB"]).vocab_size == 7  # a few unseen: fine
    (tmp_path / "junk.arpa").write_text("hello\n")
    with pytest.raises(ValueError, match="not an ARPA file|before any"):
        NgramLM.load_arpa(tmp_path / "junk.arpa", symbols)
    with pytest.raises(FileNotFoundError):
        NgramLM.load_arpa(tmp_path / "missing.arpa", symbols)
    with pytest.raises(ValueError, match="not a word id"):
        NgramLM.train([[1, 0, 2]], 2, vocab_size=5)  # the blank is not a word
