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


def test_arpa_round_trip_and_errors(tmp_path, capsys):
    rng = random.Random(0)
    seqs = [[rng.randint(1, 4) for _ in range(rng.randint(1, 7))] for _ in range(30)]
    lm = NgramLM.train(seqs, 3, vocab_size=5)
    symbols = ["<blk>", "<unk>", "A", "B", "\u2581"]
    for name, progress in (("lm.arpa", False), ("lm.arpa.gz", True)):
        lm.save_arpa(tmp_path / name, symbols, progress=progress)
        back = NgramLM.load_arpa(tmp_path / name, symbols, progress=progress)
        for ctx in [(), (lm.bos,), (2, 3), (lm.bos, 4), (1, 1)]:
            np.testing.assert_allclose(back.log_probs(ctx), lm.log_probs(ctx), atol=1e-5)
        err = capsys.readouterr().err  # the progress bars (a LibriSpeech LM takes minutes to write and read)
        assert ("writing the LM" in err and "reading lm.arpa.gz" in err) == progress, err
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


def _loop_perplexity(lm, seqs):
    total = sum(lm.score(s) for s in seqs)
    return math.exp(-total / sum(len(s) + 1 for s in seqs))


@pytest.mark.parametrize("order", [1, 3, 4])
def test_perplexity_at_once_equals_the_token_by_token_score(order):
    rng = random.Random(order)
    seqs = [[rng.randint(1, 8) for _ in range(rng.randint(1, 12))] for _ in range(80)]
    lm = NgramLM.train(seqs, order, vocab_size=10)  # id 9 never occurs: its unigram floor
    held_out = [[rng.randint(1, 9) for _ in range(rng.randint(1, 12))] for _ in range(40)]
    for s in (seqs, held_out):
        assert math.isclose(lm.perplexity(s), _loop_perplexity(lm, s), rel_tol=1e-12)
    assert lm.num_ngrams()[0] == 11  # ids 1..9, </s> and <s>: every id has a row
    with pytest.raises(ValueError, match="perplexity of no sequences"):
        lm.perplexity([])


def test_arpa_whose_prefixes_are_missing(tmp_path):
    # a 3-gram "<s> A B" without its 2-gram "<s> A", and "A B" with a back-off but no 3-grams
    (tmp_path / "lm.arpa").write_text(
        "\\data\\\nngram 1=4\nngram 2=2\nngram 3=1\n\n"
        "\\1-grams:\n-0.5\tA\t-0.2\n-0.6\tB\t-0.1\n-0.7\t</s>\n-99\t<s>\t-0.3\n\n"
        "\\2-grams:\n-0.25\tA B\t-0.05\n-0.4\tB </s>\n\n"
        "\\3-grams:\n-0.1\t<s> A B\n\n\\end\\\n"
    )
    lm = NgramLM.load_arpa(tmp_path / "lm.arpa", ["<blk>", "A", "B"])
    A, B, bos, eos = 1, 2, lm.bos, lm.eos
    lp = lambda ctx, w: lm.log_probs(ctx)[w] / math.log(10)  # noqa: E731
    assert math.isclose(lp((bos, A), B), -0.1)  # its 3-gram
    # "<s> A" has no back-off of its own (0): back off to "A", whose 2-gram for B is there
    assert math.isclose(lp((bos, A), eos), -0.2 - 0.7)
    assert math.isclose(lp((A, B), eos), -0.05 - 0.4)
    assert math.isclose(lp((B, A), B), -0.25)  # context "B A" unknown: back off to "A B"
    seqs = [[A, B], [B, A, B, A], [A]]
    assert math.isclose(lm.perplexity(seqs), _loop_perplexity(lm, seqs), rel_tol=1e-12)
    # written back, the added prefix stays out of the file
    lm.save_arpa(tmp_path / "back.arpa", ["<blk>", "A", "B"])
    text = (tmp_path / "back.arpa").read_text()
    assert "ngram 2=2" in text and "\t<s> A\n" not in text and "\t<s> A\t" not in text and "\t<s> A B\n" in text
    back = NgramLM.load_arpa(tmp_path / "back.arpa", ["<blk>", "A", "B"])
    for ctx in [(), (bos,), (bos, A), (A, B), (B, A)]:
        np.testing.assert_allclose(back.log_probs(ctx), lm.log_probs(ctx), atol=1e-6)


def test_a_large_text_trains_in_seconds():
    # 2M tokens of a 300-id Markov chain, order 4: about 1.7M distinct 4-grams. Counting in
    # Python dicts took 11 s and 0.6 GB here; the tables take 1.6 s and 0.25 GB.
    import time

    rng = np.random.default_rng(0)
    step = rng.integers(1, 300, size=(300, 4))
    tok = np.empty(2_000_000, np.int64)
    tok[0] = 1
    pick = rng.integers(0, 4, size=len(tok))
    noise = rng.integers(1, 300, size=len(tok))
    for i in range(1, len(tok)):
        tok[i] = noise[i] if pick[i] == 0 and noise[i] % 2 else step[tok[i - 1], pick[i]]
    seqs = tok.reshape(-1, 50)
    t0 = time.perf_counter()
    lm = NgramLM.train(seqs, 4, vocab_size=300)
    took = time.perf_counter() - t0
    assert lm.num_ngrams()[3] > 100_000
    assert took < 6, took  # the dict counting's 11 s fails this; the tables' 1.6 s leaves CI a margin of 3.7x
    assert math.isclose(lm.perplexity(seqs[:50]), _loop_perplexity(lm, seqs[:50].tolist()), rel_tol=1e-12)


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    """A character tokenizer of upper-case LibriSpeech-style text (``asr lm --tokenizer DIR``)."""
    from asr.data.tokenizer import Tokenizer

    out = tmp_path_factory.mktemp("lang_char")
    Tokenizer.train(["THE CAT SAT ON THE MAT", "HELLO WORLD", "A QUICK BROWN FOX JUMPS OVER THE LAZY DOG'S BACK"] * 10,
                    model_type="char", out_dir=out)
    return out


def test_lm_trains_on_plain_text(char_tokenizer, tmp_path, capsys):
    """`asr lm --text FILE`: a user's own text, normalized as `asr prepare` normalizes transcripts
    (it took only cut manifests: a text file was 'cannot read the cut manifest')."""
    from asr.cli import main

    text = tmp_path / "my.txt"
    text.write_bytes("\ufeffHello, world!\n\n  the cat sat on the mat.  \nThé cät\n東京 cat\n".encode())
    out = tmp_path / "lm.arpa"
    main(["lm", "--tokenizer", str(char_tokenizer), "--text", str(text), "--order", "3", "--out", str(out)])
    said = capsys.readouterr().out
    assert "3-gram token LM on 3 sentences" in said and "1 of 4 sentences left out: the tokenizer cannot spell '京', '東'" in said
    arpa = out.read_text()
    assert "\tH E L L O\t" not in arpa and "\tC A T\n" in arpa.replace("\u2581 ", "")  # upper case, as the transcripts
    gz = tmp_path / "my.txt.gz"
    gz.write_bytes(gzip.compress(text.read_bytes()))
    main(["lm", "--tokenizer", str(char_tokenizer), "--text", str(gz), "--order", "3", "--out", str(tmp_path / "gz.arpa")])
    assert (tmp_path / "gz.arpa").read_text() == arpa
    main(["lm", "--unit", "word", "--text", str(text), "--order", "2", "--out", str(tmp_path / "words.arpa")])
    words = (tmp_path / "words.arpa").read_text()
    assert "\tHELLO\t" in words and "\tTHE CAT\n" in words and "Hello," not in words and "\tTHE\t" in words
    capsys.readouterr()
    main(["lm", "--unit", "word", "--tokenizer", str(char_tokenizer), "--text", str(text), "--order", "2",
          "--out", str(tmp_path / "words.arpa")])  # with the model's tokenizer: the words it cannot spell named
    assert "1 of 8 words have characters the tokenizer cannot spell (e.g. '東京')" in capsys.readouterr().out
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("\n  \n...\n")
    for args, msg in [(["--text", str(tmp_path / "latin1.txt")], "latin1.txt: not UTF-8 text"),
                      (["--text", str(tmp_path / "empty.txt")], "the --text files have no line of text"),
                      (["--text", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
                      ([], "give the text to train on")]:
        with pytest.raises(SystemExit, match="^error: .*" + msg):
            main(["lm", "--tokenizer", str(char_tokenizer), *args, "--out", str(tmp_path / "x.arpa")])
    assert not (tmp_path / "x.arpa").exists()


def test_lm_leaves_out_text_its_tokenizer_cannot_spell(char_tokenizer, tmp_path, capsys):
    """Transcripts with characters the tokenizer does not have (lower case under an upper-case
    tokenizer) used to train the LM on <unk>: `asr lm` on lower-case transcripts wrote a model
    of '▁ <unk> ▁ <unk>' without a word. They are left out and counted; none left is an error."""
    from lhotse import CutSet, MonoCut, SupervisionSegment

    from asr.cli import main

    def manifest(name, texts):
        cuts = [MonoCut(f"c{i}", 0.0, 1.0, 0, supervisions=[SupervisionSegment(f"c{i}", f"r{i}", 0.0, 1.0, text=t)])
                for i, t in enumerate(texts)]
        CutSet.from_cuts(cuts).to_file(tmp_path / name)
        return str(tmp_path / name)

    lower = manifest("cuts_lower.jsonl.gz", ["the cat sat", "hello world"])
    mixed = manifest("cuts_mixed.jsonl.gz", ["THE CAT SAT", "hello world", "HELLO WORLD"])
    tok = ["lm", "--tokenizer", str(char_tokenizer), "--order", "2"]
    with pytest.raises(SystemExit, match="no sentence to train the LM on; 2 of 2 sentences left out: the tokenizer cannot spell"):
        main([*tok, "--cuts", lower, "--out", str(tmp_path / "lower.arpa")])
    main([*tok, "--cuts", mixed, "--dev", lower, mixed, "--out", str(tmp_path / "mixed.arpa")])
    said = capsys.readouterr().out
    assert "on 2 sentences" in said and "1 of 3 sentences left out: the tokenizer cannot spell 'd', 'e', 'h'" in said
    assert "3 of 5 dev sentences left out" in said
    assert "<unk> " not in (tmp_path / "mixed.arpa").read_text()  # no n-gram of <unk> but its unigram


def test_lm_cli_names_an_output_it_cannot_write(char_tokenizer, tmp_path):
    """An --out under a file was a FileExistsError traceback after the training."""
    from asr.cli import main

    (tmp_path / "file").write_text("")
    (tmp_path / "t.txt").write_text("THE CAT\n")
    for unit in ("token", "word"):
        with pytest.raises(SystemExit, match="^error: --out .*file/lm.arpa: cannot write the LM"):
            main(["lm", "--tokenizer", str(char_tokenizer), "--unit", unit, "--text", str(tmp_path / "t.txt"),
                  "--out", str(tmp_path / "file" / "lm.arpa")])


def test_arpa_files_of_other_writers(tmp_path):
    """A byte-order mark before \\data\\ was 'n-gram line before any section'; a positive or NaN
    log-probability loaded as a probability above 1 (or none); -inf made a weight of 0 NaN; a
    truncated gzip stream was 'not an ARPA text file'."""
    symbols = ["<blk>", "<unk>", "A", "B"]
    text = ("\\data\\\nngram 1=5\nngram 2=3\n\n\\1-grams:\n-0.5\tA\t-0.2\n-0.6\tB\t-inf\n-0.7\t</s>\n-99\t<s>\t-0.3\n"
            "-inf\t<unk>\n\n\\2-grams:\n-0.25\tA B\n-0.1\t<s> A\n-inf\tB A\n\n\\end\\\n")
    (tmp_path / "lm.arpa").write_text(text)
    (tmp_path / "bom.arpa").write_text(text, encoding="utf-8-sig")
    lm = NgramLM.load_arpa(tmp_path / "lm.arpa", symbols)
    floor = -99 * math.log(10)
    assert lm.log_probs(())[1] == floor and lm.log_probs((3,))[2] == floor  # -inf: the floor
    assert lm.log_probs((3,))[3] == pytest.approx(floor - 0.6 * math.log(10))  # a back-off of -inf: the floor
    np.testing.assert_array_equal(NgramLM.load_arpa(tmp_path / "bom.arpa", symbols).log_probs((3,)), lm.log_probs((3,)))
    for name, body, msg in [("pos.arpa", text.replace("-0.6\tB", "0.6\tB"), "the 1-gram 'B' has the log10-probability 0.6"),
                            ("nan.arpa", text.replace("-0.25\tA B", "nan\tA B"), "the 2-gram 'A B' has the log10-probability nan")]:
        (tmp_path / name).write_text(body)
        with pytest.raises(ValueError, match=msg):
            NgramLM.load_arpa(tmp_path / name, symbols)
    (tmp_path / "zero.arpa").write_text(text.replace("-0.1\t<s> A", "0.000000\t<s> A"))  # p = 1 is a probability
    assert NgramLM.load_arpa(tmp_path / "zero.arpa", symbols).log_probs((lm.bos,))[2] == 0.0
    (tmp_path / "cut.arpa.gz").write_bytes(gzip.compress(text.encode())[:-12])  # the trailer and the last bytes
    with pytest.raises(ValueError, match="cut.arpa.gz: the gzip stream ends early: the file is truncated"):
        NgramLM.load_arpa(tmp_path / "cut.arpa.gz", symbols)


def test_lm_fusion_refuses_a_negative_weight():
    """A negative LM weight decoded (93.7% WER on 20 mini test-seen cuts at -0.5, 48.2% without
    the LM): it rewards what the LM finds improbable. 0 is no LM; the bonus may be negative."""
    from asr.decoding.lm import LMFusion

    lm = NgramLM.train([[1, 2], [2, 1]], 2, vocab_size=3)
    with pytest.raises(ValueError, match="the LM weight must be >= 0"):
        LMFusion(lm, -0.5, 0.0)
    assert LMFusion(lm, 0.0, -1.0).kwargs() == {"lm": lm, "lm_weight": 0.0, "token_bonus": -1.0}
