"""Token-level n-gram language model for shallow fusion in beam search.

The model's own units (characters or BPE pieces) are the LM's words, as in NeMo's n-gram
fusion for CTC and transducer beam search: no lexicon, so nothing the acoustic model can spell
is out of reach, while a high order (8 for characters) still sees whole words and their
neighbours. ``NgramLM.train`` estimates an interpolated Kneser-Ney model (one absolute discount
per order, ``D = n1 / (n1 + 2 n2)`` kept in [0.05, 0.95]; lower orders count distinct left contexts, except n-grams
that start the sentence); ``save_arpa``/``load_arpa`` read and write the standard ARPA format
(log10 probabilities and back-off weights; the words are the tokenizer's pieces), so a model
trained elsewhere (KenLM's ``lmplz`` on text encoded as pieces) loads too.

Fusion (``asr.decoding.ctc.ctc_prefix_beam_search`` and ``asr.decoding.beam.modified_beam_search``
take ``lm=``): every label a hypothesis emits adds ``lm_weight * ln P_lm(label | last order-1
labels) + token_bonus`` to its score (the bonus offsets the LM's pull towards short outputs);
both also add ``lm_weight * ln P_lm(</s> | ...)`` when they rank the final hypotheses. Tune
both weights on a dev set (``asr decode --lm ... --lm-weight A --token-bonus B``).
:mod:`asr.decoding.lexicon` puts a word n-gram behind the same interface (:class:`TokenLM`).

``log_probs(context)`` returns the natural-log distribution over all ids (``vocab_size`` token ids
and ``eos``), computed once per context and cached.
"""

from __future__ import annotations

import gzip
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["LMFusion", "NgramLM", "TokenLM"]

_LN10 = math.log(10.0)
_BOS, _EOS = "<s>", "</s>"
CACHE_BYTES = 256 * 2**20  # what the cached score vectors of one LM may hold before a reset


def cache_entries(num_ids: int, share: float = 1.0) -> int:
    """How many cached (num_ids,) float64 score vectors fit in ``share`` of CACHE_BYTES."""
    return max(1000, int(CACHE_BYTES * share) // (8 * num_ids))


class TokenLM:
    """What the beam searches use of an LM over token ids ``0..vocab_size-1`` (``bos`` =
    ``vocab_size``, ``eos`` = ``vocab_size + 1``): ``order``, ``context`` and ``log_probs``."""

    order: int
    vocab_size: int
    bos: int
    eos: int

    @property
    def num_ids(self) -> int:
        return self.vocab_size + 2

    def start(self) -> tuple[int, ...]:
        """The context at the start of a sentence."""
        return (self.bos,)

    def context(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """The LM context (last ``order - 1`` ids, ``<s>`` first while they fit) after ``tokens``."""
        k = self.order - 1
        if k == 0:
            return ()
        return tuple(([self.bos] + list(tokens[-k:]))[-k:])

    def log_probs(self, context: Sequence[int]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class NgramLM(TokenLM):
    """Back-off n-gram LM over token ids ``0..vocab_size-1`` plus ``bos``/``eos``.

    ``probs[n]`` maps an n-gram (tuple of ids) to its natural-log probability given its first
    n-1 ids; ``backoffs[n]`` maps an n-gram context to its natural-log back-off weight. Ids
    ``vocab_size`` and ``vocab_size + 1`` are ``<s>`` and ``</s>``.
    """

    def __init__(self, order: int, vocab_size: int, probs: list[dict], backoffs: list[dict]):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order = order
        self.vocab_size = vocab_size
        self.bos = vocab_size
        self.eos = vocab_size + 1
        self.probs = probs  # index n = 1..order
        self.backoffs = backoffs
        if not probs[1]:
            raise ValueError("the LM has no unigrams")
        # per context of each order: the ids it has explicit probabilities for, as arrays
        self._children: list[dict[tuple, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(order + 1)]
        for n in range(2, order + 1):
            groups: dict[tuple, list] = defaultdict(list)
            for g, lp in probs[n].items():
                groups[g[:-1]].append((g[-1], lp))
            self._children[n] = {c: (np.array([w for w, _ in v]), np.array([p for _, p in v])) for c, v in groups.items()}
        # the unigram distribution; ids without a unigram (blank, unseen pieces) get a floor
        uni = np.full(vocab_size + 2, -99.0 * _LN10)
        for (w,), lp in probs[1].items():
            uni[w] = lp
        uni[self.bos] = -99.0 * _LN10
        self._unigram = uni
        self._cache: dict[tuple, np.ndarray] = {}
        self._cache_max = cache_entries(self.num_ids)

    # ------------------------------------------------------------------ queries
    def log_probs(self, context: Sequence[int]) -> np.ndarray:
        """ln P(id | context) for every id (``num_ids``,). ``context``: up to ``order - 1``
        previous ids (older ones are ignored), ``<s>`` first at a sentence start."""
        ctx = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        hit = self._cache.get(ctx)
        if hit is not None:
            return hit
        if not ctx:
            out = self._unigram
        else:
            out = self.log_probs(ctx[1:]) + self.backoffs[len(ctx) + 1].get(ctx, 0.0)
            kids = self._children[len(ctx) + 1].get(ctx)
            if kids is not None:
                out = out.copy()
                out[kids[0]] = kids[1]
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[ctx] = out
        return out

    def score(self, tokens: Sequence[int], eos: bool = True) -> float:
        """ln P of a token sequence (from ``<s>``, with ``</s>`` when ``eos``)."""
        total, seq = 0.0, list(tokens) + ([self.eos] if eos else [])
        for i, w in enumerate(seq):
            total += float(self.log_probs(self.context(seq[:i]))[w])
        return total

    def perplexity(self, sequences: Iterable[Sequence[int]]) -> float:
        """Per-token perplexity (``</s>`` counted as a token)."""
        total, n = 0.0, 0
        for s in sequences:
            total += self.score(s)
            n += len(s) + 1
        return math.exp(-total / max(n, 1))

    # ------------------------------------------------------------------ estimation
    @classmethod
    def train(cls, sequences: Iterable[Sequence[int]], order: int, vocab_size: int) -> "NgramLM":
        """Interpolated Kneser-Ney from token-id sequences (ids in ``1..vocab_size-1``; 0 is
        the blank and never a word). Every id but the blank and ``<s>`` keeps some probability:
        the unigrams interpolate with a uniform distribution over them."""
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        bos, eos = vocab_size, vocab_size + 1
        raw: list[Counter] = [Counter() for _ in range(order + 1)]
        n_seq = 0
        for s in sequences:
            s = list(s)
            bad = next((w for w in s if not 0 < w < vocab_size), None)
            if bad is not None:
                raise ValueError(f"token id {bad} is not a word id (1..{vocab_size - 1})")
            n_seq += 1
            seq = [bos] + s + [eos]
            for i in range(1, len(seq)):
                for n in range(1, order + 1):
                    if i - n + 1 < 0:
                        break
                    raw[n][tuple(seq[i - n + 1:i + 1])] += 1
        if n_seq == 0:
            raise ValueError("no training sequences for the LM")
        # Kneser-Ney counts: the highest order and sentence-initial n-grams keep raw counts,
        # the others count the distinct ids seen before them
        counts: list[Counter] = [Counter() for _ in range(order + 1)]
        counts[order] = raw[order]
        for n in range(1, order):
            left = Counter(g[1:] for g in raw[n + 1])
            counts[n] = Counter({g: (c if g[0] == bos else left[g]) for g, c in raw[n].items()})
        probs: list[dict] = [{} for _ in range(order + 1)]
        backoffs: list[dict] = [{} for _ in range(order + 1)]
        words = vocab_size  # ids 1..V-1 and </s>
        lower = {w: 1.0 / words for w in list(range(1, vocab_size)) + [eos]}  # order 0: uniform

        disc = [0.0] * (order + 1)
        tot: list[dict] = [{} for _ in range(order + 1)]
        types: list[dict] = [{} for _ in range(order + 1)]
        for n in range(1, order + 1):
            cc = Counter(counts[n].values())
            n1, n2 = cc.get(1, 0), cc.get(2, 0)
            # kept in [0.05, 0.95]: with few units (characters) no unigram is seen once, n1 = 0,
            # and a zero discount would leave nothing for the ids never seen
            disc[n] = min(max(n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5, 0.05), 0.95)
            t_n: dict = defaultdict(int)
            k_n: dict = defaultdict(int)
            for g, c in counts[n].items():
                t_n[g[:-1]] += c
                k_n[g[:-1]] += 1
            tot[n], types[n] = t_n, k_n

        memo: list[dict] = [{} for _ in range(order + 1)]

        def _interp(n: int, ctx: tuple, w: int) -> float:
            """The interpolated probability P_n(w | last n-1 ids of ctx) (not log)."""
            if n == 0:
                return lower.get(w, 0.0)
            h = ctx[len(ctx) - (n - 1):] if n > 1 else ()
            key = h + (w,)
            m = memo[n].get(key)
            if m is not None:
                return m
            t = tot[n].get(h, 0)
            if t == 0:
                p = _interp(n - 1, ctx, w)
            else:
                d = disc[n]
                p = max(counts[n].get(key, 0) - d, 0.0) / t + d * types[n][h] / t * _interp(n - 1, ctx, w)
            memo[n][key] = p
            return p

        for n in range(1, order + 1):
            for g in counts[n]:  # (<s>,) is never counted: n-grams end at a word or </s>
                probs[n][g] = math.log(max(_interp(n, g[:-1], g[-1]), 1e-99))
            if n >= 2:  # a context's back-off is stored under its children's order
                for h, t in tot[n].items():
                    backoffs[n][h] = math.log(disc[n] * types[n][h] / t)
        # the uniform floor for ids never seen as unigrams (they are words too)
        t1 = tot[1].get((), 0)
        lam1 = disc[1] * types[1].get((), 0) / t1 if t1 else 1.0
        for w in list(range(1, vocab_size)) + [eos]:
            if (w,) not in probs[1]:
                probs[1][(w,)] = math.log(lam1 / words)
        return cls(order, vocab_size, probs, backoffs)

    # ------------------------------------------------------------------ ARPA
    def save_arpa(self, path: str | Path, symbols: Sequence[str]) -> None:
        """Write ARPA (``.gz`` compresses). ``symbols[i]`` names token id ``i``."""
        if len(symbols) != self.vocab_size:
            raise ValueError(f"{len(symbols)} symbols for a vocabulary of {self.vocab_size}")
        names = list(symbols) + [_BOS, _EOS]
        for s in symbols:
            if not s or any(c.isspace() for c in s):
                raise ValueError(f"symbol {s!r} cannot be an ARPA word (empty or with whitespace)")
        grams: list[dict] = [{} for _ in range(self.order + 1)]
        for n in range(1, self.order + 1):
            grams[n] = dict(self.probs[n])
        grams[1][(self.bos,)] = -99.0 * _LN10
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(grams[n])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                bo = self.backoffs[n + 1] if n < self.order else {}
                for g, lp in grams[n].items():
                    line = f"{lp / _LN10:.6f}\t{' '.join(names[i] for i in g)}"
                    if g in bo:
                        line += f"\t{bo[g] / _LN10:.6f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")
        tmp.replace(path)

    @classmethod
    def load_arpa(cls, path: str | Path, symbols: Sequence[str]) -> "NgramLM":
        """Read ARPA whose words are ``symbols`` (token id = index), ``<s>`` and ``</s>``.
        A word that is not a symbol is an error that names it (the LM was built for another
        tokenizer), and so is an LM without a unigram for most symbols (built for another
        tokenizer whose units are among these, as characters are among BPE pieces)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LM file {path} does not exist")
        V = len(symbols)
        ids = {s: i for i, s in enumerate(symbols)}
        ids[_BOS], ids[_EOS] = V, V + 1
        opener = gzip.open if path.suffix == ".gz" else open
        probs: list[dict] = [{}]
        backoffs: list[dict] = [{}]
        order, n = 0, 0
        with opener(path, "rt", encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                line = line.strip()
                if not line or line == "\\data\\" or line.startswith("ngram "):
                    if line.startswith("ngram "):
                        order = max(order, int(line.split("=")[0].split()[1]))
                    continue
                if line == "\\end\\":
                    break
                if line.startswith("\\") and line.endswith("-grams:"):
                    n = int(line[1:].split("-")[0])
                    while len(probs) <= n:
                        probs.append({})
                        backoffs.append({})
                    continue
                if n == 0:
                    raise ValueError(f"{path}:{ln}: n-gram line before any \\N-grams: section")
                parts = line.split()
                if len(parts) not in (n + 1, n + 2):
                    raise ValueError(f"{path}:{ln}: expected {n} words, a log-probability and an optional back-off")
                try:
                    g = tuple(ids[w] for w in parts[1:n + 1])
                except KeyError as e:
                    raise ValueError(f"{path}:{ln}: word {e.args[0]!r} is not a token of this model's tokenizer") from None
                probs[n][g] = float(parts[0]) * _LN10
                if len(parts) == n + 2:
                    while len(backoffs) <= n + 1:
                        backoffs.append({})
                    backoffs[n + 1][g] = float(parts[n + 1]) * _LN10
        if order == 0 or len(probs) <= 1:
            raise ValueError(f"{path} is not an ARPA file (no \\data\\ counts or n-gram sections)")
        unscored = [symbols[i] for i in range(1, V) if (i,) not in probs[1]]
        if V > 2 and len(unscored) > (V - 1) // 2:
            # every symbol of an LM built by ``NgramLM.train`` has a unigram; one that scores
            # fewer than half of them (a character LM under BPE pieces) would floor every
            # other token and decode to nothing
            raise ValueError(f"{path} gives only {V - 1 - len(unscored)} of this tokenizer's {V - 1} tokens a "
                             f"probability (none for {', '.join(map(repr, unscored[:5]))}, ...): it was built "
                             "for another tokenizer")
        while len(probs) <= order:
            probs.append({})
        while len(backoffs) <= order + 1:
            backoffs.append({})
        probs[1].pop((V,), None)
        return cls(order, V, probs, backoffs[: order + 1])


@dataclass(frozen=True)
class LMFusion:
    """An LM and its fusion weights, as the beam searches take them (``**fusion.kwargs()``)."""

    lm: NgramLM
    weight: float = 0.5
    bonus: float = 0.0

    def kwargs(self) -> dict:
        return {"lm": self.lm, "lm_weight": self.weight, "token_bonus": self.bonus}
