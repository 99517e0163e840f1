"""The paired bootstrap test of two decodes (``asr compare``, ``asr.decoding.wer``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asr.cli import main
from asr.decoding.wer import compare_results, paired_bootstrap, read_results


def _reference_bootstrap(ea, eb, n, samples, seed):
    """Resampling by explicit utterance indices, one resample at a time."""
    rng = np.random.default_rng(seed)
    ea, eb, n = map(np.asarray, (ea, eb, n))
    d = []
    for _ in range(samples):
        i = rng.integers(0, len(n), len(n))
        d.append(100.0 * (eb[i].sum() - ea[i].sum()) / n[i].sum())
    return np.percentile(d, [2.5, 97.5]), float((np.asarray(d) < 0).mean())


def test_identical_systems_differ_by_nothing():
    r = paired_bootstrap([3, 0, 2, 5], [3, 0, 2, 5], [10, 4, 8, 12], samples=500)
    assert r["diff"] == 0 and r["ci95"] == (0.0, 0.0)
    assert r["p_b_better"] == r["p_b_worse"] == 0.5 and r["utts_b_better"] == r["utts_b_worse"] == 0  # ties count half
    assert r["wer_a"] == r["wer_b"] == pytest.approx(100 * 10 / 34)


def test_a_system_better_on_every_utterance_is_better_on_every_resample():
    r = paired_bootstrap([3, 1, 2, 5, 4], [1, 0, 1, 2, 3], [10, 4, 8, 12, 9], samples=2000)
    assert r["ci95"][1] < 0 and r["p_b_better"] == 1.0 and r["utts_b_better"] == 5
    assert r["diff"] == pytest.approx(100 * (7 - 15) / 43)


def test_interval_matches_resampling_by_indices():
    rng = np.random.default_rng(1)
    n = rng.integers(5, 40, 150)
    ea = rng.binomial(n, 0.25)
    eb = rng.binomial(n, 0.22)
    r = paired_bootstrap(ea, eb, n, samples=20000, seed=3)
    (lo, hi), p = _reference_bootstrap(ea, eb, n, 20000, seed=4)
    assert r["ci95"][0] == pytest.approx(lo, abs=0.25) and r["ci95"][1] == pytest.approx(hi, abs=0.25)
    assert r["p_b_better"] == pytest.approx(p, abs=0.02)
    assert r["ci95"][0] < r["diff"] < r["ci95"][1]
    assert paired_bootstrap(ea, eb, n, samples=3000, seed=3) == paired_bootstrap(ea, eb, n, samples=3000, seed=3)


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1, 2], [1], [3, 4])
    with pytest.raises(ValueError, match="no words"):
        paired_bootstrap([0], [0], [0])


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{c}\tREF: {r}\n{c}\tHYP: {h}\n" for c, r, h in rows))


ROWS = [("u1", "A B C D", "A B C D"), ("u2", "E F G", "E X G"), ("u3", "H I J K L", "H J K L"), ("u4", "M N", "M N O")]


def test_compare_two_decode_dirs(tmp_path, capsys):
    better = [(c, r, r) for c, r, _ in ROWS]  # B gets every word right
    _write(tmp_path / "a" / "results_test.txt", ROWS)
    _write(tmp_path / "b" / "results_test.txt", better)
    _write(tmp_path / "a" / "results_dev.txt", ROWS)  # decoded by A only: not compared
    main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--samples", "500", "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert "test" in out and "dev " not in out and "-21.43" in out  # 3 errors in 14 words -> 0
    rep = json.loads((tmp_path / "c.json").read_text())
    # B is never worse; a resample of u1 alone (no errors in A either) is a tie
    assert list(rep["splits"]) == ["test"] and rep["splits"]["test"]["p_b_worse"] < 0.01  # ties only (counted half)
    assert 0.98 < rep["splits"]["test"]["p_b_better"] < 1.0
    assert rep["splits"]["test"]["utts_b_better"] == 3 and rep["splits"]["test"]["utts_b_worse"] == 0
    # two files work too; the result is the same
    r = compare_results(tmp_path / "a" / "results_test.txt", tmp_path / "b" / "results_test.txt", samples=500)
    assert r == rep["splits"]["test"] | {"ci95": tuple(rep["splits"]["test"]["ci95"])}


def test_compare_refuses_mismatched_decodes(tmp_path):
    _write(tmp_path / "a" / "results_test.txt", ROWS)
    _write(tmp_path / "b" / "results_test.txt", ROWS[:3])
    with pytest.raises(SystemExit, match="not decodes of the same cuts: 1 only in the first .e.g. u4."):
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    _write(tmp_path / "c" / "results_test.txt", [("u1", "A B C", "A B C")] + ROWS[1:])
    with pytest.raises(SystemExit, match="disagree on the reference of u1"):
        main(["compare", str(tmp_path / "a"), str(tmp_path / "c")])
    _write(tmp_path / "d" / "results_other.txt", ROWS)
    with pytest.raises(SystemExit, match="share no split"):
        main(["compare", str(tmp_path / "a"), str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="--splits dev: not decoded in both"):
        main(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--splits", "dev"])
    (tmp_path / "e").mkdir()
    with pytest.raises(SystemExit, match="no results_<split>.txt"):
        main(["compare", str(tmp_path / "a"), str(tmp_path / "e")])
    bad = tmp_path / "f" / "results_test.txt"
    bad.parent.mkdir()
    bad.write_text("u1 REF: A B\n")
    with pytest.raises(ValueError, match="results_test.txt:1: not a results line"):
        read_results(bad)
    bad.write_text("u1\tREF: A B\n")
    with pytest.raises(ValueError, match="REF line but no HYP line"):
        read_results(bad)
