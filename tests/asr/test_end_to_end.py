"""A tiny real training run through the CLI, decoding, and `asr transcribe` on bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from tests.conftest import TINY_TRAIN, run_with_terminal_stderr, tone, write_audio


@pytest.fixture(scope="module")
def trained(trained_ctc) -> Path:
    """The session's small LSTM CTC model (tests/conftest.py: ``trained_ctc``)."""
    return trained_ctc


def test_training_loss_falls_and_outputs_exist(trained):
    recs = [json.loads(line) for line in open(trained / "metrics.jsonl")]
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    assert len(losses) >= 20
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.5 * first, (first, last)
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert epochs and all(0.0 <= r["padding_fraction"] < 0.5 for r in epochs)
    assert "dev_wer" in epochs[-1] and "dev_loss" in epochs[-1]
    for name in ("model.pt", "curves.png", "config.yaml", "train.log"):
        assert (trained / name).is_file(), name


def test_decode_is_not_empty_on_training_audio(trained, tiny_data, capsys):
    main(["decode", "--model", str(trained / "model.pt"), "--cuts", str(trained / "cuts_few.jsonl.gz"), "--out", str(trained / "dec")])
    table = json.loads((trained / "dec" / "wer.json").read_text())["splits"]
    assert table["few"]["words"] > 0
    lines = (trained / "dec" / "results_few.txt").read_text().splitlines()
    from lhotse import CutSet

    # batches run longest first; the results list the cuts in the manifest's order
    assert [l.split("\t")[0] for l in lines[::2]] == list(CutSet.from_file(trained / "cuts_few.jsonl.gz").ids)
    refs = [l.split("REF: ", 1)[1] for l in lines if "REF: " in l]
    hyps = [l.split("HYP: ", 1)[1] for l in lines if "HYP: " in l]
    assert len(hyps) == 6 and all(h.strip() for h in hyps), hyps
    # 200 steps on 6 cuts already spell much of the text: character error rate well below chance
    from asr.decoding.wer import word_errors

    char_errors = sum(sum(word_errors(list(r), list(h))) for r, h in zip(refs, hyps))
    cer = char_errors / sum(len(r) for r in refs)
    assert cer < 0.7, (cer, hyps)


@pytest.fixture(scope="module")
def trained_tdt(tiny_data, trained, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("exp_tdt")
    cfg = exp / "conf.yaml"
    cfg.write_text(
        f"data:\n  train: [{trained}/cuts_few.jsonl.gz]\n"
        f"  dev: [{tiny_data}/manifests/cuts_dev.jsonl.gz]\n  tokenizer: {tiny_data}/lang_bpe48\n"
    )
    main(["train", "--config", str(cfg), "--exp-dir", str(exp), "--no-progress", "--set", *TINY_TRAIN,
          "max_steps=300", "model.head=tdt", "model.ctc_weight=0.3",
          "model.transducer={predictor: stateless, pred_dim: 64, joint_dim: 64}"])
    return exp


def test_hybrid_tdt_trains_and_decodes_every_way(trained_tdt, trained, capsys):
    recs = [json.loads(line) for line in open(trained_tdt / "metrics.jsonl")]
    steps = [r for r in recs if r["kind"] == "train"]
    assert {"transducer_loss", "ctc_loss"} <= steps[0].keys()
    first, last = np.mean([r["loss"] for r in steps[:3]]), np.mean([r["loss"] for r in steps[-3:]])
    assert last < 0.5 * first, (first, last)
    cuts = str(trained / "cuts_few.jsonl.gz")
    hyps = {}
    for name, extra in [("greedy", []), ("beam", ["--method", "beam"]), ("chunkwise", ["--chunkwise"]),
                        ("ctc", ["--use-ctc"]), ("guard", ["--ctc-guard", "0.9"]),
                        ("guard_chunkwise", ["--ctc-guard", "0.9", "--chunkwise"])]:
        out = trained_tdt / f"dec_{name}"
        main(["decode", "--model", str(trained_tdt / "model.pt"), "--cuts", cuts, "--out", str(out), *extra])
        lines = (out / "results_few.txt").read_text().splitlines()
        hyps[name] = [l.split("HYP: ", 1)[1] for l in lines if "HYP: " in l]
        assert json.loads((out / "wer.json").read_text())["splits"]["few"]["words"] > 0
    assert hyps["chunkwise"] == hyps["greedy"]  # real streaming == whole utterance
    assert hyps["guard_chunkwise"] == hyps["guard"]
    assert all(h.strip() for h in hyps["greedy"]), hyps
    out = capsys.readouterr().out
    assert "decoding: beam (beam 4)" in out and "TDT blank jumps guarded by the CTC head (blank > 0.9)" in out
    model = str(trained_tdt / "model.pt")
    for bad, msg in [(["--ctc-guard", "0.9", "--method", "beam"], "applies to the transducer's greedy search"),
                     (["--ctc-guard", "0.9", "--use-ctc"], "applies to the transducer's greedy search"),
                     (["--ctc-guard", "1"], r"in \(0, 1\)"),
                     (["--ctc-guard", "0.9", "--model", str(trained / "model.pt")], "applies to TDT models")]:
        args = ["decode", "--model", model, "--cuts", cuts, "--out", str(trained_tdt / "dec_bad"), *bad]
        with pytest.raises(SystemExit, match=msg):
            main(args)


def test_bench_search_counts_a_trained_models_steps(trained_tdt, trained, capsys):
    """`asr bench search --model`: what the trained TDT's greedy search does on cut manifests;
    a model without a transducer and a look-ahead for a non-Conformer are refused clearly."""
    from asr.decoding.bench import count_model_steps

    cuts = trained / "cuts_few.jsonl.gz"
    main(["bench", "search", "--model", str(trained_tdt / "model.pt"), "--cuts", str(cuts)])
    out = capsys.readouterr().out
    assert "lstm tdt; greedy search, one utterance at a time" in out and "6 utterances" in out, out
    r = count_model_steps(trained_tdt / "model.pt", [cuts], max_cuts=2)[str(cuts)]
    assert r["utterances"] == 2 and sum(r["decisions"].values()) <= r["joint_calls"] <= sum(r["decisions"].values()) + 2
    assert any(k.startswith("label") for k in r["decisions"]) and any(k.startswith("blank") for k in r["decisions"]), r
    with pytest.raises(SystemExit, match="no transducer head"):
        main(["bench", "search", "--model", str(trained / "model.pt"), "--cuts", str(cuts)])
    with pytest.raises(SystemExit, match="--context applies to Conformer"):
        main(["bench", "search", "--model", str(trained_tdt / "model.pt"), "--cuts", str(cuts), "--context", "8,2"])


def test_lm_trains_and_fuses_through_the_cli(trained_tdt, trained, capsys):
    """`asr lm` writes an ARPA LM over the model's tokens; `asr decode --lm` fuses it into the
    transducer's beam search, the hybrid's CTC prefix search and chunk-wise streaming."""
    cuts = str(trained / "cuts_few.jsonl.gz")
    model = str(trained_tdt / "model.pt")
    lm = trained_tdt / "lm" / "tokens.arpa.gz"
    main(["lm", "--model", model, "--cuts", cuts, "--dev", cuts, "--order", "4", "--out", str(lm)])
    out = capsys.readouterr().out
    assert lm.is_file() and "perplexity per token: train" in out
    import gzip
    import re

    header = re.findall(r"ngram \d+=(\d+)", gzip.open(lm, "rt").read())
    assert re.search(r"n-grams ([\d /]+)\)", out).group(1).split(" / ") == header  # the counts the file holds
    hyps = {}
    for name, extra in [("beam", []), ("lm", ["--lm", str(lm), "--lm-weight", "0.6", "--token-bonus", "0.5"]),
                        ("lm_chunkwise", ["--lm", str(lm), "--lm-weight", "0.6", "--token-bonus", "0.5", "--chunkwise"]),
                        ("lm_ctc", ["--lm", str(lm), "--lm-weight", "0.6", "--use-ctc"])]:
        out = trained_tdt / f"dec_{name}"
        main(["decode", "--model", model, "--cuts", cuts, "--out", str(out), "--method", "beam", *extra])
        lines = (out / "results_few.txt").read_text().splitlines()
        hyps[name] = [l.split("HYP: ", 1)[1] for l in lines if "HYP: " in l]
        assert len(hyps[name]) == 6
    assert hyps["lm_chunkwise"] == hyps["lm"]  # the LM context is carried across chunks
    assert "LM tokens.arpa.gz (weight 0.6, bonus 0.5)" in capsys.readouterr().out
    for bad, msg in [(["--lm", str(lm)], "add --method beam"),
                     (["--method", "beam", "--lm", str(lm.with_name("missing.arpa"))], "does not exist"),
                     (["--method", "beam", "--lm", str(lm), "--use-ctc", "--chunkwise"], "streaming CTC decoding is greedy"),
                     (["--device", "nonsense"], "--device nonsense")]:
        with pytest.raises(SystemExit, match=msg):
            main(["decode", "--model", model, "--cuts", cuts, "--out", str(trained_tdt / "dec_bad"), *bad])
    with pytest.raises(SystemExit, match="add --method beam"):  # said before a model is loaded
        main(["decode", "--model", str(trained_tdt / "no-such-model.pt"), "--cuts", cuts, "--lm", str(lm)])
    with pytest.raises(SystemExit, match="one of them"):
        main(["lm", "--cuts", cuts, "--out", str(lm)])


def test_word_lm_restricts_beam_search_to_its_vocabulary(trained_tdt, trained, capsys):
    """`asr lm --unit word` writes a word ARPA; `asr decode --lm-unit word` outputs only its
    words, chunk-wise as whole, on the transducer and on the hybrid's CTC head."""
    import gzip
    import json

    cuts = str(trained / "cuts_few.jsonl.gz")
    model = str(trained_tdt / "model.pt")
    lm = trained_tdt / "lm" / "words.arpa.gz"
    main(["lm", "--unit", "word", "--cuts", cuts, "--dev", cuts, "--order", "2", "--out", str(lm)])
    assert "perplexity per word: train" in capsys.readouterr().out
    from lhotse import CutSet

    oov = list(CutSet.from_file(cuts))
    for c in oov:
        c.supervisions[0].text = "QUUX ZORBLE"
    CutSet.from_cuts(oov).to_file(trained_tdt / "cuts_oov.jsonl.gz")  # no dev sentence in the vocabulary: said, not a crash
    main(["lm", "--unit", "word", "--cuts", cuts, "--dev", str(trained_tdt / "cuts_oov.jsonl.gz"), "--order", "2",
          "--out", str(trained_tdt / "lm" / "words_oov.arpa.gz")])
    assert "dev - (no dev sentence is all in the vocabulary)" in capsys.readouterr().out
    vocab = {w for line in gzip.open(cuts, "rt") for w in json.loads(line)["supervisions"][0]["text"].split()}
    hyps = {}
    for name, extra in [("whole", []), ("chunkwise", ["--chunkwise"]), ("ctc", ["--use-ctc"])]:
        out = trained_tdt / f"dec_words_{name}"
        main(["decode", "--model", model, "--cuts", cuts, "--out", str(out), "--method", "beam", "--lm", str(lm),
              "--lm-unit", "word", "--lm-weight", "1.0", "--token-bonus", "1.0", *extra])
        lines = (out / "results_few.txt").read_text().splitlines()
        hyps[name] = [l.split("HYP: ", 1)[1] for l in lines if "HYP: " in l]
        # every word but the last is the lexicon's (when no slot of the beam ends on a complete
        # word, the best one ends inside a word: this barely trained model's beam sometimes does)
        words = [w for h in hyps[name] for w in h.split()[:-1]]
        assert words and set(words) <= vocab, name
    assert hyps["chunkwise"] == hyps["whole"]


def test_model_file_is_self_contained_and_safe(trained):
    import torch

    import asr.models

    ckpt = torch.load(trained / "model.pt", weights_only=True)
    assert ckpt["format"] == "asr-model" and isinstance(ckpt["tokenizer"], bytes)
    model = asr.models.load(trained / "model.pt")
    out = model.transcribe(np.zeros(16000, dtype=np.float32))
    assert len(out) == 1 and isinstance(out[0].text, str)


def _transcribe(model: Path, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asr.cli", "transcribe", str(model), *map(str, files)], capture_output=True, text=True)


def test_transcribe_single_bad_files_give_clear_errors(trained, tmp_path):
    model = trained / "model.pt"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....not really a wave file")
    empty = write_audio(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    short = write_audio(tmp_path / "short.wav", tone(0.01), 16000)
    sf.write(tmp_path / "nanf.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    for f, msg in [
        (tmp_path / "missing.wav", "not found"),
        (corrupt, "cannot read audio file"),
        (empty, "no samples"),
        (short, "too short"),
        (tmp_path / "nanf.wav", "NaN"),
    ]:
        r = _transcribe(model, f)
        assert r.returncode != 0, f
        assert str(f) in r.stderr and msg in r.stderr, (f, r.stderr)
    r = _transcribe(tmp_path / "missing_model.pt", empty)
    assert r.returncode != 0 and "model file not found" in r.stderr
    bad_model = tmp_path / "truncated.pt"
    bad_model.write_bytes(model.read_bytes()[:1000])
    r = _transcribe(bad_model, empty)
    assert r.returncode != 0 and "truncated" in r.stderr


def test_transcribe_other_rates_and_stereo(trained, tiny_data, tmp_path):
    src = sorted((tiny_data / "corpus/LibriSpeech/train").rglob("*.flac"))[0]
    x, sr = sf.read(src, dtype="float32")
    from asr.data.audio import resample

    files = [
        write_audio(tmp_path / "a8k.wav", resample(x, sr, 8000), 8000),
        write_audio(tmp_path / "a44k.wav", resample(x, sr, 44100), 44100),
        write_audio(tmp_path / "stereo.wav", np.stack([x, x], axis=1), sr),
        src,
    ]
    r = _transcribe(trained / "model.pt", *files)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4
    texts = [l.split("\t")[1] for l in lines]
    # the stereo copy of the same mono signal decodes identically; rates decode to something
    assert texts[2] == texts[3]
    # on a terminal: a progress bar over the files, with the errors and results written above it
    missing = tmp_path / "missing.wav"
    cmd = [sys.executable, "-m", "asr.cli", "transcribe", str(trained / "model.pt"), *map(str, files[:2]), str(missing), *map(str, files[2:])]
    rc, stdout, terminal = run_with_terminal_stderr(cmd, Path(__file__).resolve().parents[2])
    assert rc == 1 and stdout == r.stdout, (stdout, terminal)
    assert "/5 [" in terminal and "file/s]" in terminal and f"audio file not found: {missing}" in terminal, terminal
    assert "\nerror: audio file not found" in terminal.replace("\r", "\n"), terminal  # a line of its own, not after the bar


def test_transcribe_with_the_ctc_guard(trained_tdt, trained, tiny_data, capsys):
    """`asr transcribe model.pt --ctc-guard P`: the guarded search's transcript, what
    ``model.decode(..., ctc_guard=P)`` gives on the same features; refused where it cannot apply."""
    import torch

    import asr.models
    from asr.data.audio import read_audio

    src = sorted((tiny_data / "corpus/LibriSpeech/train").rglob("*.flac"))[0]
    model = asr.models.load(trained_tdt / "model.pt")
    samples = read_audio(src, model.features.sample_rate)
    feats = torch.from_numpy(model.features.compute(samples))[None]
    with torch.no_grad():
        (want,) = model.decode(feats, torch.tensor([feats.shape[1]]), ctc_guard=0.9)
    main(["transcribe", str(trained_tdt / "model.pt"), str(src), "--ctc-guard", "0.9"])
    assert capsys.readouterr().out.strip() == f"{src}\t{model.hyp_to_transcript(want).text}"
    assert model.transcribe(samples, ctc_guard=0.9)[0].text == model.hyp_to_transcript(want).text
    main(["transcribe", str(trained_tdt / "model.pt"), str(src), "--use-ctc"])  # the hybrid's CTC head
    assert capsys.readouterr().out.strip() == f"{src}\t{model.transcribe(samples, use_ctc=True)[0].text}"
    with pytest.raises(SystemExit, match="applies to TDT models"):
        main(["transcribe", str(trained / "model.pt"), str(src), "--ctc-guard", "0.9"])
