"""Word error rate with substitutions, deletions and insertions (Levenshtein alignment), and a
paired bootstrap test of two systems decoded on the same utterances."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["word_errors", "WER", "read_results", "paired_bootstrap", "compare_results"]


def word_errors(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of the minimum-edit alignment of hyp to ref.

    Ties prefer substitutions, then deletions, then insertions (as sclite does).
    """
    n, m = len(ref), len(hyp)
    # cost, subs, dels, ins per cell; one row at a time
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            if ref[i - 1] == hyp[j - 1]:
                cur.append(prev[j - 1])
                continue
            c_sub, c_del, c_ins = prev[j - 1], prev[j], cur[j - 1]
            best = min(
                (c_sub[0] + 1, 0, (c_sub[0] + 1, c_sub[1] + 1, c_sub[2], c_sub[3])),
                (c_del[0] + 1, 1, (c_del[0] + 1, c_del[1], c_del[2] + 1, c_del[3])),
                (c_ins[0] + 1, 2, (c_ins[0] + 1, c_ins[1], c_ins[2], c_ins[3] + 1)),
            )
            cur.append(best[2])
        prev = cur
    _, s, d, ins = prev[m]
    return s, d, ins


@dataclass
class WER:
    """Accumulates errors over utterances."""

    words: int = 0
    subs: int = 0
    dels: int = 0
    ins: int = 0
    utts: int = 0
    utts_wrong: int = 0

    def add(self, ref: str, hyp: str) -> tuple[int, int, int]:
        r, h = ref.split(), hyp.split()
        s, d, i = word_errors(r, h)
        self.words += len(r)
        self.subs, self.dels, self.ins = self.subs + s, self.dels + d, self.ins + i
        self.utts += 1
        self.utts_wrong += int(s + d + i > 0)
        return s, d, i

    @property
    def errors(self) -> int:
        return self.subs + self.dels + self.ins

    @property
    def wer(self) -> float:
        """Percent."""
        return 100.0 * self.errors / max(1, self.words)

    def as_dict(self) -> dict:
        return {
            "wer": round(self.wer, 2),
            "words": self.words,
            "sub": self.subs,
            "del": self.dels,
            "ins": self.ins,
            "utts": self.utts,
            "sentence_error_rate": round(100.0 * self.utts_wrong / max(1, self.utts), 2),
        }

    def __str__(self) -> str:
        return (
            f"WER {self.wer:.2f}% [{self.errors} / {self.words}, "
            f"{self.subs} sub, {self.dels} del, {self.ins} ins]"
        )


def read_results(path) -> dict[str, tuple[str, str]]:
    """cut id -> (reference, hypothesis) of a ``results_<split>.txt`` written by ``asr decode``
    (``<id>\\tREF: ...`` and ``<id>\\tHYP: ...`` lines); words are re-joined by single spaces."""
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            cid, tab, rest = line.rstrip("\n").partition("\t")
            if not line.strip():
                continue
            if not tab or rest[:4] not in ("REF:", "HYP:"):
                raise ValueError(f"{path}:{n}: not a results line (<id> TAB REF: or HYP: text): {line[:80]!r}")
            (refs if rest.startswith("REF:") else hyps)[cid] = " ".join(rest[4:].split())
    if refs.keys() != hyps.keys():
        odd = sorted(refs.keys() ^ hyps.keys())
        raise ValueError(f"{path}: {len(odd)} cut(s) with a REF line but no HYP line or the reverse, e.g. {odd[0]}")
    return {cid: (refs[cid], hyps[cid]) for cid in refs}


def paired_bootstrap(errors_a, errors_b, words, samples: int = 10000, seed: int = 0) -> dict:
    """Is system B's WER different from system A's on the same utterances? Bootstrap over
    utterances (Bisani and Ney, ICASSP 2004): resample the test set's utterances with
    replacement ``samples`` times and recompute both WERs on each resample.

    ``errors_a``, ``errors_b``: word errors per utterance; ``words``: reference words per
    utterance. Returns both WERs and their difference ``b - a`` in percent, its 95% interval
    over the resamples, and ``p_b_better`` / ``p_b_worse``, the share of resamples on which B
    makes fewer / more errors than A, a tie counting half (the probability of improvement). An interval that
    excludes 0 says the difference holds beyond which utterances happened to be tested; it
    says nothing of training-run variance (retrain with another seed for that).
    """
    import numpy as np

    ea, eb, n = (np.asarray(x, dtype=np.int64) for x in (errors_a, errors_b, words))
    if not (ea.shape == eb.shape == n.shape) or ea.ndim != 1 or len(ea) == 0:
        raise ValueError(f"paired_bootstrap needs three equal-length non-empty 1-D arrays, got {ea.shape}, {eb.shape}, {n.shape}")
    if n.sum() == 0:
        raise ValueError("paired_bootstrap: the references have no words")
    rng = np.random.default_rng(seed)
    u = len(n)
    diff = np.empty(samples)
    delta = eb - ea
    for lo in range(0, samples, 1000):  # 1000 resamples at a time: memory ~ 8 kB x utterances
        counts = rng.multinomial(u, np.full(u, 1.0 / u), size=min(1000, samples - lo))
        w = counts @ n
        diff[lo : lo + len(counts)] = 100.0 * (counts @ delta) / np.maximum(w, 1)
    lo95, hi95 = np.percentile(diff, [2.5, 97.5])
    return {
        "wer_a": 100.0 * ea.sum() / n.sum(),
        "wer_b": 100.0 * eb.sum() / n.sum(),
        "diff": 100.0 * delta.sum() / n.sum(),
        "ci95": (float(lo95), float(hi95)),
        # a tie counts half to each side (mid-p): two identical decodes read 0.5, not "B never better"
        "p_b_better": float((diff < 0).mean() + 0.5 * (diff == 0).mean()),
        "p_b_worse": float((diff > 0).mean() + 0.5 * (diff == 0).mean()),
        "utts": u,
        "utts_b_better": int((delta < 0).sum()),
        "utts_b_worse": int((delta > 0).sum()),
        "samples": samples,
    }


def compare_results(path_a, path_b, samples: int = 10000, seed: int = 0) -> dict:
    """``paired_bootstrap`` of two ``results_<split>.txt`` files of the same cuts (A and B
    decoded the same manifest); their references must agree."""
    a, b = read_results(path_a), read_results(path_b)
    if not a or not b:
        raise ValueError(f"{path_a if not a else path_b} holds no results (an `asr decode` results_<split>.txt has "
                         "REF and HYP lines per cut)")
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(f"{path_a} and {path_b} are not decodes of the same cuts: {len(only_a)} only in the first"
                         + (f" (e.g. {only_a[0]})" if only_a else "") + f", {len(only_b)} only in the second"
                         + (f" (e.g. {only_b[0]})" if only_b else ""))
    ids = sorted(a)
    bad = next((c for c in ids if a[c][0] != b[c][0]), None)
    if bad is not None:
        raise ValueError(f"{path_a} and {path_b} disagree on the reference of {bad}: {a[bad][0]!r} vs {b[bad][0]!r}")
    words = [len(a[c][0].split()) for c in ids]
    err_a = [sum(word_errors(a[c][0].split(), a[c][1].split())) for c in ids]
    err_b = [sum(word_errors(b[c][0].split(), b[c][1].split())) for c in ids]
    return paired_bootstrap(err_a, err_b, words, samples=samples, seed=seed)
