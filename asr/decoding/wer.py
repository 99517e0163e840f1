"""Word error rate with substitutions, deletions and insertions (Levenshtein alignment)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["word_errors", "WER"]


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
