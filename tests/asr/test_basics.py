"""Configs, text normalization, tokenizer, WER."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import torch

from asr.config import ConfigError, from_dict, load_yaml
from asr.data.text import is_librispeech_normalizable, normalize_librispeech
from asr.data.tokenizer import Tokenizer
from asr.decoding.ctc import ctc_greedy
from asr.decoding.wer import WER, word_errors


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=list)
    pair: tuple[float, float] = (1.0, 2.0)


def test_config_unknown_and_wrong_types_name_the_key(tmp_path):
    cfg = from_dict(Outer, {"inner": {"lr": 2, "steps": 3}, "sizes": [1, 2], "pair": [0.5, 1]})
    assert cfg.inner.lr == 2.0 and isinstance(cfg.inner.lr, float) and cfg.pair == (0.5, 1.0)
    with pytest.raises(ConfigError, match=r"inner\.lrr"):
        from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"inner\.steps: expected int, got str"):
        from_dict(Outer, {"inner": {"steps": "ten"}})
    with pytest.raises(ConfigError, match=r"sizes\[1\]"):
        from_dict(Outer, {"sizes": [1, "b"]})
    p = tmp_path / "c.yaml"
    p.write_text("name: y\ninner:\n  lr: 0.5\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_yaml(Outer, p)
    p.write_text("name: y\ninner:\n  lr: 0.5\n")
    assert load_yaml(Outer, p, overrides={"inner.steps": 7}).inner == Inner(lr=0.5, steps=7)
    # a mapping given as a value replaces the file's mapping
    assert load_yaml(Outer, p, overrides={"inner": {"steps": 3}}).inner == Inner(lr=1e-3, steps=3)


def test_librispeech_normalization():
    assert normalize_librispeech("Don't stop—me, \"now\"!") == "DON'T STOP ME NOW"
    assert normalize_librispeech("  café   self-made 'quoted' ") == "CAFE SELF MADE QUOTED"
    assert is_librispeech_normalizable("a well-known fact")
    assert not is_librispeech_normalizable("it costs $5")
    assert not is_librispeech_normalizable("...")
    # Kaldi-style markers used to become the words NOISE and <UNK>; other apostrophes split words
    assert normalize_librispeech("[noise] hello <unk> world [laughter]") == "HELLO WORLD"
    assert normalize_librispeech("don\u00b4t won`t it\u2019s wor\u200bd") == "DON'T WON'T IT'S WORD"


def test_tokenizer_blank_zero_roundtrip_and_tokens_txt(tmp_path):
    texts = ["THE CAT SAT ON THE MAT", "A DOG DID NOT", "THEY DON'T KNOW WHY"] * 30
    tok = Tokenizer.train(texts, vocab_size=40, out_dir=tmp_path)
    assert tok.id_to_piece(0) == "<blk>" and tok.blank_id == 0 and tok.id_to_piece(1) == "<unk>"
    for t in texts[:3]:
        ids = tok.encode(t)
        assert 0 not in ids and tok.decode(ids) == t
    lines = (tmp_path / "tokens.txt").read_text().splitlines()
    assert len(lines) == len(tok) and lines[0] == "<blk> 0"
    assert all(line.rsplit(" ", 1)[1] == str(i) for i, line in enumerate(lines))
    assert tok.missing_chars("THE ZOO") == {"Z"}
    again = Tokenizer.from_bytes(tok.to_bytes())
    assert again.encode("THE CAT") == tok.encode("THE CAT")
    with pytest.raises(ValueError, match="<blk>"):
        import io, sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=20, minloglevel=2)
        Tokenizer(buf.getvalue())


def _edit_distance(r, h):
    if not r:
        return len(h)
    if not h:
        return len(r)
    return min(_edit_distance(r[1:], h[1:]) + (r[0] != h[0]), _edit_distance(r[1:], h) + 1, _edit_distance(r, h[1:]) + 1)


def test_wer_matches_brute_force_edit_distance():
    rng = random.Random(0)
    for _ in range(300):
        r = [rng.choice("abcd") for _ in range(rng.randint(0, 6))]
        h = [rng.choice("abcd") for _ in range(rng.randint(0, 6))]
        assert sum(word_errors(r, h)) == _edit_distance(r, h)
    assert word_errors("a b c".split(), "a x c d".split()) == (1, 0, 1)
    assert word_errors("a b c".split(), "a".split()) == (0, 2, 0)
    w = WER()
    w.add("A B C D", "A X C")
    assert (w.subs, w.dels, w.ins, w.words) == (1, 1, 0, 4) and w.wer == 50.0


def test_ctc_greedy_collapses_repeats_and_respects_lengths():
    # frames: a a _ a b b _  (blank=0, a=1, b=2), second utterance only 3 valid frames
    seq = [1, 1, 0, 1, 2, 2, 0]
    lp = torch.full((2, 7, 3), -10.0)
    for t, k in enumerate(seq):
        lp[:, t, k] = 0.0
    hyps = ctc_greedy(lp, torch.tensor([7, 3]))
    assert hyps[0].tokens == [1, 1, 2] and hyps[0].frames == [0, 3, 4]
    assert hyps[1].tokens == [1]


def test_config_base_files_merge_key_by_key(tmp_path):
    (tmp_path / "common.yaml").write_text("name: base\ninner:\n  lr: 0.5\n  steps: 3\nsizes: [1, 2]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.yaml").write_text("base: ../common.yaml\ninner:\n  steps: 9\nsizes: [7]\n")
    cfg = load_yaml(Outer, tmp_path / "sub" / "run.yaml", overrides={"name": "x"})
    assert cfg.inner == Inner(lr=0.5, steps=9) and cfg.sizes == [7] and cfg.name == "x"
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(Outer, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(Outer, tmp_path / "c.yaml")


def test_train_set_options_accumulate():
    """`--set` may be given more than once (recipes add their own after the user's): every
    group counts, later keys win."""
    from asr.cli import _parse_overrides, build_parser

    args = build_parser().parse_args(["train", "--config", "c.yaml", "--set", "exp_dir=a", "max_epochs=2",
                                      "--set", "max_minutes=3", "exp_dir=b"])
    assert _parse_overrides(args.set) == {"exp_dir": "b", "max_epochs": 2, "max_minutes": 3}


def test_python_m_asr_runs_the_cli():
    """``python -m asr`` is the ``asr`` command (for an environment whose scripts are not on PATH)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "asr", "decode", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: asr decode")


def test_cli_logging_follows_sys_stderr_after_it_is_swapped():
    """The ``asr`` command's console log writes to the ``sys.stderr`` of the moment: after a caller
    swaps it and closes the old stream (pytest's capture between tests, a notebook,
    ``redirect_stderr``), a record reaches the new stream instead of "--- Logging error ---"."""
    import contextlib
    import io
    import logging

    from asr.cli import _setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        first, second = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(first):
            _setup_logging(False)
            logging.getLogger("asr").warning("into the first stream")
        first.close()
        with contextlib.redirect_stderr(second):
            logging.getLogger("asr").warning("into the second stream")
        assert "into the second stream" in second.getvalue()
        assert "Logging error" not in second.getvalue()
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
