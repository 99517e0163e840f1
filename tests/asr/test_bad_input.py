"""What a user gets for bad input to the Python API and the `asr` command: one clear error that
names the problem, before any work is lost or any output is written; never a silent wrong result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import asr.models
from asr.cli import main


@pytest.fixture(scope="module")
def model(trained_ctc):
    return asr.models.load(trained_ctc / "model.pt")


def test_transcribe_checks_arrays_as_it_checks_files(model):
    """Integer PCM used to decode as garbage and NaN as an empty transcript, without a word."""
    x = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    ok = model.transcribe(x)[0].text
    assert model.transcribe(x[:, None])[0].text == ok  # (N, 1) is mono
    assert model.transcribe(x.astype(np.float64))[0].text == ok
    nan = x.copy()
    nan[5] = np.nan
    for bad, kw, msg in [
        ((x * 32767).astype(np.int16), {}, "got int16 samples; divide"),
        (x * 32767, {}, r"\[-1, 1\], got .* at index"),
        (nan, {}, "NaN or inf"),
        (np.stack([x, x], 1), {}, "mono"),
        (x[:400], {}, r"too short: 25.0 ms \(400 samples"),
        (x, {"sample_rate": 0}, "sample_rate must be positive"),
    ]:
        with pytest.raises(ValueError, match=msg):
            model.transcribe(bad, **kw)
    with pytest.raises(ValueError, match="no audio given"):
        model.transcribe([])
    # a rate in kHz used to resample 1 s into 1000 s (gigabytes); an odd one into a 3.8M-tap filter
    for rate, msg in [(16, "outside 8000..192000 Hz"), (16001, "ratio of 16000/16001")]:
        with pytest.raises(ValueError, match=msg):
            model.transcribe(x, sample_rate=rate)
    with pytest.raises(ValueError, match="a list of numbers"):  # used to read as N scalar recordings
        model.transcribe(x.tolist())
    with pytest.raises(ValueError, match="beam must be an int >= 1, got 2.5"):  # a TypeError deep in the search
        model.transcribe(x, method="beam", beam=2.5)


def test_transcribe_takes_tensors_paths_generators_and_batches_by_length(model, trained_ctc):
    """A 1-D tensor used to read as a list of scalar recordings ("shape ()"); one call padded
    every recording to the longest in one batch (a 3-minute recording and 40 short files took
    9.9 GB); a float16 model failed on float32 features."""
    import soundfile as sf

    from asr.data.manifests import read_cut_manifest

    cuts = list(read_cut_manifest(trained_ctc / "cuts_few.jsonl.gz"))
    paths = [Path(c.recording.sources[0].source) for c in cuts]
    arrays = [sf.read(p, dtype="float32")[0] for p in paths]
    want = [t.text for t in model.transcribe(arrays)]
    assert [t.text for t in model.transcribe(torch.from_numpy(arrays[0]))] == want[:1]
    assert [t.text for t in model.transcribe(str(p) for p in paths)] == want  # a generator
    assert [t.text for t in model.transcribe(os.fsencode(paths[1]))] == want[1:2]  # a bytes path
    seen = []
    original = asr.models.ASRModel.decode

    def spy(self, x, lens, **kw):
        seen.append(lens.tolist())
        return original(self, x, lens, **kw)

    asr.models.ASRModel.decode = spy
    try:
        longest = max(len(a) for a in arrays) / 16000
        got = model.transcribe(arrays, batch_seconds=2.5 * longest)
    finally:
        asr.models.ASRModel.decode = original
    assert [t.text for t in got] == want and len(seen) > 1 and sum(map(len, seen)) == len(arrays)
    frames = 2.5 * longest * 100
    assert all(b == sorted(b, reverse=True) and len(b) * b[0] <= frames for b in seen), seen  # longest first, padded <= 2.5 x
    half = asr.models.load(trained_ctc / "model.pt").to(torch.bfloat16)
    assert len(half.transcribe(arrays[:2])) == 2


def test_streaming_partials_are_snapshots_and_bad_features_are_named(model):
    """CTC partial results were one object edited in place (every saved partial ended up equal
    to the final result); NaN features decoded as tokens; a stream whose encoder context changed
    failed with a wrong hint about padding."""
    from asr.decoding.streaming import StreamingRecognizer

    feats = torch.from_numpy(model.features.compute((0.1 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32)))
    rec = StreamingRecognizer(model.eval())
    first = rec.accept_features(feats[:60])
    saved = (list(first.tokens), list(first.frames), first.score)
    final = rec.finish()
    assert (first.tokens, first.frames, first.score) == saved and final is not first
    rec.reset()
    bad = feats[:30].clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf .*frame 7"):
        rec.accept_features(bad)
    chunk = model.encoder.streaming_params()["chunk_size"]
    model.encoder.set_chunk_size(chunk + 1)
    try:
        with pytest.raises(ValueError, match="streaming settings changed since this stream started.*reset"):
            rec.accept_features(feats[:30])
        rec.reset()
        rec.accept_features(feats[:30])
    finally:
        model.encoder.set_chunk_size(chunk)


def test_a_training_checkpoint_loads_and_a_damaged_model_file_is_named(trained_ctc, tmp_path):
    ckpt = max((trained_ctc / "checkpoints").glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    m = asr.models.load(ckpt)  # its "model" entry: the weights as of that step
    saved = torch.load(ckpt, weights_only=True)["model"]["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in m.state_dict().items())
    good = torch.load(trained_ctc / "model.pt", weights_only=True)
    for name, change, msg in [("nostate.pt", lambda d: d.pop("state_dict"), "missing 'state_dict'"),
                              ("fewer.pt", lambda d: d["state_dict"].popitem(), "Missing key"),
                              ("noconfig.pt", lambda d: d.pop("config"), "missing 'config'")]:
        d = {**good, "state_dict": dict(good["state_dict"])}
        change(d)
        torch.save(d, tmp_path / name)
        with pytest.raises(ValueError, match=f"{name}: a damaged model file.*{msg}"):
            asr.models.load(tmp_path / name)


def test_train_refuses_a_config_that_cannot_run_before_it_starts(tiny_data, tmp_path):
    """max_epochs=0 used to write an untrained model.pt and exit 0; config errors were tracebacks."""
    cfg = tmp_path / "conf.yaml"
    cfg.write_text(f"data:\n  train: [{tiny_data}/manifests/cuts_train.jsonl.gz]\n  tokenizer: {tiny_data}/lang_bpe48\n")
    exp = tmp_path / "exp"
    for sets, msg in [(["max_epochs=0"], "max_epochs must be >= 1, got 0"),
                      (["log_every=0"], "log_every must be >= 1"),
                      (["data.sampler.max_duration=0"], "data.sampler.max_duration must be > 0"),
                      (["optim.lr=.nan"], "optim.lr must be > 0"),
                      (["model.ctc_weight=2"], r"ctc_weight must be in \[0, 1\)"),
                      (["bogus=1"], "bogus"),
                      # the encoder's and heads' own checks, which used to run only once the data was read
                      (["model.encoder_config.subsampling=3"], "subsampling factor must be 2, 4 or 8"),
                      (["model.encoder_config.num_heads=5"], "divisible by num_heads=5"),
                      (["model.encoder_config.d_modle=128"], "d_modle"),
                      (["model.encoder_config.input_dim=40"], "set features.num_mel_bins"),
                      (["model.encoder=transformer"], "unknown encoder 'transformer'"),
                      (["model.head=tdt", "model.transducer.durations=[]"], "TDT durations must be"),
                      (["model.head=tdt", "model.transducer.omega=2"], r"omega is a probability in \[0, 1\]"),
                      (["model.dropout=1"], r"ModelConfig.dropout is a dropout probability in \[0, 1\)"),
                      (["optim.lr=abc"], "optim.lr"),
                      # torch's or lhotse's tracebacks after the first epoch, or silent gradient ascent
                      (["optim.weight_decay=-5"], "optim.weight_decay must be >= 0"),
                      (["optim.betas=[0.9,1.5]"], r"optim.betas must be two numbers in \[0, 1\)"),
                      (["optim.lr=.inf"], "optim.lr must be a finite number"),
                      (["optim.schedule=cosine", "optim.min_lr=-0.01"], "optim.min_lr must be >= 0"),
                      (["optim.schedule=eden", "optim.lr_batches=0"], "optim.lr_batches must be > 0"),
                      (["data.max_cut_duration=0"], "data.max_cut_duration must be > 0"),
                      (["data.dev_max_cuts=0"], "data.dev_max_cuts must be >= 1"),
                      (["data.sortagrad_epochs=-3"], "data.sortagrad_epochs must be >= 0"),
                      (["init_freeze_steps=5"], "init_freeze_steps needs init_from"),
                      ([f"data.dev=[{tiny_data}/manifests/cuts_dev.jsonl.gz,{tmp_path}/other/cuts_dev.jsonl.gz]"],
                       "two manifests are both named 'dev'"),
                      ([f"data.dev=[{tiny_data}/manifests/cuts_train.jsonl.gz]"], "is named 'train'"),
                      (["max_epochs=["], "not valid YAML")]:
        with pytest.raises(SystemExit, match=f"^error: .*{msg}"):
            main(["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", *sets])
        assert not exp.exists(), sets  # refused before anything was written
    with pytest.raises(SystemExit, match="^error: config file not found"):
        main(["train", "--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_epochs: [\n")
    with pytest.raises(SystemExit, match="^error: .*bad.yaml: not valid YAML .*line"):
        main(["train", "--config", str(bad)])
    exp.write_text("")
    with pytest.raises(SystemExit, match="^error: exp_dir .* is a file, not a directory"):
        main(["train", "--config", str(cfg), "--exp-dir", str(exp)])


def test_decode_checks_every_input_before_it_writes(trained_ctc, tmp_path):
    model, cuts = str(trained_ctc / "model.pt"), str(trained_ctc / "cuts_few.jsonl.gz")
    out = tmp_path / "dec"
    empty = tmp_path / "cuts_empty.jsonl"
    empty.write_text("")
    garbage = tmp_path / "cuts_garbage.jsonl"
    garbage.write_text("not json\n")
    for extra, msg in [(["--cuts", cuts, str(tmp_path / "cuts_missing.jsonl.gz")], "cut manifest not found"),
                       (["--cuts", str(empty)], "holds no cuts"),
                       (["--cuts", str(garbage)], "cannot read the cut manifest"),
                       (["--cuts", cuts, "--method", "beam", "--beam", "0"], "--beam must be >= 1"),
                       (["--cuts", cuts, "--max-duration", "0"], "--max-duration must be > 0"),
                       (["--cuts", cuts, "--compare-to", str(tmp_path / "nowhere")], "--compare-to"),
                       (["--cuts", cuts, cuts], "both named 'few'")]:
        with pytest.raises(SystemExit, match=msg):
            main(["decode", "--model", model, "--out", str(out), *extra])
        assert not out.exists(), extra
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="cannot make the output directory"):
        main(["decode", "--model", model, "--cuts", cuts, "--out", str(tmp_path / "file" / "dec")])


def test_a_decode_that_fails_keeps_the_splits_it_finished(trained_ctc, tmp_path, monkeypatch):
    """Results and wer.json used to be written once every split was decoded: a failure (or a
    Ctrl-C) in the last split of a long decode lost them all. A Ctrl-C that no command handles
    itself is one line and exit 130 (it was a KeyboardInterrupt traceback)."""
    import json
    import shutil

    from lhotse import CutSet

    import asr.training.trainer as trainer

    cuts = trained_ctc / "cuts_few.jsonl.gz"
    second = tmp_path / "cuts_again.jsonl.gz"
    shutil.copy(cuts, second)
    evaluate, calls = trainer.evaluate, []

    def fail_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*a, **kw)

    monkeypatch.setattr(trainer, "evaluate", fail_second)
    out = tmp_path / "dec"
    with pytest.raises(SystemExit) as stop:  # Ctrl-C: "interrupted", exit 130, not a traceback
        main(["decode", "--model", str(trained_ctc / "model.pt"), "--cuts", str(cuts), str(second), "--out", str(out)])
    assert stop.value.code == 130
    table = json.loads((out / "wer.json").read_text())["splits"]
    assert list(table) == ["few"] and table["few"]["words"] > 0
    assert (out / "results_few.txt").read_text().count("\tHYP: ") == len(CutSet.from_file(cuts))
    assert not (out / "results_again.txt").exists() and not list(out.glob(".*tmp"))


def test_lm_tokenizer_and_compare_refuse_bad_requests(trained_ctc, tmp_path, capsys):
    model, cuts = str(trained_ctc / "model.pt"), str(trained_ctc / "cuts_few.jsonl.gz")
    with pytest.raises(SystemExit, match="is a directory"):
        main(["lm", "--model", model, "--cuts", cuts, "--out", str(tmp_path)])
    token_lm = tmp_path / "tokens.arpa"
    main(["lm", "--model", model, "--cuts", cuts, "--order", "2", "--out", str(token_lm)])
    # a token LM given as a word LM used to decode at 96% WER, its "words" being pieces
    with pytest.raises(SystemExit, match="is a token LM, not a word LM"):
        main(["decode", "--model", model, "--cuts", cuts, "--method", "beam", "--lm", str(token_lm), "--lm-unit", "word",
              "--out", str(tmp_path / "dec")])
    for extra, msg in [(["--vocab-size", "0"], "--vocab-size must be >= 3"),
                       (["--out", str(token_lm)], "is a file")]:
        with pytest.raises(SystemExit, match=msg):
            main(["tokenizer", "--cuts", cuts, "--out", str(tmp_path / "tok"), *extra])
    main(["decode", "--model", model, "--cuts", cuts, "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="--samples must be >= 1"):
        main(["compare", str(tmp_path / "d"), str(tmp_path / "d"), "--samples", "0"])


def test_a_failed_lm_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from asr.decoding.lm import NgramLM

    lm = NgramLM.train([[1, 2, 3], [2, 3, 1]], 2, 4)

    def broken(self, tmp, names, gz, progress):
        Path(tmp).write_text("half an ARPA")
        raise OSError("disk full")

    monkeypatch.setattr(NgramLM, "_write_arpa", broken)
    with pytest.raises(OSError, match="disk full"):
        lm.save_arpa(tmp_path / "lm.arpa.gz", ["<blk>", "a", "b", "c"])
    assert list(tmp_path.iterdir()) == []


def test_transcribe_cli_options_reach_a_model_file(trained_ctc, tiny_data, capsys):
    """`asr transcribe model.pt` used to ignore --method, --beam and --use-ctc without a word."""
    from asr.data.audio import read_audio

    src = sorted((tiny_data / "corpus/LibriSpeech/train").rglob("*.flac"))[0]
    model = asr.models.load(trained_ctc / "model.pt")
    samples = read_audio(src, model.features.sample_rate)
    seen = []
    original = asr.models.ASRModel.decode

    def spy(self, x, lens, **kw):
        seen.append({k: kw.get(k) for k in ("method", "beam", "use_ctc")})
        return original(self, x, lens, **kw)

    asr.models.ASRModel.decode = spy
    try:
        main(["transcribe", str(trained_ctc / "model.pt"), str(src), "--method", "beam", "--beam", "3", "--threads", "1"])
    finally:
        asr.models.ASRModel.decode = original
    assert seen == [{"method": "beam", "beam": 3, "use_ctc": False}]
    want = model.transcribe(samples, method="beam", beam=3)[0].text
    assert capsys.readouterr().out.strip() == f"{src}\t{want}"
    for extra, msg in [(["--int8"], "--int8 applies to --onnx"), (["--beam", "0"], "--beam and --threads must be >= 1"),
                       (["--use-ctc", "--ctc-guard", "0.9"], "CTC guard")]:
        with pytest.raises(SystemExit, match=msg):
            main(["transcribe", str(trained_ctc / "model.pt"), str(src), *extra])


def test_transcribe_cli_fuses_an_lm_into_a_model_files_beam_search(trained_ctc, tiny_data, tmp_path, capsys):
    """`asr transcribe model.pt --method beam --lm F [--lm-unit word]` fuses the LM as `asr decode`
    does (it had no --lm: the best decoding was reachable from manifests only)."""
    from asr.data.audio import read_audio
    from asr.decoding.lexicon import load_lm, train_word_lm
    from asr.decoding.lm import LMFusion

    from lhotse import CutSet

    cut = CutSet.from_file(trained_ctc / "cuts_few.jsonl.gz")[0]
    src = cut.recording.sources[0].source
    model = asr.models.load(trained_ctc / "model.pt")
    tok = model.tokenizer
    samples = read_audio(src, model.features.sample_rate)
    # a few of its words and others, in the transcripts' case
    words = cut.supervisions[0].text.split()
    lm, symbols = train_word_lm([" ".join(words[:3]), " ".join(words[2:5]), "OTHER WORDS HERE"], 2)
    lm.save_arpa(tmp_path / "words.arpa", symbols)
    fusion = LMFusion(load_lm(tmp_path / "words.arpa", "word", tok.pieces(), tok.encode_batch), 1.0, 2.0)
    want = model.transcribe(samples, method="beam", beam=3, fusion=fusion)[0].text
    assert want != model.transcribe(samples, method="beam", beam=3)[0].text, "the LM should change the transcript"
    main(["transcribe", str(trained_ctc / "model.pt"), str(src), "--method", "beam", "--beam", "3", "--lm",
          str(tmp_path / "words.arpa"), "--lm-unit", "word", "--lm-weight", "1.0", "--token-bonus", "2.0"])
    assert capsys.readouterr().out.strip() == f"{src}\t{want}"
    for extra, msg in [(["--lm", "x.arpa"], "add --method beam"), (["--lm-weight", "1"], "add --lm FILE"),
                       (["--lm-unit", "word"], "add --lm FILE"),
                       (["--method", "beam", "--lm", str(tmp_path / "words.arpa"), "--lm-weight", "-1"], ">= 0"),
                       (["--method", "beam", "--lm", str(tmp_path / "missing.arpa")], "--lm: .*missing.arpa")]:
        with pytest.raises(SystemExit, match=msg):
            main(["transcribe", str(trained_ctc / "model.pt"), str(src), *extra])


def test_an_exp_dir_of_another_model_is_refused_before_anything_is_written(trained_ctc, tiny_data, tmp_path, capsys):
    """Resuming with another model config used to fail on every checkpoint, start over, truncate
    metrics.jsonl, and rotate the new run's checkpoints out behind the old run's; another
    tokenizer of the same size resumed silently, pairing the weights with other ids."""
    from tests.conftest import TINY_TRAIN

    cfg = tmp_path / "conf.yaml"
    cfg.write_text(f"data:\n  train: [{trained_ctc}/cuts_few.jsonl.gz]\n  tokenizer: {tiny_data}/lang_bpe48\n")
    exp = tmp_path / "exp"
    run = ["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", *TINY_TRAIN, "max_steps=4",
           "save_every_steps=2", "valid_every_epochs=1"]
    main(run)
    before = {p.name: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")}
    assert "ckpt-4.pt" in before
    main(["tokenizer", "--cuts", f"{trained_ctc}/cuts_few.jsonl.gz", "--model-type", "char", "--out", str(tmp_path / "chars")])
    for change, msg in [("model.encoder_config={preset: small, num_layers: 2, hidden_size: 128, proj_size: 64, input_size: 64}",
                         "another model"),
                        (f"data.tokenizer={tmp_path / 'chars'}", "another data.tokenizer"),
                        ("features.num_mel_bins=40", "another features")]:
        with pytest.raises(SystemExit, match=f"^error: .*{msg}.*use a new --exp-dir"):
            main([*run, change])
        now = {p.name: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")}
        assert now == before, change  # not a file touched
    (exp / "checkpoints" / "ckpt-abc.pt").write_text("not ours")  # ignored, not int('abc')
    main([*run, "max_steps=6"])  # the same model trains on
    assert (exp / "checkpoints" / "ckpt-6.pt").is_file()
    for p in (exp / "checkpoints").glob("ckpt-[0-9]*.pt"):
        p.unlink()
    capsys.readouterr()
    main([*run, "max_steps=2"])
    assert "no checkpoint to resume from: training starts from scratch and replaces them" in capsys.readouterr().err
    for sets, msg in [([f"init_from={tmp_path / 'missing.pt'}"], "init_from: .*missing.pt not found"),
                      ([f"data.train=[{tmp_path / 'nowhere.jsonl.gz'}]"], "data.train: .*nowhere.jsonl.gz not found")]:
        with pytest.raises(SystemExit, match=f"^error: {msg}"):
            main([*run, *sets])


def test_prepare_refuses_what_it_cannot_read_before_writing(tiny_data, tmp_path):
    src = tiny_data / "corpus" / "LibriSpeech"
    (tmp_path / "file").write_text("")
    for extra, msg in [(["--corpus", str(tmp_path / "nowhere")], "corpus not found"),
                       (["--corpus", str(tmp_path / "file")], "file"),
                       (["--corpus", str(src), "--out", str(tmp_path / "file")], "is a file"),
                       (["--corpus", str(src), "--train-parts", "nosuch"], "--train-parts nosuch: not among the parts"),
                       (["--corpus", str(src), "--tokenizer", str(tmp_path / "missing.model")], "missing.model")]:
        args = ["prepare", "--out", str(tmp_path / "out"), *extra]
        with pytest.raises(SystemExit, match="^error: .*" + msg):
            main(args)
        assert not (tmp_path / "out").exists(), extra


def test_lm_files_and_weights_that_would_decode_wrongly_are_refused(trained_ctc, tmp_path):
    """A truncated ARPA used to load and decode worse without a word; NaN or inf weights wiped
    out every transcript; a plain ARPA named .gz was a BadGzipFile traceback."""
    import gzip
    import shutil

    model, cuts = str(trained_ctc / "model.pt"), str(trained_ctc / "cuts_few.jsonl.gz")
    lm = tmp_path / "tokens.arpa"
    main(["lm", "--model", model, "--cuts", cuts, "--order", "3", "--out", str(lm)])
    text = lm.read_text()
    decode = ["decode", "--model", model, "--cuts", cuts, "--method", "beam", "--beam", "2", "--out", str(tmp_path / "d")]
    shutil.copy(lm, tmp_path / "plain.arpa.gz")  # named .gz, plain text: read as what it is
    (tmp_path / "packed.arpa").write_bytes(gzip.compress(lm.read_bytes()))  # gzip without the name
    main([*decode, "--lm", str(lm)])
    want = (tmp_path / "d" / "results_few.txt").read_text()
    for same in ("plain.arpa.gz", "packed.arpa"):
        main([*decode, "--lm", str(tmp_path / same)])
        assert (tmp_path / "d" / "results_few.txt").read_text() == want, same
    lines = text.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("\\3-grams:"))
    variants = {"cut.arpa": ("\n".join(lines[: k + 3]) + "\n", "no \\\\end\\\\ line: the file is truncated"),
                "short.arpa": ("\n".join(lines[: k + 3] + ["", "\\end\\"]) + "\n", "declares .* 3-grams, the file holds 2"),
                "nan.arpa": (text.replace(lines[k + 1].split()[0], "abc", 1), r"tokens?|:\d+: could not convert"),
                "binary.arpa": (None, "not an ARPA text file")}
    for name, (body, msg) in variants.items():
        if body is None:
            (tmp_path / name).write_bytes(b"\xff\xfe\x00garbage" * 10)
        else:
            (tmp_path / name).write_text(body)
        with pytest.raises(SystemExit, match=msg):
            main([*decode, "--lm", str(tmp_path / name)])
    for extra, msg in [(["--lm", str(lm), "--lm-weight", "nan"], "must be finite"),
                       (["--lm", str(lm), "--token-bonus", "inf"], "must be finite"),
                       (["--token-bonus", "1.5"], "add --lm FILE"),
                       (["--int8"], "--int8 apply to --onnx")]:
        with pytest.raises(SystemExit, match=msg):
            main([*decode, *extra])


def test_bench_search_refuses_bad_requests(trained_ctc, capsys):
    for args, msg in [(["--batch", "0"], "--batch must be >= 1"), (["--beam", "0"], "--beam must be >= 1"),
                      (["--model", "/nope.pt", "--cuts", "x"], "/nope.pt: no such file"),
                      (["--cuts", str(trained_ctc / "cuts_few.jsonl.gz")], "apply to a trained --model"),
                      (["--device", "foo"], "is not a torch device"), (["--seconds", "0.01"], "less than one frame"),
                      (["--model", str(trained_ctc / "model.pt"), "--cuts", "x", "--max-cuts", "0"], "--max-cuts must be >= 1")]:
        with pytest.raises(SystemExit):
            main(["bench", "search", *args])
        err = capsys.readouterr().err
        assert "asr bench search: error: " in err and msg in err, err
