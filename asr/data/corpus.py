"""Mini LibriSpeech: an embedded speech corpus made on this machine by text-to-speech.

Nothing is downloaded. ``build_mini_librispeech(out_dir)`` writes, in a few minutes on 2 cores::

    <out>/LibriSpeech/{train,dev,test-seen,test-unseen}/SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac
    <out>/LibriSpeech/.../SPEAKER-CHAPTER.trans.txt     "SPEAKER-CHAPTER-NNNN UPPER CASE TEXT"
    <out>/LibriSpeech/SPEAKERS.TXT                      engine, voice, rate, pitch, subsets
    <out>/noise/*.flac, <out>/noise/recordings.jsonl.gz white/pink/brown noise and TTS babble
    <out>/corpus.json                                   config, fingerprint, stats (written last)

The layout is exactly LibriSpeech's, so ``lhotse.recipes.prepare_librispeech`` and
``lhotse prepare librispeech`` read it (pass ``dataset_parts=list(SPLITS)``). Audio is 16 kHz,
mono, 16-bit FLAC.

**Text.** The sentences are the example sentences quoted in the glosses of WordNet 3.0 (the
``"..."`` parts after ``|`` in ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv``;
Debian package ``wordnet-base``, about 48k quotes). Quotes that TTS could read differently from
their transcript (digits, abbreviations, acronyms, stray letters or symbols) are dropped; the
rest are normalized with ``normalize_librispeech``, must have 4 to 24 words, and are
deduplicated (about 33k remain). The corpus then keeps only the quotes whose words are all
among the ``vocabulary_size`` (default 4000) most frequent words of those quotes, and prunes,
until nothing changes, quotes with a word used fewer than ``min_word_count`` (3) times in what
is kept: about 6.3k quotes over a 2.5k-word closed vocabulary. Its test sets' out-of-vocabulary
rate against the training text is then well under 1% (19% with all quotes, which would put a
floor under any model's WER that has nothing to do with recognition). One utterance joins 1-3 of them (roughly
2-10 s). WordNet 3.0
is (c) 2006 Princeton University under the WordNet 3.0 license, a permissive BSD-style license
that allows use, copying, modification and distribution for any purpose, with the copyright
notice kept (https://wordnet.princeton.edu/license-and-commercial-use).

**Voices.** espeak-ng with many accents (``en-us``, ``en-gb``, ``en-gb-scotland``, ...) and
voice variants (``m3``, ``f2``, ``klatt``, ``croak``, ...), flite's voices and festival's
``kal_diphone``; every speaker has its own rate and pitch (``asr.data.tts.Voice``), level, and
a faint seeded hiss (-75 to -60 dBFS RMS) under the speech, since TTS pauses are digital zeros.

**Splits.** ``train``, ``dev`` and ``test-seen`` are spoken by the training voices (dev and
test-seen reuse training speaker ids, with new chapters); ``test-unseen`` only by voices never
used in training: festival and flite ``slt`` (engines/voices absent from training) and espeak-ng
speakers with a held-out accent or variant. The shuffled sentence list is cut into disjoint
pools (noise, test-unseen, test-seen, dev, train), so no evaluation sentence is ever trained on,
and the babble noise speaks sentences from none of the splits.

**Determinism and caching.** Every random choice comes from ``numpy`` generators seeded by
``config.seed``; each chapter is synthesized from its own plan, so the number of workers does
not change a byte. ``corpus.json`` records the config and its fingerprint; calling again with
the same config returns at once, a different config rebuilds. Files are written atomically and
every finished chapter is recorded under ``<out>/.build/``, so an interrupted build resumes, and
``corpus.json`` (written last) exists only for a complete corpus. A TTS call that fails is
retried once, then the utterance is skipped and counted (``corpus.json`` and the log).
``checksums.sha256`` lists the SHA-256 of every audio file and transcript as written (check it by
hand with ``sha256sum -c checksums.sha256`` in the corpus directory). Reusing a corpus reads
them all again: a file that is missing or changed (a truncated copy, a disk fault) is
synthesized again with the rest of its chapter, and when that cannot give the same bytes (a
file no chapter writes, another TTS version) the corpus is rebuilt.

The noise manifest is a lhotse ``RecordingSet``; MUSAN's RecordingSet can be used instead.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from asr.config import to_dict
from asr.data import noise as noise_lib
from asr.data import tts
from asr.data.text import is_librispeech_normalizable, normalize_librispeech
from asr.data.tts import SAMPLE_RATE, Voice

__all__ = [
    "SPLITS",
    "MiniCorpusConfig",
    "Sentence",
    "build_mini_librispeech",
    "load_wordnet_sentences",
    "closed_vocabulary",
    "config_fingerprint",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "dev", "test-seen", "test-unseen")
FORMAT_VERSION = 2
GENERATOR = "asr.data.corpus.build_mini_librispeech"
CHECKSUMS = "checksums.sha256"  # `sha256sum -c` format, paths under the corpus directory
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_WORDNET_DEFAULT_DIRS = ("/usr/share/wordnet",)
# Share of the shuffled sentence list given to each pool (the rest is train's).
_POOL_FRACTIONS = (("noise", 0.02), ("test-unseen", 0.08), ("test-seen", 0.08), ("dev", 0.08))
_JOIN_PAUSE_S = 0.05  # estimated extra pause between two joined sentences
_FIRST_SEEN_SPEAKER = 1001
_FIRST_UNSEEN_SPEAKER = 9001
_FIRST_CHAPTER = 10001


# --------------------------------------------------------------------------------------------
# Config


@dataclass
class MiniCorpusConfig:
    """What to build. Load from YAML with ``asr.config.load_yaml(MiniCorpusConfig, path)``.

    Durations are targets: utterances are planned from estimated lengths and the measured
    durations are reported in ``corpus.json`` (they land within a few percent).
    """

    seed: int = 0
    train_hours: float = 2.2
    dev_minutes: float = 12.0
    test_minutes: float = 12.0  # each of test-seen and test-unseen
    num_train_speakers: int = 96
    train_chapters_per_speaker: int = 2
    num_eval_speakers: int = 20  # dev and test-seen speakers (training voices), one chapter each
    num_unseen_speakers: int = 12  # test-unseen speakers, one chapter each
    flite_fraction: float = 0.2  # share of training speakers voiced by flite, the rest espeak-ng
    unseen_festival_fraction: float = 0.2
    unseen_flite_fraction: float = 0.2
    min_utterance_seconds: float = 2.0
    max_utterance_seconds: float = 10.0
    max_sentences_per_utterance: int = 3
    min_words: int = 4
    max_words: int = 24
    vocabulary_size: int = 4000  # keep quotes whose words are all among the N most frequent; 0: all
    min_word_count: int = 3  # ... and whose every word occurs in at least this many kept quotes
    espeak_accents: tuple[str, ...] = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029")
    espeak_variants: tuple[str, ...] = (
        "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2",
        "klatt3", "croak", "Alex", "Andy", "Annie", "Denis", "Gene", "Jacky", "Mario", "Michael",
        "Mike", "Nguyen", "adam", "anika", "announcer", "antonio", "aunty", "belinda", "benjamin",
        "boris", "david", "ed", "edward", "iven", "linda", "max", "paul", "pedro", "quincy", "rob",
        "robert", "steph", "travis", "victor", "grandpa",
    )
    flite_voices: tuple[str, ...] = ("kal", "kal16", "awb", "rms")
    unseen_espeak_accents: tuple[str, ...] = ("en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
    unseen_espeak_variants: tuple[str, ...] = (
        "m8", "f5", "klatt4", "Andrea", "Alicia", "Gene2", "Lee", "edward2", "grandma", "iven2",
        "michel", "steph2", "shelby", "marcelo",
    )
    unseen_flite_voices: tuple[str, ...] = ("slt",)
    unseen_festival_voices: tuple[str, ...] = ("kal_diphone",)
    espeak_rate_range: tuple[float, float] = (140.0, 200.0)  # words per minute
    espeak_pitch_range: tuple[float, float] = (25.0, 75.0)  # espeak-ng 0-99
    stretch_range: tuple[float, float] = (0.85, 1.2)  # flite / festival duration stretch
    pitch_semitones_range: tuple[float, float] = (-3.0, 4.0)  # flite / festival F0 shift
    peak_dbfs_range: tuple[float, float] = (-6.0, -1.0)  # per-speaker level
    noise_floor_dbfs_range: tuple[float, float] = (-75.0, -60.0)  # per-speaker background hiss (RMS)
    noise_seconds: float = 30.0  # length of each noise file
    noise_files_per_colour: int = 2  # white, pink, brown
    babble_files: int = 4
    babble_talkers: int = 6
    wordnet_dir: str = ""  # "" = $WNSEARCHDIR, else /usr/share/wordnet

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"MiniCorpusConfig.{key}: {why}")

        for key in ("train_hours", "dev_minutes", "test_minutes", "min_utterance_seconds",
                    "max_utterance_seconds", "noise_seconds"):
            if not getattr(self, key) > 0:
                raise bad(key, f"must be positive, got {getattr(self, key)!r}")
        for key in ("num_train_speakers", "train_chapters_per_speaker", "num_eval_speakers",
                    "num_unseen_speakers", "max_sentences_per_utterance", "min_words",
                    "max_words"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)!r}")
        for key in ("seed", "noise_files_per_colour", "babble_files", "babble_talkers", "vocabulary_size",
                    "min_word_count"):
            if getattr(self, key) < 0:
                raise bad(key, f"must be >= 0, got {getattr(self, key)!r}")
        if self.num_train_speakers > _FIRST_UNSEEN_SPEAKER - _FIRST_SEEN_SPEAKER:
            raise bad("num_train_speakers", f"at most {_FIRST_UNSEEN_SPEAKER - _FIRST_SEEN_SPEAKER}")
        if self.num_unseen_speakers > 999:
            raise bad("num_unseen_speakers", "at most 999")
        if self.min_utterance_seconds >= self.max_utterance_seconds:
            raise bad("min_utterance_seconds", "must be below max_utterance_seconds")
        if self.min_words > self.max_words:
            raise bad("min_words", "must not exceed max_words")
        for key in ("flite_fraction", "unseen_festival_fraction", "unseen_flite_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, f"must be in [0, 1], got {getattr(self, key)!r}")
        for key in ("espeak_rate_range", "espeak_pitch_range", "stretch_range",
                    "pitch_semitones_range", "peak_dbfs_range", "noise_floor_dbfs_range"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise bad(key, f"low end {lo} is above high end {hi}")
        if not (80 <= self.espeak_rate_range[0] and self.espeak_rate_range[1] <= 450):
            raise bad("espeak_rate_range", "espeak-ng rates are 80-450 words per minute")
        if not (0 <= self.espeak_pitch_range[0] and self.espeak_pitch_range[1] <= 99):
            raise bad("espeak_pitch_range", "espeak-ng pitch is 0-99")
        if not self.stretch_range[0] > 0:
            raise bad("stretch_range", "must be positive")
        if self.peak_dbfs_range[1] > 0:
            raise bad("peak_dbfs_range", "must be <= 0 dBFS")
        if self.noise_floor_dbfs_range[1] > -30:
            raise bad("noise_floor_dbfs_range", "must be <= -30 dBFS (it is a background hiss)")
        for key in ("flite_voices", "unseen_flite_voices"):
            for v in getattr(self, key):
                if v not in tts.FLITE_VOICES:
                    raise bad(key, f"unknown flite voice {v!r}; expected some of {list(tts.FLITE_VOICES)}")
        for seen_key, unseen_key in (("espeak_accents", "unseen_espeak_accents"),
                                     ("espeak_variants", "unseen_espeak_variants"),
                                     ("flite_voices", "unseen_flite_voices")):
            both = sorted(set(getattr(self, seen_key)) & set(getattr(self, unseen_key)))
            if both:
                raise bad(unseen_key, f"{both} also in {seen_key}; unseen voices must be held out")
        if bool(self.espeak_accents) != bool(self.espeak_variants):
            raise bad("espeak_variants", "espeak-ng training voices need both accents and variants")
        if not self.espeak_accents and not self.flite_voices:
            raise bad("espeak_accents", "training needs espeak-ng accents and variants, or flite_voices")
        unseen_engines = self.unseen_engines()
        if not unseen_engines:
            raise bad("unseen_espeak_accents", "test-unseen needs at least one held-out voice")
        if self.num_unseen_speakers < len(unseen_engines):
            raise bad("num_unseen_speakers",
                      f"must be >= {len(unseen_engines)} to cover the unseen engines {unseen_engines}")

    def unseen_engines(self) -> list[str]:
        """Engines of test-unseen, in planning order."""
        out = []
        if self.unseen_festival_voices:
            out.append("festival")
        if self.unseen_flite_voices:
            out.append("flite")
        if self.unseen_espeak_accents or self.unseen_espeak_variants:
            if (self.unseen_espeak_accents and (self.espeak_variants or self.unseen_espeak_variants)) or (
                self.unseen_espeak_variants and (self.espeak_accents or self.unseen_espeak_accents)
            ):
                out.append("espeak-ng")
        return out

    def engines(self) -> set[str]:
        out = set(self.unseen_engines())
        if self.espeak_accents and self.espeak_variants:
            out.add("espeak-ng")
        if self.flite_voices:
            out.add("flite")
        return out


def config_fingerprint(config: MiniCorpusConfig) -> str:
    """sha256 of the config (and the corpus format version): what ``corpus.json`` is keyed on."""
    blob = json.dumps({"format_version": FORMAT_VERSION, "config": to_dict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Text


@dataclass(frozen=True)
class Sentence:
    """One WordNet example: ``raw`` is what TTS reads, ``text`` its LibriSpeech transcript."""

    raw: str
    text: str


_QUOTE = re.compile(r'"([^"]+)"')
# What TTS reads exactly as the transcript says: letters, spaces, hyphens, apostrophes and
# punctuation that only shapes prosody; a full stop only at the end (no abbreviations).
_SAFE_RAW = re.compile(r"^[A-Za-z][A-Za-z ,;:!?'\-]*[.!?]?$")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_STRAY_LETTER = re.compile(r"(?<![A-Za-z'])(?![aAI](?![A-Za-z']))[A-Za-z](?![A-Za-z'])")


def _wordnet_dir(configured: str) -> Path:
    candidates = [configured] if configured else [os.environ.get("WNSEARCHDIR", ""), *_WORDNET_DEFAULT_DIRS]
    for cand in candidates:
        if cand and all((Path(cand) / f).is_file() for f in WORDNET_FILES):
            return Path(cand)
    where = configured or " or ".join(c for c in candidates if c)
    raise FileNotFoundError(
        f"WordNet 3.0 data ({', '.join(WORDNET_FILES)}) not found in {where}; the mini corpus "
        "takes its sentences from it: install it with `apt-get install wordnet-base` "
        "(or set MiniCorpusConfig.wordnet_dir / $WNSEARCHDIR to a WordNet 3.0 dict directory)"
    )


def load_wordnet_sentences(wordnet_dir: str | Path = "", min_words: int = 4, max_words: int = 24) -> list[Sentence]:
    """The usable WordNet 3.0 example sentences, deduplicated and sorted by transcript.

    A quote is kept when TTS will say exactly its transcript: only letters, spaces, hyphens,
    apostrophes and prosodic punctuation, no acronyms or stray single letters, LibriSpeech-
    normalizable, and ``min_words`` to ``max_words`` words.
    """
    return list(_load_wordnet_sentences(_wordnet_dir(str(wordnet_dir)), min_words, max_words))


@functools.lru_cache(maxsize=4)
def _load_wordnet_sentences(root: Path, min_words: int, max_words: int) -> tuple[Sentence, ...]:
    best: dict[str, str] = {}
    for name in WORDNET_FILES:
        with open(root / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # license header lines
                    continue
                for quote in _QUOTE.findall(line.split("|", 1)[1]):
                    raw = " ".join(quote.split())
                    if not _SAFE_RAW.match(raw) or _ACRONYM.search(raw) or _STRAY_LETTER.search(raw):
                        continue
                    if not is_librispeech_normalizable(raw):
                        continue
                    text = normalize_librispeech(raw)
                    if not min_words <= len(text.split()) <= max_words:
                        continue
                    if text not in best or raw < best[text]:
                        best[text] = raw
    if not best:
        raise ValueError(f"no usable example sentences found in WordNet data under {root}")
    return tuple(Sentence(raw=best[t], text=t) for t in sorted(best))


def closed_vocabulary(sentences: list[Sentence], size: int, min_count: int = 1) -> list[Sentence]:
    """The sentences whose words are all among the ``size`` most frequent words of
    ``sentences`` (ties broken alphabetically; 0 keeps all), then, repeatedly until nothing
    changes, those whose every word occurs at least ``min_count`` times in what is kept."""
    if size > 0:
        freq = Counter(w for s in sentences for w in s.text.split())
        vocab = {w for w, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:size]}
        sentences = [s for s in sentences if all(w in vocab for w in s.text.split())]
    while sentences:
        freq = Counter(w for s in sentences for w in s.text.split())
        kept = [s for s in sentences if all(freq[w] >= min_count for w in s.text.split())]
        if len(kept) == len(sentences):
            break
        sentences = kept
    return sentences


class _Pool:
    """Sentences drawn in order, without replacement (``wrap`` reuses them when exhausted)."""

    def __init__(self, name: str, sentences: list[Sentence], wrap: bool = False) -> None:
        self.name, self.sentences, self.wrap, self.pos = name, sentences, wrap, 0

    def _check(self) -> None:
        if self.pos >= len(self.sentences):
            if not self.wrap or not self.sentences:
                raise ValueError(
                    f"the {self.name} split needs more than the {len(self.sentences)} WordNet sentences "
                    f"its pool holds; lower its duration in MiniCorpusConfig"
                )
            self.pos = 0

    def has_next(self) -> bool:
        return self.pos < len(self.sentences) or (self.wrap and bool(self.sentences))

    def peek(self) -> Sentence:
        self._check()
        return self.sentences[self.pos]

    def take(self) -> Sentence:
        s = self.peek()
        self.pos += 1
        return s


def _split_pools(sentences: list[Sentence], seed: int) -> dict[str, list[Sentence]]:
    order = np.random.default_rng([seed, 0]).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    pools: dict[str, list[Sentence]] = {}
    start = 0
    for name, frac in _POOL_FRACTIONS:
        n = int(round(frac * len(shuffled)))
        pools[name] = shuffled[start:start + n]
        start += n
    pools["train"] = shuffled[start:]
    return pools


def _speakable(raw: str) -> str:
    return raw if raw[-1] in ".!?" else raw + "."


# --------------------------------------------------------------------------------------------
# Plan: speakers, chapters, utterances, noise


@dataclass(frozen=True)
class Speaker:
    id: int
    voice: Voice
    peak_dbfs: float  # every utterance is scaled to this peak level
    noise_floor_dbfs: float  # RMS of the white hiss added under the speech (TTS silence is digital zero)


@dataclass(frozen=True)
class Utterance:
    id: str  # SPEAKER-CHAPTER-NNNN
    text: str  # transcript
    tts_text: str  # what the engine reads
    sentences: tuple[str, ...]  # transcripts of the WordNet sentences joined here


@dataclass(frozen=True)
class ChapterJob:
    split: str
    speaker: Speaker
    chapter: int
    utterances: tuple[Utterance, ...]
    seed: int  # the corpus seed, for the hiss

    @property
    def name(self) -> str:
        return f"{self.split}-{self.speaker.id}-{self.chapter}"

    @property
    def rel_dir(self) -> str:
        return f"LibriSpeech/{self.split}/{self.speaker.id}/{self.chapter}"


@dataclass(frozen=True)
class NoiseJob:
    name: str  # file stem, e.g. "pink-01"
    kind: str  # white | pink | brown | babble
    seconds: float
    seed: tuple[int, ...]
    talkers: tuple[tuple[Voice, str], ...] = ()  # babble: (voice, text) per talker


@dataclass
class _Plan:
    train_speakers: list[Speaker]
    unseen_speakers: list[Speaker]
    chapters: list[ChapterJob]
    noise: list[NoiseJob]
    speaker_splits: dict[int, list[str]] = field(default_factory=dict)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1])) if lo_hi[1] > lo_hi[0] else float(lo_hi[0])


def _espeak_voice(accent: str, variant: str, cfg: MiniCorpusConfig, rng: np.random.Generator) -> Voice:
    rate = round(_uniform(rng, cfg.espeak_rate_range))
    pitch = round(_uniform(rng, cfg.espeak_pitch_range))
    return Voice("espeak-ng", f"{accent}+{variant}", float(rate), float(pitch))


def _stretch_voice(engine: str, name: str, base_f0: float | None, cfg: MiniCorpusConfig,
                   rng: np.random.Generator) -> Voice:
    stretch = round(_uniform(rng, cfg.stretch_range), 2)
    semitones = _uniform(rng, cfg.pitch_semitones_range)
    pitch = 0.0 if base_f0 is None else float(round(base_f0 * 2.0 ** (semitones / 12.0)))
    return Voice(engine, name, stretch, pitch)  # type: ignore[arg-type]


def _shuffled(items: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))]


def _speaker(speaker_id: int, voice: Voice, cfg: MiniCorpusConfig, rng: np.random.Generator) -> Speaker:
    peak = round(_uniform(rng, cfg.peak_dbfs_range), 2)
    floor = round(_uniform(rng, cfg.noise_floor_dbfs_range), 1)
    return Speaker(speaker_id, voice, peak, floor)


def _plan_speakers(cfg: MiniCorpusConfig, rng: np.random.Generator) -> tuple[list[Speaker], list[Speaker]]:
    voices: list[Voice] = []
    n = cfg.num_train_speakers
    has_espeak = bool(cfg.espeak_accents and cfg.espeak_variants)
    if has_espeak and cfg.flite_voices:
        n_flite = min(n - 1, max(1, round(n * cfg.flite_fraction))) if n >= 2 else 0
    else:
        n_flite = n if cfg.flite_voices else 0
    accents, variants = _shuffled(cfg.espeak_accents, rng), _shuffled(cfg.espeak_variants, rng)
    for i in range(n - n_flite):
        voices.append(_espeak_voice(accents[i % len(accents)], variants[i % len(variants)], cfg, rng))
    flite = _shuffled(cfg.flite_voices, rng)
    for j in range(n_flite):
        name = flite[j % len(flite)]
        base = None if name == "rms" else tts.FLITE_BASE_F0[name]  # rms ignores the F0 target
        voices.append(_stretch_voice("flite", name, base, cfg, rng))
    train = [_speaker(_FIRST_SEEN_SPEAKER + i, v, cfg, rng) for i, v in enumerate(voices)]

    engines = cfg.unseen_engines()
    m = cfg.num_unseen_speakers
    counts = {e: 1 for e in engines}  # every unseen engine gets at least one speaker
    for e, frac in (("festival", cfg.unseen_festival_fraction), ("flite", cfg.unseen_flite_fraction)):
        if e in counts:
            counts[e] = max(1, round(m * frac))
    rest = m - sum(counts.values())
    if "espeak-ng" in counts:
        counts["espeak-ng"] += rest
    else:
        counts[engines[-1]] += rest
    while sum(counts.values()) > m:  # rounding overshoot: trim the largest, never below 1
        biggest = max(counts, key=lambda e: counts[e])
        counts[biggest] -= 1
    unseen_voices: list[Voice] = []
    fest = _shuffled(cfg.unseen_festival_voices, rng)
    for k in range(counts.get("festival", 0)):
        name = fest[k % len(fest)]
        unseen_voices.append(_stretch_voice("festival", name, tts.FESTIVAL_BASE_F0.get(name), cfg, rng))
    uflite = _shuffled(cfg.unseen_flite_voices, rng)
    for k in range(counts.get("flite", 0)):
        name = uflite[k % len(uflite)]
        unseen_voices.append(_stretch_voice("flite", name, None if name == "rms" else tts.FLITE_BASE_F0[name], cfg, rng))
    u_acc, u_var = _shuffled(cfg.unseen_espeak_accents, rng), _shuffled(cfg.unseen_espeak_variants, rng)
    modes = [(a, v) for a, v in ((u_acc, u_var), (u_acc, variants), (accents, u_var)) if a and v]
    for k in range(counts.get("espeak-ng", 0)):
        acc_list, var_list = modes[k % len(modes)]
        r = k // len(modes)
        unseen_voices.append(_espeak_voice(acc_list[(k + r) % len(acc_list)], var_list[(k + 7 * r) % len(var_list)], cfg, rng))
    unseen = [_speaker(_FIRST_UNSEEN_SPEAKER + i, v, cfg, rng) for i, v in enumerate(unseen_voices)]
    return train, unseen


def _plan_utterances(pool: _Pool, voice: Voice, target_s: float, cfg: MiniCorpusConfig,
                     rng: np.random.Generator, prefix: str) -> tuple[Utterance, ...]:
    """Utterances of one chapter until their estimated length is closest to ``target_s``."""
    utts: list[Utterance] = []
    total = 0.0
    while True:
        start = pool.pos
        goal = _uniform(rng, (cfg.min_utterance_seconds, cfg.max_utterance_seconds))
        parts = [pool.take()]
        est = tts.estimate_seconds(voice, parts[0].raw)
        while len(parts) < cfg.max_sentences_per_utterance and est < goal and pool.has_next():
            nxt = est + _JOIN_PAUSE_S + tts.estimate_seconds(voice, pool.peek().raw)
            if nxt > cfg.max_utterance_seconds:
                break
            parts.append(pool.take())
            est = nxt
        if utts and total + est / 2.0 > target_s:  # nearer the target without this one
            pool.pos = start
            break
        total += est
        utts.append(Utterance(
            id=f"{prefix}-{len(utts):04d}",
            text=" ".join(p.text for p in parts),
            tts_text=" ".join(_speakable(p.raw) for p in parts),
            sentences=tuple(p.text for p in parts),
        ))
    return tuple(utts)


def _make_plan(cfg: MiniCorpusConfig, sentences: list[Sentence]) -> _Plan:
    rng = np.random.default_rng([cfg.seed, 1])
    train, unseen = _plan_speakers(cfg, rng)
    pools = {name: _Pool(name, s, wrap=(name == "noise")) for name, s in _split_pools(sentences, cfg.seed).items()}
    n_eval = min(cfg.num_eval_speakers, len(train))
    dev = sorted(rng.choice(len(train), size=n_eval, replace=False).tolist())
    test_seen = sorted(rng.choice(len(train), size=n_eval, replace=False).tolist())
    layout: list[tuple[str, Speaker, float]] = []  # (split, speaker, target seconds) per chapter
    per_train = cfg.train_hours * 3600.0 / len(train) / cfg.train_chapters_per_speaker
    for spk in train:
        layout += [("train", spk, per_train)] * cfg.train_chapters_per_speaker
    layout += [("dev", train[i], cfg.dev_minutes * 60.0 / n_eval) for i in dev]
    layout += [("test-seen", train[i], cfg.test_minutes * 60.0 / n_eval) for i in test_seen]
    layout += [("test-unseen", spk, cfg.test_minutes * 60.0 / len(unseen)) for spk in unseen]

    plan = _Plan(train, unseen, [], [])
    utt_rng = np.random.default_rng([cfg.seed, 2])
    for k, (split, spk, target) in enumerate(layout):
        chapter = _FIRST_CHAPTER + k
        utts = _plan_utterances(pools[split], spk.voice, target, cfg, utt_rng, f"{spk.id}-{chapter}")
        plan.chapters.append(ChapterJob(split, spk, chapter, utts, cfg.seed))
        splits = plan.speaker_splits.setdefault(spk.id, [])
        if split not in splits:
            splits.append(split)

    noise_rng = np.random.default_rng([cfg.seed, 3])
    for colour in noise_lib.NOISE_COLOURS:
        for i in range(cfg.noise_files_per_colour):
            plan.noise.append(NoiseJob(f"{colour}-{i:02d}", colour, cfg.noise_seconds, (cfg.seed, 4, len(plan.noise))))
    for i in range(cfg.babble_files):
        n_talk = min(cfg.babble_talkers, len(train))
        talkers = []
        for t in _choice(noise_rng, len(train), n_talk):
            voice = train[t].voice
            parts: list[str] = []
            est = 0.0
            while est < cfg.noise_seconds:
                s = pools["noise"].take()
                parts.append(_speakable(s.raw))
                est += tts.estimate_seconds(voice, s.raw) + _JOIN_PAUSE_S
            talkers.append((voice, " ".join(parts)))
        if talkers:
            plan.noise.append(NoiseJob(f"babble-{i:02d}", "babble", cfg.noise_seconds,
                                       (cfg.seed, 5, i), tuple(talkers)))
    return plan


def _choice(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` distinct indices out of ``n`` (sorted), from ``rng``."""
    return sorted(rng.choice(n, size=k, replace=False).tolist()) if k > 0 else []


# --------------------------------------------------------------------------------------------
# Workers


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def _write_flac(path: Path, x: np.ndarray) -> str:
    """(T,) float samples -> 16 kHz mono 16-bit FLAC, written atomically; returns its SHA-256."""
    # Encoded in memory: libsndfile reports a full disk as "System error." without the errno.
    buf = io.BytesIO()
    sf.write(buf, _to_int16(x), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return _write_bytes(path, buf.getvalue())


def _write_text(path: Path, text: str) -> str:
    return _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> str:
    """Written to a temporary file renamed into place; the temporary file goes when that fails.
    Returns the SHA-256 of ``data`` (hex), for ``checksums.sha256``."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    return hashlib.sha256(data).hexdigest()


def _synthesize_with_retry(voice: Voice, text: str, workdir: str, what: str) -> tuple[np.ndarray | None, int]:
    """One retry after a failure; returns (audio or None, number of failed calls)."""
    failures = 0
    for attempt in (1, 2):
        try:
            return tts.synthesize(voice, text, workdir), failures
        except tts.TTSError as e:
            failures += 1
            log.warning("TTS failed for %s (attempt %d of 2): %s", what, attempt, e)
    return None, failures


def _run_chapter(job: ChapterJob, out: Path, workdir: str) -> dict[str, Any]:
    chapter_dir = out / job.rel_dir
    chapter_dir.mkdir(parents=True, exist_ok=True)
    durations: dict[str, float] = {}
    files: dict[str, str] = {}  # path under out -> SHA-256
    skipped: list[str] = []
    failed_calls = 0
    lines = []
    for k, utt in enumerate(job.utterances):
        audio, fails = _synthesize_with_retry(job.speaker.voice, utt.tts_text, workdir,
                                              f"{utt.id} ({job.speaker.voice.describe()})")
        failed_calls += fails
        if audio is None:
            skipped.append(utt.id)
            log.warning("skipping utterance %s after 2 failed TTS calls", utt.id)
            continue
        audio = noise_lib.peak_normalize(audio, job.speaker.peak_dbfs)
        hiss = np.random.default_rng([job.seed, 6, job.speaker.id, job.chapter, k]).standard_normal(audio.shape[0])
        audio = audio + (hiss * 10.0 ** (job.speaker.noise_floor_dbfs / 20.0)).astype(np.float32)
        files[f"{job.rel_dir}/{utt.id}.flac"] = _write_flac(chapter_dir / f"{utt.id}.flac", audio)
        durations[utt.id] = audio.shape[0] / SAMPLE_RATE
        lines.append(f"{utt.id} {utt.text}\n")
    trans = f"{job.speaker.id}-{job.chapter}.trans.txt"
    files[f"{job.rel_dir}/{trans}"] = _write_text(chapter_dir / trans, "".join(lines))
    return {"job": job.name, "split": job.split, "speaker": job.speaker.id, "chapter": job.chapter,
            "durations": durations, "skipped": skipped, "failed_calls": failed_calls, "files": files}


def _run_noise(job: NoiseJob, out: Path, workdir: str) -> dict[str, Any]:
    n = int(round(job.seconds * SAMPLE_RATE))
    rng = np.random.default_rng(list(job.seed))
    skipped: list[str] = []
    failed_calls = 0
    if job.kind == "babble":
        tracks = []
        for i, (voice, text) in enumerate(job.talkers):
            audio, fails = _synthesize_with_retry(voice, text, workdir, f"{job.name} talker {i} ({voice.describe()})")
            failed_calls += fails
            if audio is None:
                skipped.append(f"{job.name}/talker-{i}")
            else:
                tracks.append(audio)
        if not tracks:
            return {"job": job.name, "kind": job.kind, "seconds": 0.0, "skipped": skipped + [job.name],
                    "failed_calls": failed_calls, "file": None, "files": {}}
        x = noise_lib.mix_babble(tracks, n, rng)
    else:
        x = noise_lib.coloured_noise(job.kind, n, rng, SAMPLE_RATE)
    path = out / "noise" / f"{job.name}.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = _write_flac(path, x)
    return {"job": job.name, "kind": job.kind, "seconds": n / SAMPLE_RATE, "skipped": skipped,
            "failed_calls": failed_calls, "file": path.name, "files": {f"noise/{path.name}": digest}}


def _run_job(args: tuple[ChapterJob | NoiseJob, str]) -> dict[str, Any]:
    """Worker entry point: synthesize one chapter or noise file, then record it as done."""
    job, out_dir = args
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="mini-tts-") as workdir:
        if isinstance(job, ChapterJob):
            result = _run_chapter(job, out, workdir)
        else:
            result = _run_noise(job, out, workdir)
    _write_text(out / ".build" / "jobs" / f"{job.name}.json", json.dumps(result, sort_keys=True))
    return result


# --------------------------------------------------------------------------------------------
# Build


def _check_voices(cfg: MiniCorpusConfig) -> None:
    """Unknown voice names make the engines fall back silently, so check them up front."""
    checks = [
        ("espeak_accents", "espeak-ng accent", cfg.espeak_accents, tts.espeak_accents),
        ("unseen_espeak_accents", "espeak-ng accent", cfg.unseen_espeak_accents, tts.espeak_accents),
        ("espeak_variants", "espeak-ng variant", cfg.espeak_variants, tts.espeak_variants),
        ("unseen_espeak_variants", "espeak-ng variant", cfg.unseen_espeak_variants, tts.espeak_variants),
        ("unseen_festival_voices", "festival voice", cfg.unseen_festival_voices, tts.festival_voices),
    ]
    cache: dict[Any, set[str]] = {}
    for key, what, names, lister in checks:
        if not names:
            continue
        if lister not in cache:
            cache[lister] = lister()
        missing = sorted(set(names) - cache[lister])
        if missing:
            hint = ("; festival's kal_diphone comes with `apt-get install festvox-kallpc16k`"
                    if "kal_diphone" in missing else "")
            raise ValueError(f"MiniCorpusConfig.{key}: unknown {what}(s) {missing}; "
                             f"installed: {sorted(cache[lister])}{hint}")


def _read_checksums(out: Path) -> dict[str, str] | None:
    """path -> SHA-256 from ``checksums.sha256``; None when it is missing or malformed."""
    try:
        lines = (out / CHECKSUMS).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    sums = {}
    for line in lines:
        digest, sep, rel = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not rel:
            return None
        sums[rel] = digest
    return sums


def _damaged(out: Path, sums: dict[str, str]) -> list[str]:
    """The listed files that are missing or whose bytes are not those the build wrote (all of
    them are read: about 0.2 s for the default corpus's 210 MB)."""
    bad = []
    for rel, digest in sorted(sums.items()):
        try:
            ok = hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
        except OSError:
            ok = False
        if not ok:
            bad.append(rel)
    return bad


def _load_done(out: Path, fingerprint: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(stats, damaged files) of a complete corpus built from this fingerprint; (None, []) when
    there is none. Damaged files are those ``checksums.sha256`` lists that are missing or changed."""
    try:
        stats = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, []
    if stats.get("generator") != GENERATOR or stats.get("fingerprint") != fingerprint:
        return None, []
    if not all((out / "LibriSpeech" / s).is_dir() for s in SPLITS):
        return None, []
    if not (out / "noise" / "recordings.jsonl.gz").is_file():
        return None, []
    sums = _read_checksums(out)
    if sums is None:
        log.warning("%s: no readable %s (a corpus built before it was written, or a damaged "
                    "list); rebuilding", out, CHECKSUMS)
        return None, []
    expected = sum(stats.get("utterances", {}).values())
    listed = {rel for rel in sums if rel.endswith(".flac") and rel.startswith("LibriSpeech/")}
    unlisted = {p.relative_to(out).as_posix() for p in (out / "LibriSpeech").glob("*/*/*/*.flac")} - listed
    if len(listed) != expected or unlisted:
        log.warning("%s: %d FLAC files listed in %s and %d more on disk where corpus.json lists %d "
                    "utterances; rebuilding", out, len(listed), CHECKSUMS, len(unlisted), expected)
        return None, []
    return stats, _damaged(out, sums)


def _repair(out: Path, config: MiniCorpusConfig, damaged: list[str], num_jobs: int, progress: bool) -> bool:
    """Synthesize again the chapters and noise files that wrote ``damaged`` files (the build is
    deterministic, so they come out with the same bytes); True when every file those jobs
    write matches ``checksums.sha256`` again. False (the caller rebuilds the whole corpus) when
    a damaged file belongs to no job, or the new files differ (another TTS version, a failed
    TTS call)."""
    shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
    mismatch = f"{len(damaged)} file does not" if len(damaged) == 1 else f"{len(damaged)} files do not"
    sums = _read_checksums(out) or {}
    sentences = closed_vocabulary(load_wordnet_sentences(config.wordnet_dir, config.min_words, config.max_words),
                                  config.vocabulary_size, config.min_word_count)
    plan = _make_plan(config, sentences)
    owner: dict[str, ChapterJob | NoiseJob] = {}
    for chapter in plan.chapters:
        for utt in chapter.utterances:
            owner[f"{chapter.rel_dir}/{utt.id}.flac"] = chapter
        owner[f"{chapter.rel_dir}/{chapter.speaker.id}-{chapter.chapter}.trans.txt"] = chapter
    for noise in plan.noise:
        owner[f"noise/{noise.name}.flac"] = noise
    orphans = [rel for rel in damaged if rel not in owner]
    if orphans:
        log.warning("%s: %s match %s (%s), and %s belongs to no chapter; rebuilding the corpus",
                    out, mismatch, CHECKSUMS, shown, orphans[0])
        return False
    jobs = list({owner[rel].name: owner[rel] for rel in damaged}.values())
    log.warning("%s: %s match %s (%s); synthesizing again the %d chapter(s) or noise file(s) that hold them",
                out, mismatch, CHECKSUMS, shown, len(jobs))
    _remove_temporaries(out)
    (out / ".build" / "jobs").mkdir(parents=True, exist_ok=True)
    differ = []
    for result in _run_all(jobs, out, num_jobs, progress):
        wrote = result["files"]
        listed = {rel for rel, job in owner.items() if job.name == result["job"] and rel in sums}
        differ += sorted(rel for rel in listed | set(wrote) if wrote.get(rel) != sums.get(rel))
    if differ:
        log.warning("%s: synthesized again, %d file(s) differ from the ones first built (%s; another TTS "
                    "version?); rebuilding the corpus", out, len(differ), differ[0])
        return False
    log.info("%s: repaired (%d chapter(s) or noise file(s) synthesized again)", out, len(jobs))
    return True


def _ours(out: Path) -> bool:
    for marker in (out / "corpus.json", out / ".build" / "build.json"):
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("generator") == GENERATOR:
                return True
        except (OSError, ValueError):
            continue
    return False


def _refuse_foreign(out: Path) -> None:
    if ((out / "LibriSpeech").exists() or (out / "noise").exists()) and not _ours(out):
        raise FileExistsError(
            f"{out} already holds LibriSpeech/ or noise/ that build_mini_librispeech did not "
            "make; choose another output directory or remove them"
        )


def _remove_temporaries(out: Path) -> None:
    """The ``*.tmp-PID`` files of writes that a killed build left unfinished."""
    for stale in list(out.glob("LibriSpeech/**/*.tmp-*")) + list(out.glob("noise/*.tmp-*")):
        stale.unlink(missing_ok=True)


def _prepare_out_dir(out: Path, fingerprint: str) -> bool:
    """Clear a stale build (or keep a resumable one); returns True when resuming."""
    state = out / ".build" / "build.json"
    ours = _ours(out)
    try:
        resuming = json.loads(state.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        resuming = False
    if not resuming:
        if not ours:
            _refuse_foreign(out)
        # Marked ours, resumable by no config, before anything is removed: a build killed while
        # the old files go is neither refused as foreign nor resumed from the old jobs' records.
        state.parent.mkdir(parents=True, exist_ok=True)
        _write_text(state, json.dumps({"generator": GENERATOR, "fingerprint": None}))
    if ours:  # from here on the directory must not look complete
        (out / "corpus.json").unlink(missing_ok=True)
    if not resuming:
        (out / CHECKSUMS).unlink(missing_ok=True)
        for name in ("LibriSpeech", "noise", ".build/jobs"):
            shutil.rmtree(out / name, ignore_errors=True)
    _remove_temporaries(out)
    (out / ".build" / "jobs").mkdir(parents=True, exist_ok=True)
    _write_text(state, json.dumps({"generator": GENERATOR, "fingerprint": fingerprint}))
    return resuming


def _weight(job: ChapterJob | NoiseJob) -> int:
    """Work of a job in utterance-sized units (about 6 s of speech), for ordering and progress."""
    if isinstance(job, ChapterJob):
        return len(job.utterances)
    return max(1, round(len(job.talkers) * job.seconds / 6.0))


def _run_all(jobs: list[ChapterJob | NoiseJob], out: Path, num_jobs: int, progress: bool) -> Iterator[dict[str, Any]]:
    weights = {j.name: _weight(j) for j in jobs}
    # Longest first balances the workers; the order never changes what a job writes.
    jobs = sorted(jobs, key=lambda j: (-weights[j.name], j.name))
    args = [(j, str(out)) for j in jobs]
    bar = tqdm(total=sum(weights.values()), unit="utt", desc="mini LibriSpeech", disable=not progress)
    try:
        if num_jobs <= 1:
            for a in args:
                result = _run_job(a)
                bar.update(weights[result["job"]])
                yield result
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(num_jobs) as pool:
                for result in pool.imap_unordered(_run_job, args, chunksize=1):
                    bar.update(weights[result["job"]])
                    yield result
    finally:
        bar.close()


def _write_speakers(out: Path, plan: _Plan, seconds: dict[int, float]) -> str:
    rows = [
        "; Speakers of the mini LibriSpeech corpus, synthesized locally by text-to-speech.",
        "; RATE: espeak-ng words per minute; flite and festival duration stretch (>1 is slower).",
        "; PITCH: espeak-ng pitch 0-99; flite and festival target mean F0 in Hz (0 = voice default).",
        "; SUBSETS: the splits the voice speaks in; test-unseen voices are never used in training.",
        ";ID   |ENGINE    |VOICE                          |RATE  |PITCH |SUBSETS                |MINUTES",
    ]
    for spk in plan.train_speakers + plan.unseen_speakers:
        v = spk.voice
        rows.append(
            f"{spk.id:<5} |{v.engine:<10}|{v.voice:<31}|{v.rate:<6g}|{v.pitch:<6g}|"
            f"{','.join(plan.speaker_splits.get(spk.id, [])):<23}|{seconds.get(spk.id, 0.0) / 60.0:.2f}"
        )
    return _write_text(out / "LibriSpeech" / "SPEAKERS.TXT", "\n".join(rows) + "\n")


_README = """Mini LibriSpeech: synthesized locally by text-to-speech (espeak-ng, flite, festival)
with asr.data.corpus.build_mini_librispeech; see corpus.json next to this directory.

Sentences: the example sentences of WordNet 3.0 (Debian package wordnet-base).
WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Used under the
WordNet 3.0 license, which permits use, copying, modification and distribution for any
purpose without fee, provided the copyright notice is kept; see
https://wordnet.princeton.edu/license-and-commercial-use
"""


def build_mini_librispeech(
    out_dir: str | Path,
    config: MiniCorpusConfig | None = None,
    num_jobs: int = 2,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the mini LibriSpeech corpus under ``out_dir``; returns its stats.

    The stats are the content of ``<out_dir>/corpus.json``: ``config``, ``fingerprint``,
    per-split ``splits[split]`` (``hours``, ``utterances``, ``speakers``, ``chapters``,
    ``engines``, ``voices``), the short forms ``hours`` and ``utterances`` (split -> value),
    ``speakers`` (id -> engine, voice, rate, pitch, splits), ``noise``, ``tts_failures`` and
    ``build`` (seconds, num_jobs). Same config -> the same bytes, whatever ``num_jobs``.

    Workers are started with multiprocessing's ``spawn``: a script that calls this with
    ``num_jobs > 1`` needs the usual ``if __name__ == "__main__":`` guard. Bump
    ``FORMAT_VERSION`` whenever a code change alters what a given config produces, so that
    corpora built before are rebuilt.
    """
    config = config if config is not None else MiniCorpusConfig()
    if not isinstance(config, MiniCorpusConfig):
        raise TypeError(f"config must be a MiniCorpusConfig, got {type(config).__name__}")
    if num_jobs < 1:
        raise ValueError(f"num_jobs must be >= 1, got {num_jobs}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; the mini corpus is written to a directory")
    fingerprint = config_fingerprint(config)
    done, damaged = _load_done(out, fingerprint)
    if done is not None and not damaged:
        log.info("mini LibriSpeech already built in %s (fingerprint %s)", out, fingerprint[:12])
        return done

    _refuse_foreign(out)
    engines = config.engines()
    tts.check_engines(engines)
    _check_voices(config)
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        done, damaged = _load_done(out, fingerprint)  # again: the build this one waited for may have made it
        if done is not None and not damaged:
            log.info("mini LibriSpeech built in %s by the other build (fingerprint %s)", out, fingerprint[:12])
            shutil.rmtree(out / ".build", ignore_errors=True)  # only this lock: a finished corpus has no .build
            return done
        if done is not None and _repair(out, config, damaged, num_jobs, progress):
            shutil.rmtree(out / ".build", ignore_errors=True)
            return done
        return _build(out, config, fingerprint, engines, num_jobs, progress)


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.build/lock`` (flock) for one build: a second build of the same directory (two
    recipes started at once) waits for the first, then reuses what it built, instead of both
    writing and clearing the same files. The lock goes with ``.build`` when the build is done;
    the kernel releases it when a build dies."""
    import fcntl

    (out / ".build").mkdir(parents=True, exist_ok=True)
    with open(out / ".build" / "lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            log.warning("another build is writing %s (pid %s); waiting for it to finish", out, holder)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _build(out: Path, config: MiniCorpusConfig, fingerprint: str, engines: set[str], num_jobs: int,
           progress: bool) -> dict:
    start = time.perf_counter()
    sentences = closed_vocabulary(load_wordnet_sentences(config.wordnet_dir, config.min_words, config.max_words),
                                  config.vocabulary_size, config.min_word_count)
    plan = _make_plan(config, sentences)
    resuming = _prepare_out_dir(out, fingerprint)

    jobs: list[ChapterJob | NoiseJob] = [*plan.chapters, *plan.noise]
    results: dict[str, dict[str, Any]] = {}
    if resuming:  # jobs that finished cleanly are kept; those with skipped utterances try again
        for job in jobs:
            try:
                result = json.loads((out / ".build" / "jobs" / f"{job.name}.json").read_text())
            except (OSError, ValueError):
                continue
            if not result.get("skipped") and "files" in result:  # older records lack the checksums
                results[job.name] = result
        log.info("resuming the build in %s: %d of %d jobs already done", out, len(results), len(jobs))
    todo = [j for j in jobs if j.name not in results]
    log.info("building mini LibriSpeech in %s: %d chapters, %d utterances, %d noise files, %d workers",
             out, len(plan.chapters), sum(len(c.utterances) for c in plan.chapters), len(plan.noise), num_jobs)
    for result in _run_all(todo, out, num_jobs, progress):
        results[result["job"]] = result

    stats = _collect_stats(config, fingerprint, plan, results, engines)
    for split in SPLITS:
        if stats["splits"][split]["utterances"] == 0:
            raise RuntimeError(f"every TTS call for the {split} split failed; see the warnings above "
                               f"(nothing was marked complete in {out})")
    seconds_per_speaker: dict[int, float] = {}
    for job in plan.chapters:
        seconds_per_speaker[job.speaker.id] = seconds_per_speaker.get(job.speaker.id, 0.0) + sum(
            results[job.name]["durations"].values())
    checksums = {rel: digest for r in results.values() for rel, digest in r["files"].items()}
    checksums["LibriSpeech/SPEAKERS.TXT"] = _write_speakers(out, plan, seconds_per_speaker)
    checksums["LibriSpeech/README.TXT"] = _write_text(out / "LibriSpeech" / "README.TXT", _README)
    noise_files = sorted((out / "noise" / r["file"]) for r in results.values() if r.get("file"))
    (out / "noise").mkdir(parents=True, exist_ok=True)
    noise_lib.write_recording_set(noise_files, out / "noise" / "recordings.jsonl.gz")

    stats["build"] = {"seconds": round(time.perf_counter() - start, 1), "num_jobs": num_jobs,
                      "resumed_jobs": len(jobs) - len(todo)}
    _write_text(out / CHECKSUMS, "".join(f"{digest}  {rel}\n" for rel, digest in sorted(checksums.items())))
    _write_text(out / "corpus.json", json.dumps(stats, indent=2, sort_keys=False) + "\n")
    shutil.rmtree(out / ".build", ignore_errors=True)
    f = stats["tts_failures"]
    log.info("mini LibriSpeech done in %.1f s: %s; %d TTS calls failed, %d utterances skipped",
             stats["build"]["seconds"], ", ".join(f"{s} {stats['hours'][s]:.2f} h" for s in SPLITS),
             f["failed_calls"], f["skipped_utterances"])
    return stats


def _collect_stats(config: MiniCorpusConfig, fingerprint: str, plan: _Plan, results: dict[str, dict[str, Any]],
                   engines: set[str]) -> dict[str, Any]:
    splits: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    failed_calls = 0
    for split in SPLITS:
        jobs = [j for j in plan.chapters if j.split == split]
        durs = [d for j in jobs for d in results[j.name]["durations"].values()]
        for j in jobs:
            skipped += results[j.name]["skipped"]
            failed_calls += results[j.name]["failed_calls"]
        spk = {j.speaker.id: j.speaker.voice for j in jobs if results[j.name]["durations"]}
        splits[split] = {
            "hours": round(sum(durs) / 3600.0, 4),
            "utterances": len(durs),
            "speakers": len(spk),
            "chapters": sum(1 for j in jobs if results[j.name]["durations"]),
            "engines": sorted({v.engine for v in spk.values()}),
            "voices": len({(v.engine, v.voice) for v in spk.values()}),
            "mean_utterance_seconds": round(sum(durs) / max(len(durs), 1), 2),
        }
    noise_results = [results[j.name] for j in plan.noise]
    noise_skipped = [s for r in noise_results for s in r["skipped"]]
    failed_calls += sum(r["failed_calls"] for r in noise_results)
    kinds: dict[str, int] = {}
    for r in noise_results:
        if r.get("file"):
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    speakers = {
        str(s.id): {"engine": s.voice.engine, "voice": s.voice.voice, "rate": s.voice.rate,
                    "pitch": s.voice.pitch, "peak_dbfs": s.peak_dbfs,
                    "noise_floor_dbfs": s.noise_floor_dbfs, "splits": plan.speaker_splits.get(s.id, [])}
        for s in plan.train_speakers + plan.unseen_speakers
    }
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "config": to_dict(config),
        "text_source": "WordNet 3.0 example sentences (Debian wordnet-base), WordNet 3.0 license",
        "hours": {s: splits[s]["hours"] for s in SPLITS},
        "utterances": {s: splits[s]["utterances"] for s in SPLITS},
        "splits": splits,
        "speakers": speakers,
        "noise": {
            "files": sum(kinds.values()),
            "hours": round(sum(r["seconds"] for r in noise_results) / 3600.0, 4),
            "kinds": dict(sorted(kinds.items())),
            "manifest": "noise/recordings.jsonl.gz",
        },
        "tts_failures": {
            "failed_calls": failed_calls,
            "skipped_utterances": len(skipped),
            "skipped": sorted(skipped),
            "skipped_babble_talkers": sorted(noise_skipped),
        },
        "tools": tts.tool_versions(engines),
    }
