"""The lexicon-constrained word LM seen as a token LM (asr.decoding.lexicon)."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict

import numpy as np
import pytest
import torch

from asr.decoding.ctc import ctc_prefix_beam_search
from asr.decoding.lexicon import OFF_LEXICON, LexiconLM, arpa_words, train_word_lm
from asr.decoding.lm import NgramLM

# tokens as a character tokenizer lays them out: blank, unk, the word start, letters
PIECES = ["<blk>", "<unk>", "▁", "A", "B", "C"]
LETTERS = {"A": 3, "B": 4, "C": 5}
WORDS = ["A", "AB", "ABC", "B", "BA", "CAB", "C"]


def spell(word: str) -> list[int]:
    return [2] + [LETTERS[c] for c in word]


def make_lexicon_lm(order: int, seed: int, words=WORDS) -> LexiconLM:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(words[: 2 + k % len(words)]) for _ in range(rng.randint(1, 5))) for k in range(60)]
    lm, symbols = train_word_lm(texts, order)
    return LexiconLM(lm, symbols, spell, len(PIECES), [p.startswith("▁") for p in PIECES])


def token_score(lm, tokens, eos=True) -> float:
    seq = list(tokens) + ([lm.eos] if eos else [])
    return sum(float(lm.log_probs(lm.context(seq[:i]))[t]) for i, t in enumerate(seq))


def word_ids(lex: LexiconLM, words):
    return [lex.symbols.index(w) for w in words]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_token_scores_telescope_to_the_word_lm(order):
    """Over a sentence of lexicon words the token scores sum to the word LM's log-probability
    exactly, also for sentences longer than the token context (older tokens fall off)."""
    lex = make_lexicon_lm(order, seed=order)
    rng = random.Random(order)
    for n in [0, 1, 2, 3, 8, 20]:
        words = [rng.choice(WORDS) for _ in range(n)]
        tokens = [t for w in words for t in spell(w)]
        want = lex.word_lm.score(word_ids(lex, words))
        assert token_score(lex, tokens) == pytest.approx(want, abs=1e-9), words
        assert lex.words(tokens) == words


@pytest.mark.parametrize("order", [1, 3])
def test_every_context_is_a_distribution(order):
    """After any prefix inside the lexicon the scores of all tokens and </s> sum to 1
    (the off-lexicon ones to ~0), at word ends that are also prefixes of longer words too."""
    lex = make_lexicon_lm(order, seed=5)
    prefixes = [[], spell("A"), spell("AB"), spell("A")[:1], spell("CAB")[:2], spell("B") + spell("CAB")[:3],
                spell("ABC") + spell("A") + spell("BA")]
    for p in prefixes:
        total = np.exp(lex.log_probs(lex.context(p))).sum()
        assert total == pytest.approx(1.0, abs=1e-9), p


def test_off_lexicon_tokens_are_penalized():
    lex = make_lexicon_lm(2, seed=1)
    ok = token_score(lex, spell("AB") + spell("C"))
    assert ok > -50
    for bad in [spell("CC"), spell("AB") + spell("BB"), [3, 4], spell("A") + [1], spell("ABCA")]:
        assert token_score(lex, bad) <= OFF_LEXICON / 2, bad
    # a partial word cannot end the sentence, a complete one can
    assert token_score(lex, spell("CA")) <= OFF_LEXICON / 2
    assert token_score(lex, spell("CA"), eos=False) > -50
    assert lex.words(spell("CC") + spell("A")) == ["<unk>", "A"] and lex.words([3] + spell("A")) == ["<unk>", "A"]
    # after an off-lexicon word the search carries on with the lexicon
    after = float(lex.log_probs(lex.context(spell("CC") + spell("A")))[2])
    assert after > -50


def test_spellings_must_be_one_word(caplog):
    lm, symbols = train_word_lm(["A B C"], 2)
    starts = [p.startswith("▁") for p in PIECES]
    with pytest.raises(ValueError, match="is this the model's tokenizer"):  # no word is spelled as one
        LexiconLM(lm, symbols, lambda w: [3, 2], len(PIECES), starts)
    # a word that is not (here: B, spelled with a word start inside) is left out, with a warning
    lex = LexiconLM(lm, symbols, lambda w: spell(w) if w != "B" else [2, 4, 2], len(PIECES), starts)
    assert "left out of the lexicon" in caplog.text
    assert lex.words(spell("A") + spell("C")) == ["A", "C"] and token_score(lex, spell("B")) <= OFF_LEXICON / 2
    # words spelled alike (characters the tokenizer does not know): the first one stays
    lex = LexiconLM(lm, symbols, lambda w: [2, 3] if w in "AB" else spell(w), len(PIECES), starts)
    assert "same spelling" in caplog.text and lex.words(spell("A")) == ["A"]


def test_words_the_tokenizer_spells_with_unk_stay_out(caplog):
    """Words with characters the tokenizer does not know (lower case under an upper-case
    tokenizer) are spelled with <unk> (id 1); they used to enter the lexicon as one word
    "▁ <unk>", so a lower-case word LM decoded every utterance to nothing (100% WER)."""
    def spell_unk(word):  # as sentencepiece does: a run of unknown characters is one <unk>
        out = [2]
        for c in word:
            t = LETTERS.get(c, 1)
            if not (t == 1 and out[-1] == 1):
                out.append(t)
        return out

    starts = [p.startswith("▁") for p in PIECES]
    lm, symbols = train_word_lm(["a ab b", "ab c"], 2)
    with pytest.raises(ValueError, match="without <unk>.*written as its transcripts"):
        LexiconLM(lm, symbols, spell_unk, len(PIECES), starts)
    lm, symbols = train_word_lm(["A ab B", "AB xyz C"], 2)
    lex = LexiconLM(lm, symbols, spell_unk, len(PIECES), starts)
    assert "2 of 6 LM words left out" in caplog.text and "same spelling" not in caplog.text
    assert lex.words(spell("A") + spell("AB") + [2, 1]) == ["A", "AB", "<unk>"]
    assert token_score(lex, [2, 1]) <= OFF_LEXICON / 2

def test_arpa_round_trip_keeps_the_scores(tmp_path):
    lex = make_lexicon_lm(3, seed=2)
    path = tmp_path / "words.arpa.gz"
    lex.word_lm.save_arpa(path, lex.symbols)
    symbols = arpa_words(path)
    back = LexiconLM(NgramLM.load_arpa(path, symbols), symbols, spell, len(PIECES), [p.startswith("▁") for p in PIECES])
    tokens = spell("AB") + spell("CAB") + spell("A")
    assert token_score(back, tokens) == pytest.approx(token_score(lex, tokens), abs=1e-5)


def _lae(a, b):
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def test_ctc_prefix_beam_search_with_the_lexicon_is_exact_with_a_large_beam():
    """Brute force over every alignment: the search returns the label sequence maximizing CTC
    log-prob + weight * lexicon-LM score (with </s>) + bonus * length."""
    g = torch.Generator().manual_seed(0)
    V = 4  # blank, unk, ▁, A: the words A and AA
    pieces = PIECES[:4]
    for trial in range(4):
        rng = random.Random(trial)
        texts = [" ".join(rng.choice(["A", "AA"]) for _ in range(rng.randint(1, 3))) for _ in range(20)]
        lm, symbols = train_word_lm(texts, 2)
        lex = LexiconLM(lm, symbols, lambda w: [2] + [3] * len(w), V, [p.startswith("▁") for p in pieces])
        lp = (torch.randn(1, 6, V, generator=g, dtype=torch.float64) * 2.0).log_softmax(-1)
        weight, bonus = 0.6, (0.0, 0.5, 1.5, -0.3)[trial]
        hyp = ctc_prefix_beam_search(lp, torch.tensor([6]), beam=128, lm=lex, lm_weight=weight, token_bonus=bonus)[0]
        totals = defaultdict(lambda: -math.inf)
        for path in itertools.product(range(V), repeat=6):
            labels, prev = [], None
            for s in path:
                if s != 0 and s != prev:
                    labels.append(s)
                prev = s
            totals[tuple(labels)] = _lae(totals[tuple(labels)], sum(lp[0, t, s].item() for t, s in enumerate(path)))
        fused = {k: v + weight * token_score(lex, k) + bonus * len(k) for k, v in totals.items()}
        best = max(fused, key=fused.get)
        assert hyp.tokens == list(best), trial
        assert all(w in ("A", "AA") for w in lex.words(hyp.tokens))
        assert hyp.score == pytest.approx(fused[best], abs=1e-9)


@pytest.mark.parametrize(("kind", "predictor"), [("rnnt", "lstm"), ("tdt", "stateless")])
def test_transducer_beam_with_the_lexicon_matches_the_reference(kind, predictor):
    """Modified beam search takes the lexicon LM as any token LM: equal to the per-utterance
    reference search, and every word it outputs is in the lexicon."""
    from asr.decoding.beam import modified_beam_search
    from tests.asr.test_decoding import (
        assert_same_hyps,
        make_head,
        random_enc,
        ref_beam,
    )

    # vocab 5: blank, unk, ▁, A, B
    words = ["A", "AB", "B", "BAB", "BB"]
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(30)]
    lm, symbols = train_word_lm(texts, 2)
    lex = LexiconLM(lm, symbols, lambda w: [2] + [{"A": 3, "B": 4}[c] for c in w], 5, [False, False, True, False, False])
    for seed, (beam, weight, bonus) in enumerate([(3, 1.0, 0.5), (4, 0.5, 1.0)]):
        head = make_head(kind, predictor, vocab=5, seed=seed, blank_bias=0.0)
        lens = torch.tensor([9, 0, 6])
        enc = random_enc(3, 9, seed + 7)
        hyps, _ = modified_beam_search(head, enc, lens, beam=beam, max_symbols=2, lm=lex, lm_weight=weight, token_bonus=bonus)
        want = [ref_beam(head, enc[b, : lens[b]], beam, 2, lm=lex, lm_weight=weight, bonus=bonus) for b in range(3)]
        assert_same_hyps(hyps, want)
        for h in hyps:  # complete words from the lexicon (the last one may still be partial)
            assert all(w in words for w in lex.words(h.tokens)[:-1])


def test_decode_spells_the_word_lm_in_one_tokenizer_call(tmp_path):
    """`asr decode --lm-unit word` spelled the lexicon one word per tokenizer call: 15 of the 25 s
    a 164k-word lexicon took to build (one call: 0.13 s)."""
    import argparse

    from asr.cli import _check_lm_args, _fusion
    from asr.data.tokenizer import Tokenizer

    tok = Tokenizer.train(["THE CAT SAT ON THE MAT", "A CAB", "BAC"] * 10, model_type="char")
    calls = []

    class Counting:
        def pieces(self):
            return tok.pieces()

        def encode_batch(self, texts):
            calls.append(len(texts))
            return tok.encode_batch(texts)

    lm, symbols = train_word_lm(["THE CAT SAT", "ON THE MAT", "A CAB"], 2)
    lm.save_arpa(tmp_path / "words.arpa", symbols)
    args = argparse.Namespace(lm=str(tmp_path / "words.arpa"), lm_weight=None, token_bonus=None, method="beam", lm_unit="word", no_progress=True)
    _check_lm_args(args)  # the default weights
    fusion = _fusion(args, Counting())
    assert len(calls) == 1 and fusion.weight == 0.5
    assert fusion.lm.words(tok.encode_batch(["THE CAT"])[0]) == ["THE", "CAT"]
