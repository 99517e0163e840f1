"""The embedded mini LibriSpeech corpus: layout, format, lhotse, determinism, caching, splits.

A tiny corpus (about 2 minutes of audio) is built once per module with 2 workers; a second
directory is built with 1 worker through a config change and a simulated crash, and must come
out byte-identical. Needs espeak-ng, flite, festival (festvox-kallpc16k) and wordnet-base.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.config import ConfigError, from_dict
from asr.data import corpus as corpus_mod
from asr.data import tts
from asr.data.corpus import SPLITS, MiniCorpusConfig, build_mini_librispeech, load_wordnet_sentences
from asr.data.text import is_librispeech_normalizable, normalize_librispeech

_MISSING = [p for p in ("espeak-ng", "flite", "festival") if shutil.which(p) is None]
if not Path("/usr/share/wordnet/data.noun").is_file():
    _MISSING.append("wordnet-base")


@pytest.fixture(scope="module", autouse=True)
def _system_packages() -> None:
    if _MISSING:  # fail, never skip: a missing install step must not pass silently
        pytest.fail(f"missing {_MISSING}: run `bash scripts/bootstrap.sh` "
                    "(apt-get install espeak-ng flite festival festvox-kallpc16k wordnet-base)")


TINY = dict(
    train_hours=0.01, dev_minutes=0.3, test_minutes=0.3, num_train_speakers=4,
    train_chapters_per_speaker=1, num_eval_speakers=2, num_unseen_speakers=4,
    noise_seconds=3.0, noise_files_per_colour=1, babble_files=1, babble_talkers=3,
)
_LINE = re.compile(r"^(\d+)-(\d+)-(\d{4}) ([A-Z']+(?: [A-Z']+)*)$")


def tiny(**overrides) -> MiniCorpusConfig:
    return MiniCorpusConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mini") / "corpus"
    stats = build_mini_librispeech(out, tiny(), num_jobs=2, progress=False)
    return out, stats


def _transcripts(root: Path, split: str) -> dict[str, str]:
    out = {}
    for trans in sorted((root / "LibriSpeech" / split).rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, text = line.split(" ", 1)
            out[utt] = text
    return out


def _file_hashes(root: Path) -> dict[str, str]:
    hashes = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != "corpus.json" and not rel.endswith(".jsonl.gz"):
            hashes[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return hashes


def _manifest_text(root: Path) -> str:
    text = gzip.decompress((root / "noise" / "recordings.jsonl.gz").read_bytes()).decode("utf-8")
    return text.replace(str(root.resolve()), "<ROOT>")


# ---------------------------------------------------------------------------- layout and format


def test_layout_format_and_transcripts(built):
    out, stats = built
    for split in SPLITS:
        split_dir = out / "LibriSpeech" / split
        chapters = [c for s in split_dir.iterdir() for c in s.iterdir()]
        assert chapters, split
        n_utts = 0
        for chapter_dir in chapters:
            spk, chap = chapter_dir.parent.name, chapter_dir.name
            assert spk.isdigit() and chap.isdigit()
            trans = chapter_dir / f"{spk}-{chap}.trans.txt"
            lines = trans.read_text(encoding="utf-8").splitlines()
            flacs = sorted(p.stem for p in chapter_dir.glob("*.flac"))
            assert sorted(line.split(" ", 1)[0] for line in lines) == flacs
            assert {p.name for p in chapter_dir.iterdir()} == {trans.name} | {f"{f}.flac" for f in flacs}
            for line in lines:
                m = _LINE.match(line)
                assert m, f"bad transcript line {line!r} in {trans}"
                assert (m.group(1), m.group(2)) == (spk, chap)
                text = m.group(4)
                assert normalize_librispeech(text) == text and is_librispeech_normalizable(text)
                assert len(text.split()) >= 4
                info = sf.info(str(chapter_dir / f"{m.group(1)}-{m.group(2)}-{m.group(3)}.flac"))
                assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
                assert 0.8 < info.duration < 16.0
                n_utts += 1
        assert n_utts == stats["splits"][split]["utterances"] == stats["utterances"][split]
    audio, sr = sf.read(str(next((out / "LibriSpeech" / "train").rglob("*.flac"))))
    assert sr == 16000 and audio.ndim == 1 and np.isfinite(audio).all()
    assert 0.05 < np.abs(audio).max() <= 1.0 and np.sqrt(np.mean(audio**2)) > 0.005
    assert np.mean(audio == 0.0) < 0.05  # the hiss fills TTS's digital-zero pauses


def test_stats_and_speakers_file(built):
    out, stats = built
    on_disk = json.loads((out / "corpus.json").read_text())
    assert on_disk == stats
    assert stats["fingerprint"] == corpus_mod.config_fingerprint(tiny())
    assert stats["tts_failures"]["skipped_utterances"] == 0
    for split in SPLITS:
        s = stats["splits"][split]
        assert s["hours"] > 0 and s["speakers"] >= 1 and s["chapters"] >= 1
        listed = {d.name for d in (out / "LibriSpeech" / split).iterdir()}
        assert s["speakers"] == len(listed)
    rows = [r for r in (out / "LibriSpeech" / "SPEAKERS.TXT").read_text().splitlines() if not r.startswith(";")]
    table = {r.split("|")[0].strip(): [c.strip() for c in r.split("|")] for r in rows}
    for split in SPLITS:
        for spk_dir in (out / "LibriSpeech" / split).iterdir():
            row = table[spk_dir.name]
            info = stats["speakers"][spk_dir.name]
            assert row[1] == info["engine"] and row[2] == info["voice"] and split in row[5].split(",")
    assert not (out / ".build").exists()


def test_lhotse_prepare_librispeech_reads_it(built, tmp_path):
    from lhotse.recipes import prepare_librispeech

    out, stats = built
    manifests = prepare_librispeech(out / "LibriSpeech", dataset_parts=list(SPLITS), output_dir=tmp_path)
    assert set(manifests) == set(SPLITS)
    for split in SPLITS:
        recs, sups = manifests[split]["recordings"], manifests[split]["supervisions"]
        expected = _transcripts(out, split)
        assert {s.id: s.text for s in sups} == expected
        assert len(recs) == len(expected)
        assert all(r.sampling_rate == 16000 and r.num_channels == 1 for r in recs)
        assert sum(r.duration for r in recs) / 3600 == pytest.approx(stats["hours"][split], abs=1e-3)
        assert {s.speaker for s in sups} == {d.name for d in (out / "LibriSpeech" / split).iterdir()}


# ---------------------------------------------------------------------------- splits and voices


def test_split_transcripts_are_disjoint(built):
    out, _ = built
    texts = {split: set(_transcripts(out, split).values()) for split in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not texts[a] & texts[b], (a, b)


def test_default_plan_sentence_pools_are_disjoint_and_sized():
    """On the default config's plan: no WordNet sentence is in two splits or in the babble."""
    cfg = MiniCorpusConfig()
    plan = corpus_mod._make_plan(cfg, load_wordnet_sentences(cfg.wordnet_dir, cfg.min_words, cfg.max_words))
    used: dict[str, set[str]] = {s: set() for s in SPLITS}
    for job in plan.chapters:
        for utt in job.utterances:
            assert utt.text == " ".join(utt.sentences)
            assert 1 <= len(utt.sentences) <= cfg.max_sentences_per_utterance
            used[job.split].update(utt.sentences)
    babble = {normalize_librispeech(t) for job in plan.noise for _, text in job.talkers for t in text.split(". ")}
    for i, a in enumerate(SPLITS):
        assert used[a] and not used[a] & babble
        for b in SPLITS[i + 1:]:
            assert not used[a] & used[b], (a, b)
    est = {s: 0.0 for s in SPLITS}
    for job in plan.chapters:
        est[job.split] += sum(tts.estimate_seconds(job.speaker.voice, u.tts_text) for u in job.utterances)
    assert est["train"] / 3600 >= 2.0
    for split in ("dev", "test-seen", "test-unseen"):
        assert 8 * 60 <= est[split] <= 20 * 60, split


def _check_voice_split(train_speakers, unseen_speakers, eval_speakers, cfg):
    train_voices = {(s["engine"], s["voice"]) for s in train_speakers}
    train_engines = {s["engine"] for s in train_speakers}
    assert {"festival", "flite", "espeak-ng"} <= {s["engine"] for s in unseen_speakers}
    assert "festival" not in train_engines
    for s in unseen_speakers:
        assert (s["engine"], s["voice"]) not in train_voices
        if s["engine"] == "espeak-ng":
            accent, variant = s["voice"].split("+")
            assert accent not in cfg.espeak_accents or variant not in cfg.espeak_variants
        if s["engine"] == "flite":
            assert s["voice"] not in cfg.flite_voices
    for s in eval_speakers:  # dev and test-seen: training voices
        assert (s["engine"], s["voice"]) in train_voices


def test_test_unseen_voices_and_engines_are_never_trained_on(built):
    out, stats = built
    spk = stats["speakers"]
    by_split = {split: [spk[d.name] for d in (out / "LibriSpeech" / split).iterdir()] for split in SPLITS}
    _check_voice_split(by_split["train"], by_split["test-unseen"], by_split["dev"] + by_split["test-seen"], tiny())
    assert set(stats["splits"]["train"]["engines"]) == {"espeak-ng", "flite"}
    assert set(stats["splits"]["test-unseen"]["engines"]) == {"espeak-ng", "flite", "festival"}
    assert {d.name for d in (out / "LibriSpeech" / "dev").iterdir()} <= {
        d.name for d in (out / "LibriSpeech" / "train").iterdir()}


def test_default_plan_voices_vary_in_engine_voice_rate_and_pitch():
    cfg = MiniCorpusConfig()
    plan = corpus_mod._make_plan(cfg, load_wordnet_sentences(cfg.wordnet_dir, cfg.min_words, cfg.max_words))
    as_dict = lambda s: {"engine": s.voice.engine, "voice": s.voice.voice}  # noqa: E731
    eval_spk = [as_dict(j.speaker) for j in plan.chapters if j.split in ("dev", "test-seen")]
    _check_voice_split([as_dict(s) for s in plan.train_speakers], [as_dict(s) for s in plan.unseen_speakers],
                       eval_spk, cfg)
    train = plan.train_speakers
    assert len(train) == cfg.num_train_speakers
    assert len({s.voice.voice for s in train}) >= 50
    assert {s.voice.voice.split("+")[0] for s in train if s.voice.engine == "espeak-ng"} == set(cfg.espeak_accents)
    assert {s.voice.voice for s in train if s.voice.engine == "flite"} == set(cfg.flite_voices)
    espeak = [s.voice for s in train if s.voice.engine == "espeak-ng"]
    assert len({v.rate for v in espeak}) >= 20 and len({v.pitch for v in espeak}) >= 20
    assert len({(s.voice.engine, s.voice.voice) for s in plan.unseen_speakers}) >= 8


# ---------------------------------------------------------------------------- determinism, cache


def test_rebuild_with_same_config_is_a_noop(built, monkeypatch):
    out, stats = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached build must not load text or run TTS")

    monkeypatch.setattr(corpus_mod, "load_wordnet_sentences", forbidden)
    monkeypatch.setattr(tts, "synthesize", forbidden)
    again = build_mini_librispeech(out, tiny(), num_jobs=2, progress=False)
    assert again == stats
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_config_change_crash_resume_and_determinism(built, tmp_path, monkeypatch):
    """seed=1 build, then seed=0 over it (rebuild) that crashes, then a resume with 1 worker:
    the result is byte-identical to the 2-worker build."""
    ref, ref_stats = built
    out = tmp_path / "corpus"
    other = build_mini_librispeech(out, tiny(seed=1), num_jobs=1, progress=False)
    assert other["fingerprint"] != ref_stats["fingerprint"]
    assert _transcripts(out, "train") != _transcripts(ref, "train")

    _crash_after_some_syntheses(monkeypatch, out, tiny())
    assert not (out / "corpus.json").exists()  # an interrupted build never looks complete
    assert (out / ".build" / "build.json").is_file()

    stats = build_mini_librispeech(out, tiny(), num_jobs=1, progress=False)
    assert stats["build"]["resumed_jobs"] > 0
    assert _file_hashes(out) == _file_hashes(ref)
    assert _manifest_text(out) == _manifest_text(ref)
    strip = lambda s: {k: v for k, v in s.items() if k != "build"}  # noqa: E731
    assert strip(stats) == strip(ref_stats)


def _crash_after_some_syntheses(monkeypatch, out: Path, cfg) -> None:
    """A build of ``out`` that 'crashes' (KeyboardInterrupt) after 8 utterances."""
    real, calls = tts.synthesize, {"n": 0}

    def crash_after_some(voice, text, workdir):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt("simulated crash")
        return real(voice, text, workdir)

    monkeypatch.setattr(tts, "synthesize", crash_after_some)
    with pytest.raises(KeyboardInterrupt):
        build_mini_librispeech(out, cfg, num_jobs=1, progress=False)
    monkeypatch.setattr(tts, "synthesize", real)


def _killed_while_removing(monkeypatch, out: Path, remove_first: bool):
    """shutil.rmtree that 'is killed' at its first call inside ``out``, before or after removing."""
    real = shutil.rmtree

    def killed(path, *args, **kwargs):
        if out not in Path(path).parents:
            return real(path, *args, **kwargs)
        monkeypatch.setattr(shutil, "rmtree", real)
        if remove_first:
            real(path, *args, **kwargs)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(shutil, "rmtree", killed)


def test_a_build_killed_while_it_removes_the_old_files_is_rebuilt(tmp_path, monkeypatch):
    """A config change clears the old files. Killed there, the directory used to be refused as
    'not made by build_mini_librispeech' (corpus.json gone, no build state yet), or, when the
    old job records outlived the removed chapters, resumed from them into a corpus.json that
    lists audio that is not there."""
    cfg, other = tiny(babble_files=0), tiny(babble_files=0, seed=1)
    flacs = lambda root: sum(1 for _ in (root / "LibriSpeech").rglob("*.flac"))  # noqa: E731

    out = tmp_path / "complete"
    build_mini_librispeech(out, cfg, num_jobs=1, progress=False)
    _killed_while_removing(monkeypatch, out, remove_first=False)
    with pytest.raises(KeyboardInterrupt):
        build_mini_librispeech(out, other, num_jobs=1, progress=False)
    stats = build_mini_librispeech(out, cfg, num_jobs=1, progress=False)
    assert flacs(out) == sum(stats["utterances"].values())

    out = tmp_path / "partial"
    _crash_after_some_syntheses(monkeypatch, out, cfg)
    assert list((out / ".build" / "jobs").glob("*.json"))
    _killed_while_removing(monkeypatch, out, remove_first=True)  # LibriSpeech/ goes, the job records stay
    with pytest.raises(KeyboardInterrupt):
        build_mini_librispeech(out, other, num_jobs=1, progress=False)
    stats = build_mini_librispeech(out, cfg, num_jobs=1, progress=False)
    assert stats["build"]["resumed_jobs"] == 0
    assert flacs(out) == sum(stats["utterances"].values())


def test_a_second_build_of_the_same_directory_waits_then_reuses_the_first(built, tmp_path, monkeypatch, caplog):
    """Two recipes started at once on one --out used to write and clear the same files. The
    second now waits on the first's lock (here held by the test, which plays the first build by
    putting a finished corpus in place) and then reuses it: no text loaded, no TTS run."""
    import fcntl
    import threading

    src, stats = built
    out = tmp_path / "corpus"
    (out / ".build").mkdir(parents=True)
    lock = open(out / ".build" / "lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.write("4242\n")
    lock.flush()

    def forbidden(*args, **kwargs):
        raise AssertionError("the waiting build must reuse the corpus, not build one")

    monkeypatch.setattr(corpus_mod, "load_wordnet_sentences", forbidden)
    monkeypatch.setattr(tts, "synthesize", forbidden)
    got: list = []
    second = threading.Thread(target=lambda: got.append(build_mini_librispeech(out, tiny(), num_jobs=1, progress=False)))
    with caplog.at_level("WARNING", logger=corpus_mod.log.name):
        second.start()
        second.join(timeout=3)
        assert second.is_alive()  # waiting, not writing
        assert f"another build is writing {out} (pid 4242)" in caplog.text
        assert sorted(p.name for p in out.iterdir()) == [".build"]
        shutil.copytree(src, out, dirs_exist_ok=True)  # what the first build leaves
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        second.join(timeout=60)
    assert not second.is_alive() and got == [stats]
    assert not (out / ".build").exists()


def _counting_synthesize(monkeypatch) -> list[str]:
    """tts.synthesize, recording the text of every call."""
    real, texts = tts.synthesize, []

    def counting(voice, text, workdir):
        texts.append(text)
        return real(voice, text, workdir)

    monkeypatch.setattr(tts, "synthesize", counting)
    return texts


def test_checksums_list_every_audio_file_and_transcript(built):
    """``checksums.sha256`` is `sha256sum -c` input for every FLAC and transcript, as written."""
    out, stats = built
    lines = (out / corpus_mod.CHECKSUMS).read_text(encoding="utf-8").splitlines()
    sums = dict(reversed(line.split("  ", 1)) for line in lines)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*")
               if p.is_file() and (p.suffix in (".flac", ".txt", ".TXT"))}
    assert set(sums) == on_disk
    assert sum(1 for rel in sums if rel.startswith("LibriSpeech/") and rel.endswith(".flac")) == sum(stats["utterances"].values())
    assert all(hashlib.sha256((out / rel).read_bytes()).hexdigest() == d for rel, d in sums.items())


def test_damaged_files_are_synthesized_again_with_their_chapter_only(built, tmp_path, monkeypatch, caplog):
    """A truncated FLAC, a deleted FLAC and an edited transcript in a finished corpus used to be
    reused as they were (training skips unreadable audio, and trains on a wrong transcript).
    Now the chapters that hold them are synthesized again, and only those: the corpus is
    byte-identical to the original afterwards, every other file untouched."""
    src, stats = built
    out = tmp_path / "corpus"
    shutil.copytree(src, out)
    ref = _file_hashes(src)
    flacs = sorted((out / "LibriSpeech" / "train").rglob("*.flac"))
    chapters = sorted({f.parent for f in flacs})
    assert len(chapters) >= 3
    truncated, deleted = sorted(chapters[0].glob("*.flac"))[0], sorted(chapters[1].glob("*.flac"))[-1]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    deleted.unlink()
    trans = next(chapters[2].glob("*.trans.txt"))
    trans.write_text(trans.read_text(encoding="utf-8").replace(" ", "  ", 1), encoding="utf-8")
    noise = sorted((out / "noise").glob("*.flac"))[0]
    noise.write_bytes(b"\0" * noise.stat().st_size)  # same size, other bytes
    untouched = {p: p.stat().st_mtime_ns for p in (out / "LibriSpeech").rglob("*")
                 if p.is_file() and p.parent not in chapters[:3]}

    texts = _counting_synthesize(monkeypatch)
    with caplog.at_level("WARNING", logger=corpus_mod.log.name):
        again = build_mini_librispeech(out, tiny(), num_jobs=1, progress=False)
    assert again == stats
    assert "4 files do not match checksums.sha256" in caplog.text
    assert _file_hashes(out) == ref
    expected_calls = sum(len(list(c.glob("*.flac"))) for c in chapters[:3])
    assert expected_calls <= len(texts) < expected_calls + 10  # the three chapters plus one noise file's talkers
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert not (out / ".build").exists()
    texts.clear()
    build_mini_librispeech(out, tiny(), num_jobs=1, progress=False)
    assert texts == []  # repaired: reused as it is


def test_a_corpus_that_cannot_be_repaired_file_by_file_is_rebuilt(built, tmp_path, monkeypatch, caplog):
    """A damaged file no chapter writes (SPEAKERS.TXT), a repair whose audio comes out different
    (here: a TTS engine that now ends with 10 ms more silence), and a corpus without checksums.sha256 (built
    before it existed) are rebuilt whole, and the result verifies again."""
    src, stats = built
    ref = _file_hashes(src)
    out = tmp_path / "speakers"
    shutil.copytree(src, out)
    (out / "LibriSpeech" / "SPEAKERS.TXT").write_text("damaged\n")
    texts = _counting_synthesize(monkeypatch)
    with caplog.at_level("WARNING", logger=corpus_mod.log.name):
        again = build_mini_librispeech(out, tiny(), num_jobs=1, progress=False)
    assert "belongs to no chapter; rebuilding the corpus" in caplog.text
    assert len(texts) > 20 and _file_hashes(out) == ref
    assert {k: v for k, v in again.items() if k != "build"} == {k: v for k, v in stats.items() if k != "build"}

    out = tmp_path / "other-tts"
    shutil.copytree(src, out)
    victim = sorted((out / "LibriSpeech" / "dev").rglob("*.flac"))[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    real = tts.synthesize
    monkeypatch.setattr(tts, "synthesize",
                        lambda voice, text, workdir: np.pad(real(voice, text, workdir), (0, 160)))
    caplog.clear()
    with caplog.at_level("WARNING", logger=corpus_mod.log.name):
        build_mini_librispeech(out, tiny(), num_jobs=1, progress=False)
    assert "differ from the ones first built" in caplog.text
    assert corpus_mod._damaged(out, corpus_mod._read_checksums(out)) == []
    assert _file_hashes(out) != ref  # consistent with itself: every file from the new engine
    monkeypatch.setattr(tts, "synthesize", real)

    out = tmp_path / "old"
    shutil.copytree(src, out)
    (out / corpus_mod.CHECKSUMS).unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger=corpus_mod.log.name):
        build_mini_librispeech(out, tiny(), num_jobs=1, progress=False)
    assert "no readable checksums.sha256" in caplog.text
    assert _file_hashes(out) == ref


def test_failing_tts_call_is_retried_then_skipped_and_counted(tmp_path, monkeypatch, caplog):
    real = tts.synthesize
    seen: dict[str, int] = {}
    order: list[str] = []

    def flaky(voice, text, workdir):
        seen[text] = seen.get(text, 0) + 1
        if text not in order:
            order.append(text)
        if text == order[0] and seen[text] == 1:
            raise tts.TTSError("transient failure")
        if len(order) >= 2 and text == order[1]:
            raise tts.TTSError("permanent failure")
        return real(voice, text, workdir)

    monkeypatch.setattr(tts, "synthesize", flaky)
    cfg = tiny(train_hours=0.004, dev_minutes=0.1, test_minutes=0.1, babble_files=0)
    stats = build_mini_librispeech(tmp_path / "c", cfg, num_jobs=1, progress=False)
    f = stats["tts_failures"]
    assert f["failed_calls"] == 3 and f["skipped_utterances"] == 1
    (skipped,) = f["skipped"]
    assert not list((tmp_path / "c").rglob(f"{skipped}.flac"))
    assert all(skipped not in _transcripts(tmp_path / "c", s) for s in SPLITS)
    assert seen[order[0]] == 2 and seen[order[1]] == 2
    assert "skipping utterance" in caplog.text


# ---------------------------------------------------------------------------- noise


def test_noise_manifest_loads_and_audio_is_real_noise(built):
    from lhotse import RecordingSet

    out, stats = built
    recs = RecordingSet.from_file(out / "noise" / "recordings.jsonl.gz")
    kinds = {r.id.split("-")[0] for r in recs}
    assert kinds == {"white", "pink", "brown", "babble"}
    assert len(recs) == stats["noise"]["files"] == 4
    low_share = {}
    for r in recs:
        assert r.sampling_rate == 16000
        x = r.load_audio()[0]
        assert x.shape[0] == pytest.approx(3.0 * 16000, abs=1)
        assert np.isfinite(x).all() and np.sqrt(np.mean(x**2)) > 0.01
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(x.shape[0], 1 / 16000)
        low_share[r.id.split("-")[0]] = power[freqs < 500].sum() / power.sum()
    assert low_share["white"] < 0.1 < low_share["pink"] < low_share["brown"]


# ---------------------------------------------------------------------------- inputs and errors


def test_wordnet_sentences_are_clean_and_missing_data_names_the_package(tmp_path):
    sentences = load_wordnet_sentences()
    assert len(sentences) > 30000
    texts = [s.text for s in sentences]
    assert len(set(texts)) == len(texts)
    for s in sentences[::97]:
        assert s.text == normalize_librispeech(s.raw) and 4 <= len(s.text.split()) <= 24
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        load_wordnet_sentences(tmp_path)


def test_a_full_disk_is_named_and_leaves_no_temporary_file(tmp_path):
    """libsndfile wrote the FLAC itself and reported a full disk as 'System error.' (or a FLAC
    decoder error), and the temporary file stayed."""
    path = tmp_path / "x.flac"
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(OSError, match="No space left on device: .*x.flac"):
        corpus_mod._write_flac(path, np.full(1600, 0.1, np.float32))
    assert not os.path.lexists(tmp) and not path.exists()
    corpus_mod._write_flac(path, np.full(1600, 0.1, np.float32))
    x, sr = sf.read(path, dtype="int16")
    assert sr == 16000 and x.shape == (1600,) and (x == 3277).all()


def test_config_is_strict_and_validated():
    cfg = from_dict(MiniCorpusConfig, {"seed": 3, "train_hours": 0.5, "espeak_rate_range": [150, 180]})
    assert cfg.seed == 3 and cfg.espeak_rate_range == (150, 180)
    with pytest.raises(ConfigError, match="bogus"):
        from_dict(MiniCorpusConfig, {"bogus": 1})
    with pytest.raises(ConfigError, match="train_hours"):
        from_dict(MiniCorpusConfig, {"train_hours": "lots"})
    with pytest.raises(ValueError, match="unseen_flite_voices"):
        MiniCorpusConfig(unseen_flite_voices=("kal",))
    with pytest.raises(ValueError, match="num_unseen_speakers"):
        MiniCorpusConfig(num_unseen_speakers=2)
    with pytest.raises(ValueError, match="seed: must be >= 0"):  # numpy's 'expected non-negative integer', late
        MiniCorpusConfig(seed=-1)


def test_unknown_voice_and_foreign_directory_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="espeak_variants.*nosuchvariant"):
        build_mini_librispeech(tmp_path / "a", tiny(espeak_variants=("m3", "nosuchvariant")), progress=False)
    foreign = tmp_path / "b" / "LibriSpeech" / "train-clean-100"
    foreign.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="did not"):
        build_mini_librispeech(tmp_path / "b", tiny(), progress=False)
    assert foreign.is_dir()
    with monkeypatch.context() as m:  # only the first missing program was named, one run at a time
        m.setattr(tts.shutil, "which", lambda name: None)
        with pytest.raises(FileNotFoundError, match="'espeak-ng', 'festival', 'flite' not found on PATH.*"
                           "`apt-get install espeak-ng festival festvox-kallpc16k flite`"):
            build_mini_librispeech(tmp_path / "c", tiny(), progress=False)
    with monkeypatch.context() as m:  # festival without its voice: "installed: ['nil']"
        m.setattr(tts, "festival_voices", lambda: set())
        with pytest.raises(ValueError, match=r"\['kal_diphone'\]; installed: \[\]; .*apt-get install festvox-kallpc16k"):
            build_mini_librispeech(tmp_path / "c", tiny(), progress=False)
    assert not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("not a directory")  # was found out after the sentences and the plan
    with pytest.raises(NotADirectoryError, match="is a file"):
        build_mini_librispeech(tmp_path / "file", tiny(), progress=False)


# ---------------------------------------------------------------------------- TTS engines


def _median_f0(x: np.ndarray, sr: int = 16000) -> float:
    """Median F0 (Hz) of the voiced 40 ms frames of (T,) ``x``, by autocorrelation."""
    n, hop, f0s = int(0.04 * sr), int(0.01 * sr), []
    lo, hi = sr // 400, sr // 60
    for i in range(0, len(x) - n, hop):
        frame = x[i:i + n] - x[i:i + n].mean()
        if np.sqrt(np.mean(frame**2)) < 0.05 * np.abs(x).max():
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(sr / lag)
    return float(np.median(f0s))


@pytest.mark.parametrize(
    "slow, fast, low, high",
    [
        (tts.Voice("espeak-ng", "en-us+m3", 130, 50), tts.Voice("espeak-ng", "en-us+m3", 220, 50),
         tts.Voice("espeak-ng", "en-us+m3", 175, 20), tts.Voice("espeak-ng", "en-us+m3", 175, 80)),
        (tts.Voice("flite", "kal", 1.3, 0), tts.Voice("flite", "kal", 0.8, 0),
         tts.Voice("flite", "kal", 1.0, 90), tts.Voice("flite", "kal", 1.0, 150)),
        (tts.Voice("festival", "kal_diphone", 1.3, 0), tts.Voice("festival", "kal_diphone", 0.8, 0),
         tts.Voice("festival", "kal_diphone", 1.0, 90), tts.Voice("festival", "kal_diphone", 1.0, 150)),
    ],
    ids=["espeak-ng", "flite", "festival"],
)
def test_engines_speak_at_16k_and_follow_rate_and_pitch(slow, fast, low, high, tmp_path):
    text = "The patient must be sedated before the operation, and the news stunned her."
    out = {}
    for name, voice in (("slow", slow), ("fast", fast), ("low", low), ("high", high)):
        x = tts.synthesize(voice, text, tmp_path)
        assert x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all()
        assert 2.0 < x.shape[0] / 16000 < 10.0
        out[name] = x
    assert out["slow"].shape[0] > 1.3 * out["fast"].shape[0]
    assert _median_f0(out["high"]) > 1.3 * _median_f0(out["low"])


def test_unknown_engine_output_is_a_tts_error(tmp_path):
    with pytest.raises(tts.TTSError):
        tts.synthesize(tts.Voice("festival", "no_such_voice", 1.0, 0), "Hello there my friend.", tmp_path)


# ---------------------------------------------------------------------------- asr prepare --corpus mini


def test_prepare_mini_takes_seed_over_config_and_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """--seed was ignored when --corpus-config was given (the cached corpus of the YAML's seed was
    used); a bad config, a missing TTS program, a file in the way were tracebacks; an unknown
    --parts was found out after the build; Ctrl-C was a traceback without the resume hint."""
    from asr.cli import main

    conf = tmp_path / "tiny.yaml"
    conf.write_text("".join(f"{k}: {v}\n" for k, v in {**TINY, "seed": 3}.items()))
    seen = []

    def interrupted(out_dir, config, num_jobs=2, progress=True):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_mod, "build_mini_librispeech", interrupted)
    out = tmp_path / "data"
    caught = []
    for extra in ([], ["--seed", "5"], ["--seed", "0"]):
        try:  # not pytest.raises: a KeyboardInterrupt that got out would stop the test session
            main(["prepare", "--corpus", "mini", "--corpus-config", str(conf), "--out", str(out), *extra])
        except BaseException as e:  # noqa: BLE001
            caught.append(e)
    assert [c.seed for c in seen] == [3, 5, 0] and seen[0] == tiny(seed=3)
    assert all(isinstance(e, SystemExit) and e.code == 130 for e in caught)
    assert f"the same command resumes the build in {out / 'corpus'}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="bogus: not a part of the mini corpus"):
        main(["prepare", "--corpus", "mini", "--out", str(out), "--parts", "bogus"])
    assert len(seen) == 3
    monkeypatch.undo()

    bad = tmp_path / "bad.yaml"
    bad.write_text("train_hourz: 1\n")
    (tmp_path / "file" / "corpus").parent.mkdir()
    (tmp_path / "file" / "corpus").write_text("")
    for args, msg in [(["--corpus-config", str(bad)], "error: .*unknown config key.*train_hourz"),
                      (["--corpus-config", str(tmp_path / "none.yaml")], "error: config file not found"),
                      (["--seed", "-1"], "error: MiniCorpusConfig.seed: must be >= 0"),
                      (["--jobs", "0"], "error: --jobs must be >= 1")]:
        with pytest.raises(SystemExit, match=msg):
            main(["prepare", "--corpus", "mini", "--out", str(out), *args])
    with pytest.raises(SystemExit, match="error: .*file/corpus is a file"):
        main(["prepare", "--corpus", "mini", "--corpus-config", str(conf), "--out", str(tmp_path / "file")])
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="error: TTS program.*not found on PATH"):
        main(["prepare", "--corpus", "mini", "--corpus-config", str(conf), "--out", str(out)])
    assert not out.exists()


def test_prepare_mini_unwinds_on_sigterm(tmp_path, monkeypatch, capsys):
    """SIGTERM (`kill PID`) ended the main process alone: its spawned workers, orphaned, went
    on synthesizing into the directory; now it unwinds like Ctrl-C (the pool stops them)."""
    import signal
    import time

    from asr.cli import main

    def terminated(out_dir, config, num_jobs=2, progress=True):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            raise AssertionError("no SIGTERM handler: the signal would end the main process and orphan the workers")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the build")

    monkeypatch.setattr(corpus_mod, "build_mini_librispeech", terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--corpus", "mini", "--out", str(tmp_path / "data")])
    assert e.value.code == 143 and "interrupted by SIGTERM: the same command resumes" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
