"""A word n-gram LM and a lexicon, seen by beam search as a token LM.

Beam search fuses LMs token by token (:mod:`asr.decoding.lm`). :class:`LexiconLM` gives a
word-level n-gram the same interface, so both CTC prefix search and transducer/TDT modified beam
search take it as ``lm=`` unchanged (like the lexicon decoders of flashlight/torchaudio, or a
k2 HLG graph, without a WFST):

- the lexicon is the word LM's vocabulary, each word spelled by the model's tokenizer: a
  word-start piece (``▁`` for characters, ``▁HE`` for BPE) and then pieces that do not start
  a word. The spellings form a prefix tree;
- a token that leaves the tree, or a word-start token (or ``</s>``) after a partial word that
  is not a word, scores ``OFF_LEXICON`` (a large finite penalty, not -inf: a beam never runs
  empty, and ``lm_weight = 0`` switches everything off);
- the word LM's probability is spread over the word's tokens with LM look-ahead: extending the
  partial word ``p`` by token ``v`` scores ``ln M(p v | h) - ln M(p | h)``, where ``M(p | h)`` is
  the summed probability of the lexicon words that start with ``p`` after history ``h``. The
  word-start token after a complete word ``w`` scores ``ln P(w | h) - ln M(w | h)`` (w, not a
  longer word) plus the next word's first step. Over a word the terms telescope to exactly
  ``ln P(w | h)``, and pruning sees the LM from the word's first token on.

Words in trie order occupy a contiguous range under every tree node, so ``M(p | h)`` is a
difference of two entries of the cumulative sum of ``P(. | h)`` (computed once per history).

The token context the searches carry (``order - 1`` tokens) is long enough for the word
history: ``word order x longest spelling``. A context that starts inside a word (older tokens
fell off) drops that fragment; the history is then shorter, as the n-gram backs off anyway.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .lm import NgramLM, TokenLM, cache_entries

log = logging.getLogger(__name__)

__all__ = ["OFF_LEXICON", "LexiconLM", "load_lm", "train_word_lm"]

OFF_LEXICON = -1.0e4  # ln-score of a token sequence that leaves the lexicon
UNK = "<unk>"  # word id 0 of a word LM (NgramLM reserves id 0; no lexicon entry)


def train_word_lm(texts: Sequence[str], order: int) -> tuple[NgramLM, list[str]]:
    """Kneser-Ney word n-gram on whitespace-split transcripts: (lm, symbols) with ``symbols[0]``
    ``<unk>`` and the words (sorted) as ids 1..W, as ``NgramLM.save_arpa`` takes them."""
    words = sorted({w for t in texts for w in t.split()})
    if not words:
        raise ValueError("no words in the transcripts to train a word LM on")
    symbols = [UNK] + words
    ids = {w: i for i, w in enumerate(symbols)}
    seqs = [[ids[w] for w in t.split()] for t in texts if t.split()]
    return NgramLM.train(seqs, order, len(symbols)), symbols


def arpa_words(path) -> list[str]:
    """The ARPA file's unigram words, ``<unk>`` first (added when absent), without ``<s>`` and
    ``</s>``: the symbol list to load it with (``NgramLM.load_arpa(path, arpa_words(path))``)."""
    from pathlib import Path

    from .lm import arpa_lines

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LM file {path} does not exist")
    words, inside = [], False
    for line in arpa_lines(path):
        line = line.strip()
        if line.startswith("\\"):
            if inside:
                break
            inside = line == "\\1-grams:"
            continue
        if inside and line:
            parts = line.split()
            if len(parts) >= 2 and parts[1] not in ("<s>", "</s>", UNK):
                words.append(parts[1])
    if not words:
        raise ValueError(f"{path} has no unigram words (not an ARPA word LM?)")
    pieces = [w for w in words if "\u2581" in w]  # sentencepiece's word-start mark: no word has it
    if pieces:
        raise ValueError(f"{path} is a token LM, not a word LM: {len(pieces)} of its words are tokenizer pieces "
                         f"(e.g. {pieces[0]!r}); decode it with --lm-unit token, or train a word LM with `asr lm --unit word`")
    return [UNK] + words


def load_lm(path, unit: str, pieces: Sequence[str], encode_batch=None, progress: bool = False) -> TokenLM:
    """The LM of ``asr decode/transcribe/stream/serve --lm PATH --lm-unit UNIT`` for a model whose
    tokens are ``pieces`` (id -> piece, blank first): a token ``NgramLM`` over those pieces, or
    (``unit="word"``) a :class:`LexiconLM` whose words ``encode_batch`` (a list of texts -> their
    token ids: the model's sentencepiece tokenizer) spells. Torch-free: the ONNX runtime loads
    its LMs here too. Errors: ``FileNotFoundError``/``ValueError`` naming the file."""
    if unit == "token":
        return NgramLM.load_arpa(path, list(pieces), progress=progress)
    if unit != "word":
        raise ValueError(f"lm_unit must be 'token' or 'word', got {unit!r}")
    if encode_batch is None:
        raise ValueError("a word LM needs the model's tokenizer to spell its words")
    symbols = arpa_words(path)
    spelled = dict(zip(symbols, encode_batch(symbols)))  # at once: one by one took 15 s for 164k words
    return LexiconLM(NgramLM.load_arpa(path, symbols, progress=progress), symbols, spelled.__getitem__, len(pieces),
                     [p.startswith("\u2581") for p in pieces])


class _Node:
    __slots__ = ("children", "hi", "lo", "word")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.lo = self.hi = 0  # the range of words (in trie order) under this node
        self.word = -1  # the word id (LM id) spelled exactly by this node, or -1


class LexiconLM(TokenLM):
    """A word n-gram LM (``NgramLM`` over word ids, ``symbols[i]`` naming id ``i``) restricted to
    its vocabulary spelled by a tokenizer, as a token LM for ``lm=`` of the beam searches.

    Args:
        word_lm: the word n-gram (id 0 is ``<unk>`` and is not in the lexicon).
        symbols: the word of every LM id.
        spell: text -> token ids (the model's tokenizer, ``lambda w: tok.encode_batch([w])[0]``).
        vocab_size: the model's token vocabulary V (blank is id 0); the LM's ``bos``/``eos`` are
            V and V + 1, as for a token ``NgramLM``.
        word_start: (V,) bool, the tokens that begin a word.
    """

    def __init__(self, word_lm: NgramLM, symbols: Sequence[str], spell, vocab_size: int, word_start: Sequence[bool]):
        if len(symbols) != word_lm.vocab_size:
            raise ValueError(f"{len(symbols)} symbols for a word LM of {word_lm.vocab_size} ids")
        self.word_lm = word_lm
        self.symbols = list(symbols)
        self.vocab_size = vocab_size
        self.bos, self.eos = vocab_size, vocab_size + 1
        self.word_start = np.asarray(word_start, dtype=bool)
        if self.word_start.shape != (vocab_size,):
            raise ValueError(f"word_start must have {vocab_size} entries, got {self.word_start.shape}")
        spellings: list[tuple[tuple[int, ...], int]] = []
        bad: list[str] = []
        for wid, w in enumerate(self.symbols):
            if wid == 0 or w in ("<s>", "</s>"):
                continue
            sp = tuple(int(t) for t in spell(w))
            # ids 0 and 1 are the blank and <unk>: a character the tokenizer does not know (a
            # lower-case word under an upper-case tokenizer) cannot be output, only <unk>
            if not sp or min(sp) <= 1 or max(sp) >= vocab_size or not self.word_start[sp[0]] \
                    or any(self.word_start[t] for t in sp[1:]):
                bad.append(f"{w!r} -> {list(sp)}")
                continue
            spellings.append((sp, wid))
        if not spellings:
            raise ValueError("no word of the LM is spelled as one word-start token followed by tokens inside a word "
                             f"and without <unk> (e.g. {', '.join(bad[:3])}): is this the model's tokenizer, and "
                             "are the LM's words written as its transcripts are (case, characters)?")
        if bad:
            log.warning("%d of %d LM words left out of the lexicon (their spelling is not one word, or has <unk>), e.g. %s",
                        len(bad), len(bad) + len(spellings), ", ".join(bad[:3]))
        spellings.sort()
        kept: list[tuple[tuple[int, ...], int]] = []
        alike: list[str] = []
        for sp, wid in spellings:  # words the tokenizer spells alike (its normalization): the first stays
            if kept and kept[-1][0] == sp:
                alike.append(f"{self.symbols[wid]!r} as {self.symbols[kept[-1][1]]!r}")
                continue
            kept.append((sp, wid))
        if alike:
            log.warning("%d LM words have the same spelling as another: only the first is in the lexicon (e.g. %s)",
                        len(alike), ", ".join(alike[:3]))
        spellings = kept
        self.root = _Node()
        self._order_ids = np.array([wid for _, wid in spellings])  # trie position -> word id
        for pos, (sp, wid) in enumerate(spellings):
            node = self.root
            node.hi = pos + 1
            for t in sp:
                node = node.children.setdefault(t, _Node())
                if not node.hi:
                    node.lo = pos
                node.hi = pos + 1
            node.word = wid
        kids = list(self.root.children.items())
        self._starts = tuple(np.array(a) for a in zip(*[(t, n.lo, n.hi) for t, n in kids]))  # (tokens, lo, hi)
        self.longest = max(len(sp) for sp, _ in spellings)
        self.order = word_lm.order * self.longest + 1
        self._mass_cache: dict[tuple, tuple[np.ndarray, float, np.ndarray]] = {}
        self._mass_max = cache_entries(len(self._order_ids), 0.5)
        self._node_max = cache_entries(self.num_ids, 0.5)
        self._node_cache: dict[tuple, np.ndarray] = {}
        self._ctx_cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ the token LM interface
    def log_probs(self, context: Sequence[int]) -> np.ndarray:
        """ln-scores (``num_ids``,) of every token (and ``</s>``) after the token ``context``."""
        ctx = tuple(context)[-(self.order - 1):]
        hit = self._ctx_cache.get(ctx)
        if hit is None:
            history, node = self._parse(ctx)
            key = (history, id(node) if node is not None else None)
            hit = self._node_cache.get(key)
            if hit is None:
                hit = self._scores(history, node)
                if len(self._node_cache) >= self._node_max:
                    self._node_cache.clear()
                self._node_cache[key] = hit
            if len(self._ctx_cache) >= 4 * self._node_max:  # (references to the node cache's vectors)
                self._ctx_cache.clear()
            self._ctx_cache[ctx] = hit
        return hit

    def words(self, tokens: Sequence[int]) -> list[str]:
        """The words spelled by ``tokens``, ``<unk>`` for each that is not in the lexicon (a
        helper for tests and debugging)."""
        out, node, started = [], None, False
        for t in list(tokens) + [int(np.flatnonzero(self.word_start)[0])]:
            if self.word_start[t]:
                if started:
                    out.append(self.symbols[node.word] if node is not None and node.word >= 0 else UNK)
                node = self.root.children.get(t)
            else:
                node = node.children.get(t) if node is not None else None
            started = True
        return out

    # ------------------------------------------------------------------ internals
    def _parse(self, ctx: tuple[int, ...]) -> tuple[tuple[int, ...], _Node | None]:
        """(word history: the last order-1 word ids, <s> first when known; the partial word's
        node: root right after <s>, None off the lexicon)."""
        n_hist = self.word_lm.order - 1
        if ctx and ctx[0] == self.bos:
            hist: list[int] = [self.word_lm.bos]
            toks = ctx[ctx.count(self.bos):]  # (the transducer search pads with several)
            node: _Node | None = self.root
        else:  # the window starts inside the history: skip the fragment before a word start
            hist = []
            toks = ctx
            node = None
            while toks and not self.word_start[toks[0]]:
                toks = toks[1:]
        started = node is self.root
        for t in toks:
            if self.word_start[t]:
                if node is not None and node is not self.root:
                    if node.word >= 0:
                        hist.append(node.word)
                    else:
                        hist = []  # an off-lexicon word: its penalty was paid, start afresh
                elif node is None and started:
                    hist = []
                node = self.root.children.get(t)
                started = True
            elif node is not None and node is not self.root:
                node = node.children.get(t)
            else:
                node = None
        if not started:  # no word start inside the window: nothing known
            return (), None
        return tuple(hist[-n_hist:]) if n_hist else (), node

    def _masses(self, history: tuple[int, ...]) -> tuple[np.ndarray, float, np.ndarray]:
        """(cumulative P(word | history) in trie order (W+1,), P(</s> | history), ln P(. | history))."""
        hit = self._mass_cache.get(history)
        if hit is None:
            lp = self.word_lm.log_probs(history)
            p = np.exp(lp[self._order_ids])
            hit = (np.concatenate([[0.0], np.cumsum(p)]), float(np.exp(lp[self.word_lm.eos])), lp)
            if len(self._mass_cache) >= self._mass_max:
                self._mass_cache.clear()
            self._mass_cache[history] = hit
        return hit

    def _scores(self, history: tuple[int, ...], node: _Node | None) -> np.ndarray:
        out = np.full(self.num_ids, OFF_LEXICON)
        if node is None:
            return out
        cum, _, lp = self._masses(history)

        def ln_mass(n: _Node) -> float:
            m = cum[n.hi] - cum[n.lo]
            return math.log(m) if m > 0 else OFF_LEXICON

        if node is self.root:  # sentence start: the first word's first token, or an empty sentence
            end, next_hist = 0.0, history
        else:
            here = ln_mass(node)
            for t, child in node.children.items():
                out[t] = ln_mass(child) - here
            if node.word < 0:
                return out
            end = float(lp[node.word]) - here
            n_hist = self.word_lm.order - 1
            next_hist = (history + (node.word,))[-n_hist:] if n_hist else ()
        cum2, p_eos, _ = self._masses(next_hist)
        toks, lo, hi = self._starts  # every word-start token at once (BPE has hundreds)
        m = cum2[hi] - cum2[lo]
        out[toks] = end + np.where(m > 0, np.log(np.maximum(m, 1e-300)), OFF_LEXICON)
        out[self.eos] = end + (math.log(p_eos) if p_eos > 0 else OFF_LEXICON)
        return out
