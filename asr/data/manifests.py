"""Lhotse CutSets from any corpus layout, with bad files skipped and counted.

Sources (``load_cuts`` detects the kind):

- a LibriSpeech directory (``SPEAKER/CHAPTER/*.flac`` + ``*.trans.txt`` under split dirs),
  read with ``lhotse.recipes.prepare_librispeech``; the embedded mini corpus uses this path;
- any lhotse manifest: a CutSet file, or a RecordingSet with its SupervisionSet beside it;
- a Kaldi data dir: ``wav.scp`` and ``text``, optional ``segments`` and ``utt2spk``;
- a JSONL manifest, one ``{"audio_filepath", "text", "duration"?, "offset"?}`` object a line.

Every recording is opened once to read its header. A file that is missing, unreadable or
empty is skipped and counted in a ``SkipCounter`` (never fatal, never silent), and so is an
utterance whose id repeats (``duplicate_id``: the first is kept), whose segment has no length
or starts before 0 (``bad_segment``; Kaldi's end -1 is the end of the file), or ends more
than 50 ms past its audio (``segment_outside_audio``), and a JSONL line without a string
``text`` and ``audio_filepath`` or with non-numeric times (``bad_manifest_line``). Files read
in segments are recordings named by their ``wav.scp`` key (JSONL: the file's stem, made
unique). Kaldi files split on any whitespace, as Kaldi does. ``prepare_cuts`` then
normalizes text, drops cuts that are too short or whose text the tokenizer cannot represent,
resamples to the feature rate and downmixes multi-channel audio to mono (the channels'
average, a lazy mix that a manifest stores).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.cut import MultiCut

from .text import normalize_librispeech

__all__ = [
    "SkipCounter",
    "SourceKind",
    "detect_source",
    "load_cuts",
    "read_cut_manifest",
    "split_name",
    "prepare_cuts",
    "load_recording",
    "librispeech_split_dirs",
]

log = logging.getLogger(__name__)

SourceKind = Literal["librispeech", "lhotse", "kaldi", "jsonl"]


@dataclass
class SkipCounter:
    """Counts skipped items by reason and keeps a few examples of each for the log."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    max_examples: int = 3

    def add(self, reason: str, what: str = "", n: int = 1) -> None:
        self.counts[reason] += n
        ex = self.examples.setdefault(reason, [])
        if what and len(ex) < self.max_examples:
            ex.append(what)

    def merge(self, other: "SkipCounter | dict | Counter") -> None:
        counts = other.counts if isinstance(other, SkipCounter) else other
        for reason, n in counts.items():
            self.counts[reason] += n
        if isinstance(other, SkipCounter):
            for reason, ex in other.examples.items():
                mine = self.examples.setdefault(reason, [])
                mine.extend(ex[: max(0, self.max_examples - len(mine))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        parts = []
        for reason, n in self.counts.most_common():
            ex = self.examples.get(reason)
            parts.append(f"{reason}: {n}" + (f" (e.g. {', '.join(ex)})" if ex else ""))
        return f"skipped {self.total}: " + "; ".join(parts)

    def log(self, what: str) -> None:
        if self.counts:
            log.warning("%s: %s", what, self.summary())
        else:
            log.info("%s: nothing skipped", what)


def load_recording(path: str | Path, recording_id: str | None = None) -> Recording:
    """Open one audio file's header. Raises ``ValueError`` naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        rec = Recording.from_file(path, recording_id=recording_id)
    except Exception as e:  # soundfile/audioread raise many types
        raise ValueError(f"cannot read audio file {path}: {type(e).__name__}: {e}") from None
    if rec.num_samples <= 0 or rec.duration <= 0:
        raise ValueError(f"audio file {path} contains no samples")
    return rec


def _try_recording(path: Path, rid: str, skipped: SkipCounter) -> Recording | None:
    try:
        return load_recording(path, rid)
    except FileNotFoundError:
        skipped.add("missing_file", str(path))
    except ValueError as e:
        skipped.add("empty_audio" if "no samples" in str(e) else "unreadable_audio", str(path))
    return None


def detect_source(source: str | Path) -> SourceKind:
    """Say which kind of corpus ``source`` is; ``ValueError`` when it is none of them."""
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"corpus source not found: {p}")
    if p.is_dir():
        if (p / "wav.scp").is_file():
            return "kaldi"
        if any(p.glob("*.jsonl.gz")) or any(p.glob("*.jsonl")):
            return "lhotse"
        if next(p.rglob("*.trans.txt"), None) is not None:
            return "librispeech"
        raise ValueError(
            f"{p}: not a LibriSpeech dir (no *.trans.txt), a Kaldi dir (no wav.scp) "
            "or a dir of lhotse manifests (no *.jsonl.gz)"
        )
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt") as f:
            first = next((line for line in f if line.strip()), "")
        obj = json.loads(first) if first else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a JSONL manifest ({e})") from None
    if "audio_filepath" in obj:
        return "jsonl"
    if "id" in obj:
        return "lhotse"
    raise ValueError(
        f"{p}: unknown manifest format: expected JSONL lines with 'audio_filepath' and 'text', "
        "or a lhotse manifest"
    )


def split_name(path: str | Path) -> str:
    """A manifest's split name in logs, metrics and results: ``cuts_dev-clean.jsonl.gz`` -> ``dev-clean``."""
    return Path(path).name.replace("cuts_", "").split(".")[0]


def read_cut_manifest(path: str | Path, hint: str = "") -> CutSet:
    """The cuts of a prepared manifest (``cuts_<split>.jsonl.gz``): FileNotFoundError when it is
    missing (``hint`` appended), ValueError naming it when it does not parse or holds no cuts."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"cut manifest not found: {p}{hint}")
    try:
        cuts = CutSet.from_file(p)
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault here
        raise ValueError(f"cannot read the cut manifest {p}: {type(e).__name__}: {e}") from None
    if cuts is None or len(cuts) == 0:  # lhotse reads an empty file as None
        raise ValueError(f"the cut manifest {p} holds no cuts")
    if not isinstance(cuts, CutSet):  # CutSet.from_file returns whatever manifest the file holds
        raise ValueError(f"{p} is a lhotse {type(cuts).__name__}, not a cut manifest (`asr prepare` writes "
                         "manifests/cuts_<part>.jsonl.gz)")
    return cuts


def load_cuts(
    source: str | Path,
    parts: Sequence[str] | None = None,
    skipped: SkipCounter | None = None,
    num_jobs: int = 2,
) -> CutSet:
    """Read ``source`` (any supported kind) into an eager CutSet with one supervision per cut.

    Args:
        source: corpus directory or manifest file.
        parts: for LibriSpeech, which split directories to read (default: all that exist).
        skipped: receives the count of bad files (created when not given).
    """
    skipped = skipped if skipped is not None else SkipCounter()
    kind = detect_source(source)
    if kind == "librispeech":
        cuts = _librispeech_cuts(Path(source), parts, skipped, num_jobs)
    elif kind == "kaldi":
        cuts = _kaldi_cuts(Path(source), skipped)
    elif kind == "jsonl":
        cuts = _jsonl_cuts(Path(source), skipped)
    else:
        cuts = _lhotse_cuts(Path(source), skipped)
    skipped.log(f"reading {source}")
    return cuts


def librispeech_split_dirs(root: Path, parts: Sequence[str] | None) -> list[Path]:
    """The split directories (train-clean-100, dev, ...) under a LibriSpeech root, or the root
    itself when it is one split; ``parts`` selects some and must all exist."""
    if next(root.glob("*/*/*.trans.txt"), None) is not None:  # root is one split
        return [root]
    if (root / "LibriSpeech").is_dir():
        root = root / "LibriSpeech"
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and next(d.glob("*/*/*.trans.txt"), None))
    if parts:
        wanted = set(parts)
        missing = wanted - {d.name for d in dirs}
        if missing:
            raise ValueError(f"{root}: no split(s) {sorted(missing)}; found {[d.name for d in dirs]}")
        dirs = [d for d in dirs if d.name in wanted]
    return dirs


def _utf8_lines(path: Path) -> list[str]:
    """The lines of a text file (a byte-order mark dropped); a ValueError naming the file, the
    byte and its offset when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); convert it, "
                         "e.g. iconv -f latin1 -t utf-8") from None


def _transcript_lines(trans: Path) -> list[tuple[str, str]]:
    """(utterance id, text) of every non-empty line of a ``*.trans.txt``."""
    out = []
    for line in _utf8_lines(trans):
        if line.strip():
            uid, _, words = line.strip().partition(" ")
            out.append((uid, words.strip()))
    return out


def _count_untranscribed(split_dir: Path, skipped: SkipCounter) -> None:
    """Chapters with audio but no ``*.trans.txt``: their files are counted, not silently lost."""
    for chapter in sorted(d for d in split_dir.glob("*/*") if d.is_dir()):
        if next(chapter.glob("*.trans.txt"), None) is None:
            n = sum(1 for _ in chapter.glob("*.flac"))
            if n:
                skipped.add("no_transcript", f"{chapter}: {n} audio files", n)


def _librispeech_cuts(root: Path, parts, skipped: SkipCounter, num_jobs: int) -> CutSet:
    from lhotse.recipes import prepare_librispeech

    all_cuts = []
    for split_dir in librispeech_split_dirs(root, parts):
        _count_untranscribed(split_dir, skipped)
        listed = [entry for t in sorted(split_dir.rglob("*.trans.txt")) for entry in _transcript_lines(t)]
        ids = [uid for uid, _ in listed]
        if len(set(ids)) < len(ids) or any(not text for _, text in listed):
            # lhotse's recipe would keep duplicate ids under random ones and empty texts: the
            # file-by-file reader skips and counts them
            log.warning("%s: transcripts with repeated utterance ids or no text; reading file by file", split_dir)
            all_cuts.append(_librispeech_cuts_robust(split_dir, skipped))
            continue
        try:
            # lhotse's own recipe: the same path serves the real LibriSpeech.
            m = prepare_librispeech(split_dir.parent, dataset_parts=[split_dir.name], num_jobs=num_jobs)
            m = m[split_dir.name]
            n_listed = len(listed)
            if n_listed > len(m["recordings"]):
                skipped.add("missing_file", f"{split_dir.name}: {n_listed - len(m['recordings'])} listed files", n_listed - len(m["recordings"]))
            cuts = CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"])
        except Exception as e:
            # A corrupt file makes lhotse's recipe raise: read per file instead, skipping bad ones.
            log.warning("%s: lhotse prepare_librispeech failed (%s); reading file by file", split_dir, e)
            cuts = _librispeech_cuts_robust(split_dir, skipped)
        all_cuts.append(cuts)
    out = all_cuts[0] if len(all_cuts) == 1 else CutSet.from_cuts(c for cs in all_cuts for c in cs)
    return _utterance_ids(out)


def _librispeech_cuts_robust(split_dir: Path, skipped: SkipCounter) -> CutSet:
    entries, seen = [], set()
    for trans in sorted(split_dir.rglob("*.trans.txt")):
        for uid, text in _transcript_lines(trans):
            if uid in seen:
                skipped.add("duplicate_id", f"{trans}: {uid}")
                continue
            seen.add(uid)
            if not text:
                skipped.add("empty_text", f"{trans}: {uid}")
                continue
            entries.append((uid, trans.parent / f"{uid}.flac", text, uid.split("-")[0], None, None))
    return _cuts_from_entries(entries, skipped)


def _cuts_from_entries(entries: Iterable[tuple], skipped: SkipCounter) -> CutSet:
    """entries: (utt_id, audio_path, text, speaker, offset or None, duration or None, recording
    id or None). A file read in segments gets the given recording id (Kaldi's wav.scp key) or
    its file name's stem, made unique (two sessions' mix.wav are two recordings)."""
    recordings: dict[str, Recording] = {}
    seen, used_ids = set(), set()
    sups = []
    for uid, path, text, speaker, offset, duration, *given in entries:
        if uid in seen:
            skipped.add("duplicate_id", str(uid))
            continue
        seen.add(uid)
        start = float(offset or 0.0)
        if start < 0 or (duration is not None and not float(duration) > 0):
            skipped.add("bad_segment", f"{uid} (start {start:.3f} s, duration {float(duration):.3f} s)")
            continue
        path = Path(path)
        key = str(path)
        if key not in recordings:
            name = uid if offset is None else (given[0] if given and given[0] else path.stem)
            base, k = name, 1
            while name in used_ids:
                k += 1
                name = f"{base}-{k}"
            rec = _try_recording(path, name, skipped)
            if rec is None:
                continue
            recordings[key] = rec
            used_ids.add(name)
        rec = recordings[key]
        dur = rec.duration - start if duration is None else float(duration)
        if start >= rec.duration:
            skipped.add("segment_outside_audio", uid)
            continue
        if start + dur > rec.duration + 0.05:  # its text speaks past the audio's end
            skipped.add("segment_outside_audio", f"{uid} (ends at {start + dur:.2f} s, the audio at {rec.duration:.2f} s)")
            continue
        dur = min(dur, rec.duration - start)
        sups.append(
            SupervisionSegment(
                id=uid,
                recording_id=rec.id,
                start=start,
                duration=round(dur, 6),
                channel=0 if rec.num_channels == 1 else list(range(rec.num_channels)),
                text=text,
                speaker=speaker,
                language="English",
            )
        )
    # Recording ids must be unique; a shared file (segments) keeps one id.
    recs = RecordingSet.from_recordings({r.id: r for r in recordings.values()}.values())
    return _utterance_ids(CutSet.from_manifests(recordings=recs, supervisions=SupervisionSet.from_segments(sups)))


def _utterance_ids(cuts: CutSet) -> CutSet:
    """Cuts with one supervision take its id (the utterance id users know)."""
    from lhotse.utils import fastcopy

    return CutSet.from_cuts(fastcopy(c, id=c.supervisions[0].id) if len(c.supervisions) == 1 else c for c in cuts).to_eager()


def _kaldi_cuts(d: Path, skipped: SkipCounter) -> CutSet:
    def read_map(name: str) -> dict[str, str]:
        p = d / name
        if not p.is_file():
            return {}
        out = {}
        for n, line in enumerate(_utf8_lines(p), 1):
            if not line.strip():
                continue
            key, value = (line.split(maxsplit=1) + [""])[:2]  # any whitespace, as Kaldi splits
            if not value and name != "text":
                raise ValueError(f"{p}:{n}: expected '<id> <value>', got {line.strip()!r}")
            if key in out:
                skipped.add("duplicate_id", f"{p}:{n}: {key}")
                continue
            out[key] = value.strip()
        return out

    wav = read_map("wav.scp")
    text = read_map("text")
    if not text:
        raise ValueError(f"{d}: Kaldi data dir has no 'text' file (needed for ASR training)")
    utt2spk = read_map("utt2spk")
    for rid, value in wav.items():
        if value.endswith("|"):
            raise ValueError(
                f"{d / 'wav.scp'}: entry {rid} is a pipe command; extract the audio to files first"
            )
    entries = []
    segments = d / "segments"
    if segments.is_file():
        segment_lines = _utf8_lines(segments)
        for n, line in enumerate(segment_lines, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 4:
                raise ValueError(f"{segments}:{n}: expected '<utt> <reco> <start> <end>', got {line.strip()!r}")
            try:
                uid, rid, start, end = fields[0], fields[1], float(fields[2]), float(fields[3])
            except ValueError:
                raise ValueError(f"{segments}:{n}: start and end must be seconds, got {line.strip()!r}") from None
            if rid not in wav:
                skipped.add("missing_file", f"{rid} (not in wav.scp)")
                continue
            if uid not in text:
                skipped.add("missing_text", uid)
                continue
            # Kaldi: an end of -1 is the end of the file
            entries.append((uid, wav[rid], text[uid], utt2spk.get(uid, rid), start, None if end == -1 else end - start, rid))
        listed = {line.split()[0] for line in segment_lines if line.strip()}
    else:
        for uid, path in wav.items():
            if uid not in text:
                skipped.add("missing_text", uid)
                continue
            entries.append((uid, path, text[uid], utt2spk.get(uid, uid), None, None))
        listed = set(wav)
    for uid in sorted(set(text) - listed):
        skipped.add("missing_file", f"{uid} (in text, not in {'segments' if segments.is_file() else 'wav.scp'})")
    return _cuts_from_entries(entries, skipped)


def _jsonl_cuts(p: Path, skipped: SkipCounter) -> CutSet:
    entries = []
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                skipped.add("bad_manifest_line", f"{p}:{n}")
                log.debug("%s:%d: %s", p, n, e)
                continue
            if not isinstance(obj, dict) or "audio_filepath" not in obj or "text" not in obj:
                skipped.add("bad_manifest_line", f"{p}:{n} (needs audio_filepath and text)")
                continue
            if not isinstance(obj["text"], str) or not isinstance(obj["audio_filepath"], str):
                skipped.add("bad_manifest_line", f"{p}:{n} (text and audio_filepath must be strings)")  # null used to train as "NONE"
                continue
            numbers = {k: obj.get(k) for k in ("offset", "duration")}
            if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in numbers.values()):
                skipped.add("bad_manifest_line", f"{p}:{n} (offset and duration must be numbers of seconds)")
                continue
            audio = Path(obj["audio_filepath"])
            if not audio.is_absolute():  # relative to the manifest, stored absolute (not relative to where prepare ran)
                audio = p.parent.absolute() / audio
            uid = str(obj["id"]) if obj.get("id") is not None else f"{audio.stem}-{n:07d}"
            entries.append((uid, audio, obj["text"], str(obj.get("speaker", audio.stem)), numbers["offset"], numbers["duration"]))
    return _cuts_from_entries(entries, skipped)


def _lhotse_cuts(p: Path, skipped: SkipCounter) -> CutSet:
    from lhotse import load_manifest

    if p.is_dir():
        cut_files = sorted(p.glob("*cuts*.jsonl*"))
        if cut_files:
            return CutSet.from_cuts(c for f in cut_files for c in CutSet.from_file(f)).to_eager()
        recs = sorted(p.glob("*recordings*.jsonl*"))
        sups = sorted(p.glob("*supervisions*.jsonl*"))
        if not recs or not sups:
            raise ValueError(f"{p}: expected *cuts*.jsonl.gz or *recordings*/*supervisions* manifests")
        recordings = RecordingSet.from_recordings(r for f in recs for r in RecordingSet.from_file(f))
        supervisions = SupervisionSet.from_segments(s for f in sups for s in SupervisionSet.from_file(f))
        return CutSet.from_manifests(recordings=recordings, supervisions=supervisions).to_eager()
    m = load_manifest(p)
    if isinstance(m, CutSet):
        return m.to_eager()
    if isinstance(m, RecordingSet):
        sup = Path(str(p).replace("recordings", "supervisions"))
        if sup == p or not sup.is_file():
            raise ValueError(f"{p}: a RecordingSet needs its SupervisionSet beside it (looked for {sup})")
        return CutSet.from_manifests(recordings=m, supervisions=load_manifest(sup)).to_eager()
    raise ValueError(f"{p}: expected a CutSet or RecordingSet manifest, got {type(m).__name__}")


def prepare_cuts(
    cuts: CutSet,
    sample_rate: int = 16000,
    normalize_text: bool = True,
    min_duration: float = 0.1,
    max_duration: float | None = None,
    tokenizer=None,
    skipped: SkipCounter | None = None,
    check_audio: bool = False,
) -> CutSet:
    """Clean a CutSet for training or evaluation.

    - one supervision per cut (cuts are trimmed to their supervisions);
    - text normalized LibriSpeech-style (``normalize_text``); empty text is skipped;
    - cuts shorter than ``min_duration`` (or longer than ``max_duration``) are skipped;
    - with a ``tokenizer``, cuts whose text has characters it cannot represent are skipped;
    - audio at another rate is resampled (lazily, on load) and multi-channel audio downmixed;
    - ``check_audio`` also opens each file's header again (slow on big corpora).
    """
    skipped = skipped if skipped is not None else SkipCounter()
    out = []
    for cut in cuts.trim_to_supervisions(keep_overlapping=False) if _needs_trim(cuts) else cuts:
        if not cut.supervisions:
            skipped.add("no_transcript", cut.id)
            continue
        sup = cut.supervisions[0]
        text = sup.text or ""
        if normalize_text:
            text = normalize_librispeech(text)
        if not text.strip():
            skipped.add("empty_text", cut.id)
            continue
        if cut.duration < min_duration:
            skipped.add("too_short", f"{cut.id} ({cut.duration:.3f}s)")
            continue
        if max_duration is not None and cut.duration > max_duration:
            skipped.add("too_long", f"{cut.id} ({cut.duration:.1f}s)")
            continue
        if tokenizer is not None:
            missing = tokenizer.missing_chars(text)
            if missing:
                skipped.add("chars_not_in_tokenizer", f"{cut.id} {''.join(sorted(missing))!r}")
                continue
        if check_audio and cut.has_recording:
            src = cut.recording.sources[0]
            if src.type == "file" and _try_recording(Path(src.source), cut.recording.id, skipped) is None:
                continue
        if cut.sampling_rate != sample_rate:
            cut = cut.resample(sample_rate)
        cut.supervisions[0].text = text
        out.append(_downmix(cut) if isinstance(cut, MultiCut) else cut)
    return CutSet.from_cuts(out).to_eager()


def _downmix(cut: MultiCut):
    """A multi-channel cut as the average of its channels: a lazy MixedCut of one mono cut per
    channel at gain 1/n, the supervision on the first (lhotse's ``to_mono(mono_downmix=True)``
    sums the channels, repeats the supervision per channel, and renders the mix into memory,
    which a manifest cannot store)."""
    from lhotse.cut import MixedCut, MixTrack, MonoCut
    from lhotse.utils import fastcopy

    channels = list(cut.channel) if isinstance(cut.channel, (list, tuple)) else [cut.channel]
    tracks = []
    for i, ch in enumerate(channels):
        sups = [fastcopy(s, channel=ch) for s in cut.supervisions[:1]] if i == 0 else []
        mono = MonoCut(id=f"{cut.id}-ch{ch}", recording=cut.recording, start=cut.start, duration=cut.duration,
                       channel=ch, supervisions=sups, custom=cut.custom)
        tracks.append(MixTrack(cut=mono.perturb_volume(1.0 / len(channels), affix_id=False)))
    return MixedCut(id=cut.id, tracks=tracks)


def _needs_trim(cuts: CutSet) -> bool:
    for cut in cuts:
        if len(cut.supervisions) != 1 or cut.supervisions[0].start != 0 or abs(cut.supervisions[0].duration - cut.duration) > 1e-3:
            return True
    return False
