"""LibriSpeech-style text normalization.

LibriSpeech transcripts are upper-case words of the letters A-Z and the apostrophe, separated
by single spaces, with no digits and no other punctuation. ``normalize_librispeech`` maps
free text to that form; ``is_librispeech_normalizable`` says whether a sentence can be mapped
without guessing (no digits, symbols or foreign letters that would need verbalization).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable

__all__ = ["normalize_librispeech", "is_librispeech_normalizable", "LIBRISPEECH_CHARS", "suspicious_chars"]

LIBRISPEECH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")

# Characters that separate words when they are dropped (hyphens, slashes, dashes).
_SEPARATORS = re.compile(r"[-\u2010-\u2015/_]+")
# Punctuation removed outright.
_PUNCT = re.compile(r"[.,;:!?\"()\[\]{}\u201c\u201d\u00ab\u00bb`*]+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})
# Non-speech markers of transcribed corpora (Kaldi's [noise], [laughter], <unk>, <sil>): dropped,
# not read as words. Zero-width characters: dropped.
_MARKERS = re.compile(r"\[[^\[\]]*\]|<[^<>]*>")
_ZERO_WIDTH = re.compile("[\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"\s+")


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalize_librispeech(text: str) -> str:
    """Upper-case, accents folded, punctuation dropped, hyphens split, spaces collapsed;
    non-speech markers (``[noise]``, ``<unk>``) and zero-width characters dropped.

    Apostrophes inside words are kept (``DON'T``); quote marks at word edges are removed.
    Characters outside ``LIBRISPEECH_CHARS`` that survive (digits, ``&``, ``%`` ...) are kept
    as they are, so the caller can see them; use ``is_librispeech_normalizable`` to filter.
    """
    text = _strip_accents(_ZERO_WIDTH.sub("", text).translate(_QUOTES))
    text = _MARKERS.sub(" ", text)
    text = _SEPARATORS.sub(" ", text)
    text = _PUNCT.sub(" ", text)
    words = []
    for word in _SPACES.split(text.upper()):
        word = word.strip("'")
        if word:
            words.append(word)
    return " ".join(words)


def is_librispeech_normalizable(text: str) -> bool:
    """True when ``normalize_librispeech(text)`` uses only LibriSpeech characters."""
    norm = normalize_librispeech(text)
    return bool(norm) and set(norm) <= LIBRISPEECH_CHARS


def suspicious_chars(texts: Iterable[str], rare: int = 3) -> dict[str, int]:
    """Characters of ``texts`` that a tokenizer trained on them would most likely not want as
    pieces of their own, with their counts: anything that is not a letter, an apostrophe or a
    space (digits and symbols, which need to be spelt out as words), and letters seen fewer
    than ``rare`` times (a foreign name's accent, a stray letter of another script). A
    language's own letters, frequent in its text, are not listed."""
    counts = Counter(ch for t in texts for ch in t)
    return {ch: n for ch, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if ch not in " '" and (not unicodedata.category(ch).startswith("L") or n < rare)}
