"""Manifests from every source kind, bad input skipped and counted, batches and augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.dataset import ASRDataset, AugmentConfig, SamplerConfig, make_loader, make_sampler
from asr.data.features import FeatureConfig
from asr.data.manifests import SkipCounter, detect_source, load_cuts, prepare_cuts
from asr.data.tokenizer import Tokenizer
from tests.conftest import speak, tone, write_audio


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small LibriSpeech-layout corpus with good files and every kind of bad file."""
    root = tmp_path_factory.mktemp("ls") / "LibriSpeech" / "train"
    ch = root / "11" / "22"
    good = {
        "11-22-0000": "HELLO THERE GENERAL",
        "11-22-0001": "THE CAT SAT ON THE MAT",
        "11-22-0002": "A BIRD IN THE HAND",
    }
    for uid, text in good.items():
        wav = speak(text.lower(), ch / f"{uid}.wav")
        data, sr = sf.read(wav)
        sf.write(ch / f"{uid}.flac", data, sr)  # 22050 Hz: resampled on load
        wav.unlink()
    (ch / "11-22-0003.flac").write_bytes(b"this is not audio at all")  # corrupt
    write_audio(ch / "11-22-0004.flac", np.zeros(0, dtype=np.float32), 16000)  # zero-length
    write_audio(ch / "11-22-0005.flac", tone(0.03), 16000)  # very short
    # 11-22-0006 is listed but missing
    write_audio(ch / "11-22-0007.flac", tone(1.5, sr=16000, channels=2), 16000)  # stereo
    write_audio(ch / "11-22-0008.flac", tone(1.5, sr=44100), 44100)  # 44.1 kHz
    write_audio(ch / "11-22-0009.flac", tone(1.5, sr=8000), 8000)  # 8 kHz
    lines = {**good, "11-22-0003": "CORRUPT", "11-22-0004": "EMPTY", "11-22-0005": "SHORT", "11-22-0006": "MISSING",
             "11-22-0007": "STEREO FILE", "11-22-0008": "FAST RATE", "11-22-0009": "SLOW RATE"}
    (ch / "11-22.trans.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(lines.items())))
    return root.parent


def test_librispeech_dir_skips_and_counts_bad_files(corpus):
    assert detect_source(corpus) == "librispeech"
    skipped = SkipCounter()
    cuts = load_cuts(corpus, skipped=skipped)
    ids = {c.id for c in cuts}
    assert {"11-22-0000", "11-22-0001", "11-22-0002", "11-22-0007", "11-22-0008", "11-22-0009"} <= ids
    assert "11-22-0003" not in ids and "11-22-0006" not in ids and "11-22-0004" not in ids
    assert skipped.counts["unreadable_audio"] >= 1
    assert skipped.counts["missing_file"] == 1
    assert skipped.total == 3 + (1 if "11-22-0005" not in ids else 0)
    prepared = prepare_cuts(cuts, skipped=skipped, min_duration=0.1)
    pids = {c.id for c in prepared}
    assert "11-22-0005" not in pids and skipped.counts["too_short"] + skipped.counts["empty_audio"] >= 1
    assert all(c.sampling_rate == 16000 for c in prepared)


def test_transcript_defects_are_counted_or_named(corpus, tmp_path):
    """A chapter without a transcript used to vanish uncounted; a repeated utterance id came out
    as two cuts under random ids with the first text; a transcript in Latin-1 was a bare
    UnicodeDecodeError."""
    import shutil

    root = tmp_path / "LibriSpeech"
    shutil.copytree(corpus, root)
    ch = root / "train" / "11" / "22"
    orphan = root / "train" / "11" / "33"
    orphan.mkdir()
    for uid in ("11-33-0000", "11-33-0001"):
        shutil.copy(ch / "11-22-0000.flac", orphan / f"{uid}.flac")
    trans = ch / "11-22.trans.txt"
    trans.write_text(trans.read_text() + "11-22-0001 A SECOND TEXT FOR THE CAT\n11-22-0002\n")
    skipped = SkipCounter()
    cuts = load_cuts(root, skipped=skipped)
    ids = [c.id for c in cuts]
    assert len(ids) == len(set(ids)) and "11-22-0001" in ids and "11-22-0002" in ids
    assert next(c for c in cuts if c.id == "11-22-0001").supervisions[0].text == "THE CAT SAT ON THE MAT"
    assert skipped.counts["no_transcript"] == 2 and skipped.counts["duplicate_id"] == 2
    trans.write_bytes(trans.read_bytes() + "11-22-0010 CAF\u00c9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="11-22.trans.txt: not UTF-8"):
        load_cuts(root, skipped=SkipCounter())


def test_resampled_and_downmixed_audio_loads_as_16k_mono(corpus):
    cuts = {c.id: c for c in prepare_cuts(load_cuts(corpus))}
    ds = ASRDataset(None, FeatureConfig(), None)
    for uid in ("11-22-0007", "11-22-0008", "11-22-0009", "11-22-0000"):
        cut = cuts[uid]
        feats = ds.load_features(cut)
        assert feats.shape[1] == 80 and np.isfinite(feats).all()
        assert abs(feats.shape[0] - cut.duration * 100) <= 2, (uid, feats.shape, cut.duration)
    stereo = cuts["11-22-0007"].load_audio()
    assert stereo.shape[0] == 1  # downmixed


def test_multichannel_cuts_are_the_channels_average_and_can_be_written(corpus, tmp_path):
    """lhotse's downmix summed the channels, repeated the supervision per channel and rendered
    the mix into memory, which made `asr prepare` crash writing the manifest (bytes are not JSON)."""
    from lhotse import CutSet

    cuts = prepare_cuts(load_cuts(corpus))
    path = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(path)
    cut = {c.id: c for c in CutSet.from_file(path)}["11-22-0007"]
    assert len(cut.supervisions) == 1 and cut.supervisions[0].text == "STEREO FILE"
    audio = ASRDataset(None, FeatureConfig(), None).load_features  # loads and downmixes like training does
    assert audio(cut).shape[1] == 80
    x, _ = sf.read(corpus / "train" / "11" / "22" / "11-22-0007.flac", dtype="float32")
    np.testing.assert_allclose(cut.load_audio()[0], x.mean(axis=1), atol=1e-4)


def test_kaldi_and_jsonl_defects_are_counted_not_merged(tmp_path, monkeypatch):
    """Two sessions' mix.wav read in segments were one recording (a transcript paired with the
    other session's audio); duplicate ids were merged; bad segment times were an AssertionError;
    tab-separated lines lost every transcript; a byte-order mark joined the first id; a null text
    trained as "NONE"; a non-numeric duration stopped the whole run."""
    a, b = tmp_path / "s1" / "mix.wav", tmp_path / "s2" / "mix.wav"
    write_audio(a, tone(1.5), 16000)
    write_audio(b, tone(2.5, seed=1), 16000)
    d = tmp_path / "kaldi"
    d.mkdir()
    (d / "wav.scp").write_text(f"\ufeffsess1\t{a}\nsess2 {b}\nsess2 {a}\n", encoding="utf-8")
    (d / "segments").write_text("\ufeffs1u sess1 0.0 1.2\ns2u sess2 0.5 -1\nbad sess1 1.0 0.8\nlong sess1 0.5 3.0\n",
                                encoding="utf-8")
    (d / "text").write_text("\ufeffs1u one\ts1\ns2u two\nbad x\nlong y\nnoaudio z\n", encoding="utf-8")
    skipped = SkipCounter()
    cuts = {c.id: c for c in prepare_cuts(load_cuts(d, skipped=skipped))}
    assert sorted(cuts) == ["s1u", "s2u"]
    assert cuts["s1u"].supervisions[0].text == "ONE S1" and cuts["s2u"].supervisions[0].text == "TWO"
    assert cuts["s1u"].recording.sources[0].source == str(a) and cuts["s2u"].recording.sources[0].source == str(b)
    assert cuts["s1u"].recording.id != cuts["s2u"].recording.id
    assert abs(cuts["s2u"].duration - 2.0) < 1e-3  # end -1: to the end of the file
    assert dict(skipped.counts) == {"duplicate_id": 1, "bad_segment": 1, "segment_outside_audio": 1, "missing_file": 1}
    for name in ("segments", "text"):  # every Kaldi file: the same message, naming the file and the byte
        kept = (d / name).read_bytes()
        (d / name).write_bytes(kept.replace(b"s2u", b"s2\xffu"))
        with pytest.raises(ValueError, match=rf"{name}: not UTF-8 text \(byte 0xff at offset \d+\); convert it"):
            load_cuts(d)
        (d / name).write_bytes(kept)
    m = tmp_path / "m.jsonl"
    rows = [{"audio_filepath": str(a), "text": "first", "id": "dup", "offset": 0, "duration": 1.0},
            {"audio_filepath": str(b), "text": "second", "id": "dup", "offset": 0, "duration": 1.0},
            {"audio_filepath": str(b), "text": "third", "id": 7, "offset": 0, "duration": 1.0},
            {"audio_filepath": str(a), "text": None},
            {"audio_filepath": str(a), "text": "x", "duration": "n/a"},
            {"audio_filepath": str(a), "text": "x", "offset": -1.0, "duration": 1.0}]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skipped = SkipCounter()
    cuts = {c.id: c for c in prepare_cuts(load_cuts(m, skipped=skipped))}
    assert sorted(cuts) == ["7", "dup"] and cuts["dup"].supervisions[0].text == "FIRST"
    rel = tmp_path / "rel.jsonl"  # a path relative to the manifest, stored absolute (not relative to the cwd)
    rel.write_text(json.dumps({"audio_filepath": "s1/mix.wav", "text": "x"}) + "\n")
    monkeypatch.chdir(tmp_path)
    assert [c.recording.sources[0].source for c in load_cuts(Path("rel.jsonl"))] == [str(a.absolute())]
    assert cuts["dup"].recording.sources[0].source == str(a) and cuts["7"].recording.sources[0].source == str(b)
    assert dict(skipped.counts) == {"duplicate_id": 1, "bad_manifest_line": 2, "bad_segment": 1}


def test_kaldi_dir_with_segments(tmp_path, speech_wav):
    d = tmp_path / "kaldi"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec1 {speech_wav}\nrec2 {tmp_path / 'nope.wav'}\n")
    (d / "segments").write_text("u1 rec1 0.0 1.0\nu2 rec1 1.0 2.2\nu3 rec2 0 1\nu4 rec1 50 51\n")
    (d / "text").write_text("u1 the quick\nu2 brown fox\nu3 gone\nu4 outside\n")
    (d / "utt2spk").write_text("u1 spk\nu2 spk\nu3 spk\nu4 spk\n")
    assert detect_source(d) == "kaldi"
    skipped = SkipCounter()
    cuts = prepare_cuts(load_cuts(d, skipped=skipped))
    assert sorted(c.id for c in cuts) == ["u1", "u2"]
    assert skipped.counts["missing_file"] == 1 and skipped.counts["segment_outside_audio"] == 1
    assert [c.supervisions[0].text for c in sorted(cuts, key=lambda c: c.id)] == ["THE QUICK", "BROWN FOX"]
    assert abs(cuts["u2"].duration - 1.2) < 1e-3


def test_jsonl_manifest_and_lhotse_manifest(tmp_path, speech_wav):
    m = tmp_path / "train.jsonl"
    rows = [
        {"audio_filepath": str(speech_wav), "text": "The quick brown fox!"},
        {"audio_filepath": "missing.wav", "text": "x"},
        {"audio_filepath": str(speech_wav), "text": "jumps", "offset": 0.5, "duration": 0.7},
    ]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    assert detect_source(m) == "jsonl"
    skipped = SkipCounter()
    cuts = prepare_cuts(load_cuts(m, skipped=skipped))
    assert len(cuts) == 2 and skipped.counts["missing_file"] == 1 and skipped.counts["bad_manifest_line"] == 1
    assert sorted(c.supervisions[0].text for c in cuts) == ["JUMPS", "THE QUICK BROWN FOX"]
    out = tmp_path / "cuts_x.jsonl.gz"
    cuts.to_file(out)
    assert detect_source(out) == "lhotse"
    again = load_cuts(out)
    assert sorted(c.id for c in again) == sorted(c.id for c in cuts)
    with pytest.raises(ValueError, match="unknown manifest format"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"path": "a.wav"}\n')
        detect_source(bad)


def test_transcript_with_characters_the_tokenizer_lacks_is_skipped(corpus):
    cuts = prepare_cuts(load_cuts(corpus))
    tok = Tokenizer.train(["HELLO THERE", "THE CAT SAT ON THE MAT"] * 20, vocab_size=30)
    skipped = SkipCounter()
    kept = prepare_cuts(cuts, tokenizer=tok, skipped=skipped)
    # "A BIRD IN THE HAND" has B, D, I, N which this tokenizer never saw
    assert "11-22-0002" not in {c.id for c in kept} and "11-22-0001" in {c.id for c in kept}
    assert skipped.counts["chars_not_in_tokenizer"] >= 1


def test_tokenizer_training_names_digits_symbols_and_rare_letters(caplog):
    from asr.data.text import suspicious_chars

    text = ["THE CAT SAT ON THE MAT"] * 20 + ["THE CAT 42 É", "ЖУК & CO"]
    odd = suspicious_chars(text)
    assert set(odd) == {"4", "2", "&", "É", "Ж", "У", "К"} and odd["4"] == 1
    assert suspicious_chars(["ЖУРНАЛ ЖУК"] * 5) == {}  # a script's letters, frequent, are its language's
    with caplog.at_level("WARNING", logger="asr.data.tokenizer"):
        Tokenizer.train(text, vocab_size=40)
    assert "'4' x1" in caplog.text and "'&' x1" in caplog.text and "spell digits and symbols out" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="asr.data.tokenizer"):
        Tokenizer.train(text[:20], vocab_size=30)
    assert caplog.text == ""


def test_batches_padding_and_unreadable_audio_at_load_time(corpus, tmp_path):
    cuts = prepare_cuts(load_cuts(corpus))
    # Truncate one good file after its header was read: loading must skip it, not crash.
    victim = next(c for c in cuts if c.id == "11-22-0001")
    src = Path(victim.recording.sources[0].source)
    broken = tmp_path / src.name
    broken.write_bytes(src.read_bytes()[:200])
    victim.recording.sources[0].source = str(broken)
    # a float file of integer PCM values: inference refuses it, training used to take it
    loud = next(c for c in cuts if c.id == "11-22-0002")
    x, sr = sf.read(loud.recording.sources[0].source, dtype="float32")
    sf.write(tmp_path / "loud.wav", 3000 * x, sr, subtype="FLOAT")
    loud.recording.sources[0].source = str(tmp_path / "loud.wav")
    tok = Tokenizer.train([c.supervisions[0].text for c in cuts] * 5, vocab_size=30)
    ds = ASRDataset(tok, FeatureConfig(), AugmentConfig(spec_augment=True))
    batch = ds[cuts]
    assert batch["skipped"] == {"unreadable_audio": 1, "unnormalized_audio": 1}
    B = len(batch["cut_ids"])
    assert B == len(cuts) - 2 and batch["features"].shape[0] == B and batch["features"].shape[2] == 80
    lens = batch["feature_lens"]
    for i in range(B):
        assert torch.all(batch["features"][i, lens[i]:] == 0)
    assert all(len(t) > 0 for t in batch["tokens"])


def test_evaluation_batches_run_longest_first(corpus):
    cuts = prepare_cuts(load_cuts(corpus))
    durations = {c.id: c.duration for c in cuts}
    assert len(set(durations.values())) > 2 and list(durations.values()) != sorted(durations.values(), reverse=True)
    batches = list(make_sampler(cuts, SamplerConfig(max_duration=3.5), train=False))
    assert len(batches) > 1
    order = [c.id for b in batches for c in b]
    assert sorted(order) == sorted(cuts.ids)
    assert [durations[i] for i in order] == sorted(durations.values(), reverse=True)
    # by_duration=False keeps the given order (sortagrad hands over cuts sorted shortest first)
    kept = [c.id for b in make_sampler(cuts, SamplerConfig(max_duration=3.5), train=False, by_duration=False) for c in b]
    assert kept == list(cuts.ids)


def test_bucketing_sampler_and_augmentation(tmp_path, corpus, caplog):
    cuts = prepare_cuts(load_cuts(corpus))
    noise = tmp_path / "noise.flac"
    write_audio(noise, (0.1 * np.random.default_rng(0).standard_normal(16000 * 3)).astype(np.float32), 16000)
    from lhotse import Recording, RecordingSet

    RecordingSet.from_recordings([Recording.from_file(noise)]).to_file(tmp_path / "noise.jsonl.gz")
    aug = AugmentConfig(speed_prob=1.0, noise_prob=1.0, noise_manifest=str(tmp_path / "noise.jsonl.gz"), noise_snr=(5.0, 5.0))
    ds = ASRDataset(None, FeatureConfig(), aug, seed=1)
    plain = ASRDataset(None, FeatureConfig(), None)
    with caplog.at_level("WARNING"):  # a noise manifest without a probability mixes nothing in: said so
        ASRDataset(None, FeatureConfig(), AugmentConfig(noise_manifest=aug.noise_manifest))
    assert "noise_prob is 0: no noise is mixed in" in caplog.text
    sampler = make_sampler(cuts, SamplerConfig(max_duration=6.0, num_buckets=2), train=True, seed=0)
    seen = []
    for b in make_loader(ds, sampler):
        assert b["features"].ndim == 3 and torch.isfinite(b["features"]).all()
        seen += b["cut_ids"]
    assert len(seen) == len(cuts)
    # one bucket (asked for, or one cut to train on) samples without bucketing, all of the cuts
    for n, some in ((1, cuts), (4, cuts.subset(first=1))):
        once = make_sampler(some, SamplerConfig(max_duration=6.0, num_buckets=n), train=True, seed=0)
        assert sorted(c.id for b in once for c in b) == sorted(some.ids), n
    one = cuts.subset(cut_ids=["11-22-0000"])
    a, p = ds[one], plain[one]
    # speed perturbation changes the length; noise changes the values
    assert a["features"].shape[1] != p["features"].shape[1]


def test_prepare_trains_the_tokenizer_on_every_training_part_and_refuses_an_empty_one(tmp_path):
    """The tokenizer was trained on the first --train-parts part only (the second's letters
    then skipped every one of its cuts); a part whose every utterance was skipped was written
    as an empty manifest with exit 0."""
    from asr.cli import main

    root = tmp_path / "LibriSpeech"
    for part, spk, words in [("train-a", "1", ["ABC", "CAB"]), ("train-b", "2", ["XYZ", "ZYX"]), ("dev", "3", ["ABX"])]:
        ch = root / part / spk / "1"
        for i, w in enumerate(words):
            write_audio(ch / f"{spk}-1-{i:04d}.flac", tone(1.0, seed=i), 16000)
        (ch / f"{spk}-1.trans.txt").write_text("".join(f"{spk}-1-{i:04d} {w}\n" for i, w in enumerate(words)))
    out = tmp_path / "out"
    main(["prepare", "--corpus", str(root), "--out", str(out), "--train-parts", "train-a", "train-b", "--model-type", "char"])
    tok = Tokenizer.load(out / "lang_char")
    assert not tok.missing_chars("ABCXYZ")
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert {k: v["cuts"] for k, v in summary.items()} == {"train-a": 2, "train-b": 2, "dev": 1}
    (root / "dev" / "3" / "1" / "3-1-0000.flac").write_bytes(b"not audio")
    with pytest.raises(SystemExit, match="no usable cuts in dev"):
        main(["prepare", "--corpus", str(root), "--out", str(out), "--train-parts", "train-a", "train-b", "--model-type", "char"])
    assert not (out / "manifests" / "cuts_dev.jsonl.gz").exists()  # the earlier run's is gone with it


def test_prepare_noise_reads_musan_parts_skips_bad_files_and_refuses_unknown_parts(tmp_path, capsys):
    """A misspelt --parts took the whole dir (speech included) and a misspelt one beside a good
    one was dropped, both silently; one unreadable .wav among thousands aborted with a
    traceback; --out a file was a traceback."""
    from lhotse import RecordingSet

    from asr.cli import main

    musan = tmp_path / "musan"
    for i, part in enumerate(["noise/free-sound", "noise/sound-bible", "music/fma", "speech/librivox"]):
        write_audio(musan / part / f"{part.replace('/', '-')}-{i:04d}.wav", tone(1.0, seed=i), 16000)
    (musan / "noise" / "free-sound" / "ANNOTATIONS").write_text("not audio, not .wav\n")
    out = tmp_path / "out"
    main(["prepare-noise", "--musan", str(musan), "--out", str(out)])
    assert len(RecordingSet.from_file(out / "recordings.jsonl.gz")) == 4
    main(["prepare-noise", "--musan", str(musan), "--parts", "noise", "--out", str(out)])
    recs = RecordingSet.from_file(out / "recordings.jsonl.gz")
    assert sorted(r.id for r in recs) == ["noise-free-sound-0000", "noise-sound-bible-0001"]
    for parts in (["nosie"], ["noise", "speeech"]):
        with pytest.raises(SystemExit, match=f"--parts {parts[-1]}: no such directory in .*music, noise, speech"):
            main(["prepare-noise", "--musan", str(musan), "--parts", *parts, "--out", str(tmp_path / "typo")])
    assert not (tmp_path / "typo").exists()

    (musan / "noise" / "free-sound" / "broken.wav").write_bytes(b"RIFF not a wav")
    sf.write(musan / "noise" / "free-sound" / "empty.wav", np.zeros(0, np.float32), 16000)
    capsys.readouterr()
    main(["prepare-noise", "--musan", str(musan), "--parts", "noise", "--out", str(out)])
    assert len(RecordingSet.from_file(out / "recordings.jsonl.gz")) == 2
    assert "2 unreadable file(s) skipped" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    for args, msg in [(["--musan", str(tmp_path / "empty")], "error: no .wav files under"),
                      (["--musan", str(musan / "noise" / "free-sound" / "broken.wav")], "error: not a directory"),
                      (["--musan", str(musan), "--out", str(tmp_path / "file")], "error: --out .* is a file")]:
        with pytest.raises(SystemExit, match=msg):
            main(["prepare-noise", "--out", str(out), *args])


def test_tokenizer_names_a_vocabulary_the_text_cannot_fill_and_a_manifest_that_is_not_cuts(tmp_path, caplog):
    """--vocab-size 100000 on a small text gave a few hundred tokens without a word; a
    RecordingSet given as --cuts was an AttributeError traceback ('Recording' has no
    'supervisions')."""
    from lhotse import Recording, RecordingSet

    from asr.cli import main

    text = ["THE CAT SAT ON THE MAT", "A DOG ATE THE HAT"] * 10
    with caplog.at_level("WARNING", logger="asr.data.tokenizer"):
        tok = Tokenizer.train(text, vocab_size=1000)
    assert len(tok) < 1000 and f"asked for 1000 tokens, but the training text (20 sentences) gives only {len(tok)}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="asr.data.tokenizer"):
        Tokenizer.train(text, vocab_size=1000, model_type="char")  # the size means nothing there
    assert caplog.text == ""
    wav = write_audio(tmp_path / "a.wav", tone(1.0), 16000)
    RecordingSet.from_recordings([Recording.from_file(wav)]).to_file(tmp_path / "recordings.jsonl.gz")
    with pytest.raises(SystemExit, match="is a lhotse RecordingSet, not a cut manifest"):
        main(["tokenizer", "--cuts", str(tmp_path / "recordings.jsonl.gz"), "--out", str(tmp_path / "tok")])
