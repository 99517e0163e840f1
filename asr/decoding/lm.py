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

Scale: the n-grams live in sorted numpy tables (24 bytes each) and training counts them by
sorting, so a LibriSpeech-sized text trains in memory. Measured on this project's 2-core VM
with 25M tokens of a 500-id Markov chain (26M distinct n-grams, more than real text of that
size has), order 4: training 34 s at a peak of 5.2 GB, ``save_arpa`` (gzip) 82 s, ``load_arpa``
48 s; the dict-of-tuples counting it replaced took 10 s and 1.1 GB for 500k of those tokens.
"""

from __future__ import annotations

import gzip
import math
from array import array
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

    Ids ``vocab_size`` and ``vocab_size + 1`` are ``<s>`` and ``</s>``. The n-grams live in
    numpy tables, one per order, as in a sorted trie: the n-gram ``g`` of order n > 1 has the
    code ``index of g[:-1] in the table of order n-1 * R + g[-1]`` (``R = vocab_size + 2``;
    order 1: the id itself), ``keys[n]`` holds the codes sorted, and ``logp[n]`` and
    ``bow[n]`` hold each n-gram's natural-log probability and its natural-log back-off weight
    as the context of order n+1 (NaN: none given). An n-gram kept only as the prefix of a
    longer one has a NaN probability. So a context's children are one contiguous slice of the
    next table, and a model of millions of n-grams costs 24 bytes per n-gram (Python dicts of
    tuples cost about 20 times that).
    """

    def __init__(self, order: int, vocab_size: int, keys: list[np.ndarray], logp: list[np.ndarray], bow: list[np.ndarray]):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order = order
        self.vocab_size = vocab_size
        self.bos = vocab_size
        self.eos = vocab_size + 1
        self.keys, self.logp, self.bow = keys, logp, bow  # index n = 1..order
        R = self.num_ids
        if not np.isfinite(logp[1][keys[1] != self.bos]).any():
            raise ValueError("the LM has no unigrams")
        # the unigram distribution; ids without a unigram (blank, unseen pieces) get a floor
        uni = np.full(R, -99.0 * _LN10)
        ok = np.isfinite(logp[1])
        uni[keys[1][ok]] = logp[1][ok]
        uni[self.bos] = -99.0 * _LN10
        self._unigram = uni
        self._cache: dict[tuple, np.ndarray] = {}
        self._cache_max = cache_entries(R)
        self._rows: dict[tuple, int] = {}
        self._gaps = [False] + [bool(np.isnan(lp).any()) for lp in logp[1:]]

    def _listed(self, n: int) -> np.ndarray:
        """The rows of order n that ARPA lists: those with a probability, and ``<s>``."""
        ok = np.isfinite(self.logp[n])
        if n == 1:
            ok |= self.keys[1] == self.bos
        return np.flatnonzero(ok)

    def num_ngrams(self) -> list[int]:
        """How many n-grams of each order (1..order) the model lists in ARPA."""
        return [len(self._listed(n)) for n in range(1, self.order + 1)]

    # ------------------------------------------------------------------ queries
    def _index(self, gram: tuple) -> int:
        """The row of ``gram`` in the table of its order, or -1 (remembered, as contexts recur)."""
        j = self._rows.get(gram)
        if j is not None:
            return j
        n = len(gram)
        if n == 1:
            code = gram[0]
        else:
            j = self._index(gram[:-1])
            code = j * self.num_ids + gram[-1] if j >= 0 else -1
        keys = self.keys[n]
        j = int(keys.searchsorted(code)) if code >= 0 else -1
        if j == len(keys) or (j >= 0 and int(keys[j]) != code):
            j = -1
        if len(self._rows) >= self._cache_max:
            self._rows.clear()
        self._rows[gram] = j
        return j

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
            out = self.log_probs(ctx[1:]).copy()
            n = len(ctx)
            j = self._index(ctx)
            if j >= 0:
                b = self.bow[n][j]
                if b == b:  # not NaN
                    out += b
                R = self.num_ids
                keys = self.keys[n + 1]
                lo, hi = keys.searchsorted((j * R, (j + 1) * R))
                if hi > lo:
                    lp = self.logp[n + 1][lo:hi]
                    if self._gaps[n + 1]:  # rows kept only as prefixes have no probability
                        ok = np.isfinite(lp)
                        out[keys[lo:hi][ok] - j * R] = lp[ok]
                    else:
                        out[keys[lo:hi] - j * R] = lp
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
        """Per-token perplexity (``</s>`` counted as a token), every position at once."""
        tok, pos = _flatten(sequences, self.vocab_size, check=False)
        if not len(tok):
            raise ValueError("perplexity of no sequences")
        R, N = self.num_ids, self.order
        target = pos > 0
        # per order n: the row of the n-gram ending at each position (-1: not in the table), and
        # of its context, the (n-1)-gram ending one position earlier (-1 also where the
        # sentence so far is shorter than n-1 ids)
        rows = [None, _find(self.keys[1], tok)]
        ctx = [None, None]
        for n in range(2, N + 1):
            prev = np.full(len(tok), -1, np.int64)
            prev[1:] = rows[n - 1][:-1]
            prev[pos < n - 1] = -1
            ctx.append(prev)
            rows.append(np.where(prev >= 0, _find(self.keys[n], prev * R + tok), -1))
        # back-off: the longest n-gram ending here with a probability, plus the back-off weights
        # of the longer contexts that are there
        score = self._unigram[tok].copy()
        done = np.zeros(len(tok), bool)
        bows = np.zeros(len(tok))
        for n in range(N, 1, -1):
            r = rows[n]
            lp = np.full(len(tok), np.nan)
            have = r >= 0
            lp[have] = self.logp[n][r[have]]
            use = ~done & np.isfinite(lp)
            score[use] = lp[use] + bows[use]
            done |= use
            c = ctx[n]
            b = np.zeros(len(tok))
            hc = c >= 0
            b[hc] = np.nan_to_num(self.bow[n - 1][c[hc]], nan=0.0)
            bows[~done] += b[~done]
        score[~done] += bows[~done]
        return math.exp(-float(score[target].sum()) / max(int(target.sum()), 1))

    # ------------------------------------------------------------------ estimation
    @classmethod
    def train(cls, sequences: Iterable[Sequence[int]], order: int, vocab_size: int) -> "NgramLM":
        """Interpolated Kneser-Ney from token-id sequences (ids in ``1..vocab_size-1``; 0 is
        the blank and never a word). Every id but the blank and ``<s>`` keeps some probability:
        the unigrams interpolate with a uniform distribution over them. Counting is sorting
        (``np.unique`` over integer codes, order by order): a LibriSpeech-sized text of tens of
        millions of tokens fits in memory."""
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        tok, pos = _flatten(sequences, vocab_size, check=True)
        if not len(tok):
            raise ValueError("no training sequences for the LM")
        bos, eos, R = vocab_size, vocab_size + 1, vocab_size + 2
        # order 1: every id but the blank, so that unseen ids get their floor and <s> a row
        keys = [np.zeros(0, np.int64), np.arange(1, R, dtype=np.int64)]
        rows = [None, tok - 1]  # the row of the n-gram ending at each position
        raw = [None, np.bincount(tok[pos > 0] - 1, minlength=R - 1)]
        suffix = [None, None]  # row of each n-gram's last n-1 ids in the table below
        first = [None, keys[1]]  # each n-gram's first id
        for n in range(2, order + 1):
            ends = np.flatnonzero(pos >= n - 1)
            codes = rows[n - 1][ends - 1] * R + tok[ends]
            if len(keys[n - 1]) * R >= 2**62:
                raise ValueError(f"too many {n - 1}-grams ({len(keys[n - 1])}) for the LM's int64 codes")
            k, inv, cnt = np.unique(codes, return_inverse=True, return_counts=True)
            keys.append(k)
            raw.append(cnt)
            r = np.full(len(tok), -1, np.int64)
            r[ends] = inv
            rows.append(r)
            s = np.empty(len(k), np.int64)
            s[inv] = rows[n - 1][ends]
            suffix.append(s)
            first.append(first[n - 1][k // R])
        # Kneser-Ney counts: the highest order and sentence-initial n-grams keep raw counts,
        # the others count the distinct ids seen before them
        counts = [None] * (order + 1)
        counts[order] = raw[order]
        for n in range(1, order):
            left = np.bincount(suffix[n + 1], minlength=len(keys[n]))
            counts[n] = np.where(first[n] == bos, raw[n], left)
        words = vocab_size  # ids 1..V-1 and </s>
        logp = [np.zeros(0)] * (order + 1)
        bow = [np.zeros(0)] + [np.full(len(keys[n]), np.nan) for n in range(1, order + 1)]
        p_lower = None
        for n in range(1, order + 1):
            c = counts[n].astype(np.float64)
            n1, n2 = int((counts[n] == 1).sum()), int((counts[n] == 2).sum())
            # kept in [0.05, 0.95]: with few units (characters) no unigram is seen once, n1 = 0,
            # and a zero discount would leave nothing for the ids never seen
            d = min(max(n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5, 0.05), 0.95)
            if n == 1:
                t, k = c.sum(), float((c > 0).sum())
                p = np.maximum(c - d, 0.0) / t + d * k / t / words
            else:
                ctx = keys[n] // R  # row of each n-gram's context in the table below
                t = np.bincount(ctx, weights=c, minlength=len(keys[n - 1]))
                k = np.bincount(ctx, minlength=len(keys[n - 1])).astype(np.float64)
                p = np.maximum(c - d, 0.0) / t[ctx] + d * k[ctx] / t[ctx] * p_lower[suffix[n]]
                has = t > 0  # a context's back-off is stored with it, in the table below
                bow[n - 1][has] = np.log(d * k[has] / t[has])
            logp[n] = np.log(np.maximum(p, 1e-99))
            p_lower = p
        logp[1][keys[1] == bos] = np.nan  # <s> is never predicted (its row holds its back-off)
        return cls(order, vocab_size, keys, logp, bow)

    def _grams(self, n: int, rows: np.ndarray) -> np.ndarray:
        """The ids of the n-grams in ``rows`` of the table of order n, (len(rows), n)."""
        codes = self.keys[n][rows]
        if n == 1:
            return codes[:, None]
        return np.concatenate([self._grams(n - 1, codes // self.num_ids), (codes % self.num_ids)[:, None]], axis=1)

    # ------------------------------------------------------------------ ARPA
    def save_arpa(self, path: str | Path, symbols: Sequence[str], progress: bool = False) -> None:
        """Write ARPA (``.gz`` compresses). ``symbols[i]`` names token id ``i``. ``progress``:
        a progress bar over the n-grams (a LibriSpeech-sized LM takes a minute or two)."""
        if len(symbols) != self.vocab_size:
            raise ValueError(f"{len(symbols)} symbols for a vocabulary of {self.vocab_size}")
        names = list(symbols) + [_BOS, _EOS]
        for s in symbols:
            if not s or any(c.isspace() for c in s):
                raise ValueError(f"symbol {s!r} cannot be an ARPA word (empty or with whitespace)")
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory: give the LM a file name (e.g. {path / 'lm.arpa'})")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            self._write_arpa(tmp, names, gz=path.suffix == ".gz", progress=progress)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(path)

    def _write_arpa(self, tmp: Path, names: list[str], gz: bool, progress: bool) -> None:
        from tqdm import tqdm

        shown = [self._listed(n) for n in range(1, self.order + 1)]
        # gzip level 4: a third of the default level's time for a few percent more bytes
        with (gzip.open(tmp, "wt", encoding="utf-8", compresslevel=4) if gz else open(tmp, "w", encoding="utf-8")) as f, \
                tqdm(total=sum(map(len, shown)), unit=" n-grams", unit_scale=True, desc="writing the LM", disable=not progress,
                     leave=False) as bar:
            f.write("\n\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(shown[n - 1])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                for lo in range(0, len(shown[n - 1]), 1 << 20):  # a million lines at a time
                    rows = shown[n - 1][lo:lo + (1 << 20)]
                    words = self._grams(n, rows)
                    text = [" ".join(names[i] for i in g) for g in words.tolist()]
                    lps = self.logp[n][rows] / _LN10
                    if n == 1:
                        lps[words[:, 0] == self.bos] = -99.0
                    bows = self.bow[n][rows] / _LN10 if n < self.order else None
                    if bows is None:
                        f.writelines(f"{lp:.6f}\t{t}\n" for lp, t in zip(lps.tolist(), text))
                    else:
                        f.writelines(f"{lp:.6f}\t{t}\t{b:.6f}\n" if b == b else f"{lp:.6f}\t{t}\n"
                                     for lp, t, b in zip(lps.tolist(), text, bows.tolist()))
                    bar.update(len(rows))
            f.write("\n\\end\\\n")

    @classmethod
    def load_arpa(cls, path: str | Path, symbols: Sequence[str], progress: bool = False) -> "NgramLM":
        """Read ARPA whose words are ``symbols`` (token id = index), ``<s>`` and ``</s>``.
        A word that is not a symbol is an error that names it (the LM was built for another
        tokenizer), and so is an LM without a unigram for most symbols (built for another
        tokenizer whose units are among these, as characters are among BPE pieces).
        ``progress``: a progress bar over the lines read."""
        from tqdm import tqdm

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LM file {path} does not exist")
        V = len(symbols)
        ids = {s: i for i, s in enumerate(symbols)}
        ids[_BOS], ids[_EOS] = V, V + 1
        R = V + 2
        # per order: the n-grams' ids, flat, and their log10 probabilities and back-offs
        grams: list[array] = [array("q")]
        lps: list[array] = [array("d")]
        bows: list[array] = [array("d")]
        order, n, ended, declared = 0, 0, False, {}
        lines = tqdm(arpa_lines(path), unit=" lines", unit_scale=True, desc=f"reading {path.name}", disable=not progress,
                     leave=False, mininterval=0.5)
        for ln, line in enumerate(lines, 1):
            parts = line.split()
            if n and (len(parts) == n + 1 or len(parts) == n + 2):  # the common case first
                try:
                    grams[n].extend([ids[w] for w in parts[1:n + 1]])
                    lps[n].append(float(parts[0]))
                    bows[n].append(float(parts[n + 1]) if len(parts) == n + 2 else math.nan)
                except KeyError as e:
                    raise ValueError(f"{path}:{ln}: word {e.args[0]!r} is not a token of this model's tokenizer") from None
                except ValueError as e:
                    raise ValueError(f"{path}:{ln}: {e}") from None
                continue
            line = line.strip()
            if not line or line == "\\data\\" or line.startswith("ngram "):
                if line.startswith("ngram "):
                    try:
                        k, count = (int(v) for v in line[6:].split("="))
                    except ValueError:
                        raise ValueError(f"{path}:{ln}: expected 'ngram N=COUNT', got {line!r}") from None
                    declared[k] = count
                    order = max(order, k)
                continue
            if line == "\\end\\":
                ended = True
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                n = int(line[1:].split("-")[0])
                while len(grams) <= n:
                    grams.append(array("q")), lps.append(array("d")), bows.append(array("d"))
                continue
            if n == 0:
                raise ValueError(f"{path}:{ln}: n-gram line before any \\N-grams: section")
            raise ValueError(f"{path}:{ln}: expected {n} words, a log-probability and an optional back-off")
        lines.close()
        if order == 0 or len(grams) <= 1:
            raise ValueError(f"{path} is not an ARPA file (no \\data\\ counts or n-gram sections)")
        if not ended:
            raise ValueError(f"{path}: no \\end\\ line: the file is truncated")
        for k, count in sorted(declared.items()):
            got = len(grams[k]) // k if k < len(grams) else 0
            if got != count:
                raise ValueError(f"{path}: its \\data\\ header declares {count} {k}-grams, the file holds {got}: "
                                 "truncated or edited by hand?")
        order = max(order, len(grams) - 1)
        while len(grams) <= order:
            grams.append(array("q")), lps.append(array("d")), bows.append(array("d"))
        G = [np.frombuffer(grams[k], np.int64).reshape(-1, max(k, 1)) for k in range(order + 1)]
        for k in range(1, order + 1):
            bad = np.flatnonzero(~(np.frombuffer(lps[k], np.float64) <= 1e-4))  # (0 is p = 1; a little over: rounding)
            if len(bad):
                names = list(symbols) + [_BOS, _EOS]
                raise ValueError(f"{path}: the {k}-gram '{' '.join(names[i] for i in G[k][bad[0]])}' has the log10-probability "
                                 f"{lps[k][bad[0]]}, which no probability has ({len(bad)} such {k}-grams)")
        # -inf (or below the floor of -99 that ARPA writers use for "never"): the floor, as a
        # weight of 0 times -inf is NaN, which would scramble the beam's ranking
        floor = -99.0 * _LN10
        P = [np.maximum(np.frombuffer(lps[k], np.float64) * _LN10, floor) for k in range(order + 1)]
        B = [np.maximum(np.frombuffer(bows[k], np.float64) * _LN10, floor) for k in range(order + 1)]
        seen = set(G[1][:, 0].tolist())
        unscored = [symbols[i] for i in range(1, V) if i not in seen]
        if V > 2 and len(unscored) > (V - 1) // 2:
            # every symbol of an LM built by ``NgramLM.train`` has a unigram; one that scores
            # fewer than half of them (a character LM under BPE pieces) would floor every
            # other token and decode to nothing
            raise ValueError(f"{path} gives only {V - 1 - len(unscored)} of this tokenizer's {V - 1} tokens a "
                             f"probability (none for {', '.join(map(repr, unscored[:5]))}, ...): it was built "
                             "for another tokenizer")
        P[1][G[1][:, 0] == V] = np.nan  # <s>: never predicted (the floor); its row keeps its back-off
        while True:  # the tables, bottom up; a prefix the file lacks is added with no probability
            keys, logp, bow = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0)]
            missing = None
            for k in range(1, order + 1):
                if k == 1:
                    codes = G[1][:, 0]
                else:
                    at = _rows_of(G[k][:, :-1], keys, R)
                    if (at < 0).any():
                        missing = k
                        break
                    codes = at * R + G[k][:, -1]
                o = np.argsort(codes, kind="stable")
                keys.append(codes[o])
                logp.append(P[k][o])
                bow.append(B[k][o])
            if missing is None:
                break
            k = missing
            extra = np.unique(G[k][_rows_of(G[k][:, :-1], keys, R) < 0, :-1], axis=0)
            G[k - 1] = np.concatenate([G[k - 1], extra])
            P[k - 1] = np.concatenate([P[k - 1], np.full(len(extra), np.nan)])
            B[k - 1] = np.concatenate([B[k - 1], np.full(len(extra), np.nan)])
        return cls(order, V, keys, logp, bow)


def _find(keys: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The rows of ``codes`` in the sorted ``keys``, -1 where absent."""
    if not len(keys):
        return np.full(len(codes), -1, np.int64)
    at = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
    return np.where(keys[at] == codes, at, -1)


def _rows_of(grams: np.ndarray, keys: list[np.ndarray], R: int) -> np.ndarray:
    """The rows of (m, n) n-grams in the table of order n (built in ``keys[1..n]``), -1 where absent."""
    rows = _find(keys[1], grams[:, 0])
    for k in range(2, grams.shape[1] + 1):
        rows = np.where(rows >= 0, _find(keys[k], rows * R + grams[:, k - 1]), -1)
    return rows


def _flatten(sequences: Iterable[Sequence[int]], vocab_size: int, check: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token-id sequences -> (ids with ``<s>`` and ``</s>`` around each sequence, each id's
    position in its sequence, ``<s>`` at 0). ``check``: ids must be words (1..vocab_size-1)."""
    bos, eos = vocab_size, vocab_size + 1
    flat: list[int] = []
    lens: list[int] = []
    for s in sequences:
        s = s.tolist() if isinstance(s, np.ndarray) else list(s)
        if check and s and (min(s) < 1 or max(s) >= vocab_size):
            bad = next(w for w in s if not 0 < w < vocab_size)
            raise ValueError(f"token id {bad} is not a word id (1..{vocab_size - 1})")
        flat.append(bos)
        flat.extend(s)
        flat.append(eos)
        lens.append(len(s) + 2)
    if not lens:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tok = np.asarray(flat, dtype=np.int64)
    starts = np.cumsum([0] + lens[:-1])
    pos = np.arange(len(tok), dtype=np.int64) - np.repeat(np.asarray(starts, np.int64), lens)
    return tok, pos


def arpa_lines(path: Path):
    """The lines of an ARPA file, gzip-compressed or not (told by its first bytes, not its
    name); a file that is neither UTF-8 text nor gzip of it is a ValueError naming it."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:  # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first line
        with gzip.open(path, "rt", encoding="utf-8-sig") if gz else open(path, encoding="utf-8-sig") as f:
            yield from f
    except EOFError as e:
        raise ValueError(f"{path}: the gzip stream ends early: the file is truncated ({e})") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{path}: not an ARPA text file, plain or gzip ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class LMFusion:
    """An LM and its fusion weights, as the beam searches take them (``**fusion.kwargs()``)."""

    lm: NgramLM
    weight: float = 0.5
    bonus: float = 0.0

    def __post_init__(self) -> None:
        self.check(self.weight, self.bonus)

    @staticmethod
    def check(weight: float, bonus: float) -> None:
        """A ValueError for weights no fusion can use (checked before an LM loads, too)."""
        if not (math.isfinite(weight) and math.isfinite(bonus)):  # NaN or inf wipes every hypothesis out
            raise ValueError(f"the LM weight and token bonus must be finite numbers, got {weight} and {bonus}")
        if weight < 0:  # it would reward what the LM finds improbable (93.7% WER on mini test-seen cuts at -0.5)
            raise ValueError(f"the LM weight must be >= 0 (0: no LM), got {weight}")

    def kwargs(self) -> dict:
        return {"lm": self.lm, "lm_weight": self.weight, "token_bonus": self.bonus}
