"""The runtime and its commands without torch, ``asr transcribe --onnx``, ``asr stream``, and the
benchmark on its tiny setting."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.data.audio import read_audio

from ..conftest import run_with_terminal_stderr, speak
from .helpers import build, synthetic_audio, torch_stream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_audio")
    speech = speak("the quick brown fox jumps over the lazy dog", root / "fox.wav")  # 22050 Hz
    synth = root / "synth.wav"
    sf.write(str(synth), synthetic_audio(1.7, seed=50), 16000)
    return speech, synth


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, wavs):
    """An emitting tiny transducer set on the speech and synthetic audio."""
    calib = np.concatenate([read_audio(wavs[0], 16000), synthetic_audio(2.5, seed=0)])
    return build(tmp_path_factory.mktemp("cli"), "conformer", "rnnt", calib=calib)


NO_TORCH = """
import json, sys
import soundfile as sf
import serve
from serve import Recognizer
rec = Recognizer(sys.argv[1], endpoint=None)
x, sr = sf.read(sys.argv[2], dtype="float32")
s = rec.create_stream()
for i in range(0, len(x), 1000):
    s.accept_waveform(sr, x[i : i + 1000])
    rec.decode([s])
s.input_finished()
rec.decode([s])
print("API", json.dumps(s.result().token_ids))
from asr.cli import main
main(["transcribe", "--onnx", sys.argv[1], sys.argv[2], "--timestamps"])
main(["stream", "--onnx", sys.argv[1], sys.argv[2], "--piece-ms", "50"])
print("WORD_LM")  # beam search with a word LM, spelled by the export's bpe.model
main(["transcribe", "--onnx", sys.argv[1], sys.argv[2], "--method", "beam", "--lm", sys.argv[3], "--lm-unit", "word",
      "--lm-weight", "0.6", "--token-bonus", "1.0"])
assert "torch" not in sys.modules, "torch was imported"
print("NO_TORCH")
"""


def test_stream_token_latency_counts_the_queue(model_dir, wavs):
    """When decoding is slower than the audio (here every window sleeps twice the audio it
    moves on), pieces queue up behind each other and the token latency `asr stream` reports
    grows with the queue: the last tokens wait for all the compute before them, about (RTF - 1)
    x the audio. It used to charge each piece only its own compute, as if it had started the
    moment it was recorded (under a second here, whatever the backlog)."""
    from serve import Recognizer
    from serve.simulate import simulate

    _, out = model_dir
    rec = Recognizer(out, endpoint=None)
    x = read_audio(wavs[0], 16000)
    step = rec.decode_step

    def slow(streams):
        ran = step(streams)
        if ran:
            time.sleep(2 * rec.chunk_seconds)
        return ran

    rec.decode_step = slow
    stats, stream = simulate(rec, x, 16000)
    assert stats.rtf > 2 and stream.transcript().token_ids, stats.summary()
    behind = stats.compute_seconds - stats.audio_seconds
    assert max(stats.token_latency) > max(0.5 * behind, 1.0), (behind, stats.summary())
    assert max(stats.token_latency) < stats.compute_seconds, stats.summary()


def test_stream_file_ctrl_c_and_a_closed_pipe(model_dir, wavs):
    """`asr stream FILE --realtime`: Ctrl-C is "interrupted" and exit 130, and a reader that
    stops reading (`| head -3`) ends it quietly with exit 1; both used to be tracebacks
    (KeyboardInterrupt, BrokenPipeError), the first also dying by SIGINT."""
    _, out = model_dir
    cmd = [sys.executable, "-m", "asr.cli", "stream", "--onnx", str(out), str(wavs[0]), "--realtime", "--piece-ms", "50"]
    for stop in ("ctrl-c", "pipe"):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(3):  # the two header lines and the first partial: streaming has started
                assert proc.stdout.readline(), proc.stderr.read()
            if stop == "ctrl-c":
                proc.send_signal(signal.SIGINT)
            else:
                proc.stdout.close()
            rc = proc.wait(timeout=120)
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "Traceback" not in err, err
        if stop == "ctrl-c":
            assert rc == 130 and err.endswith("interrupted\n"), (rc, err)
        else:
            assert rc == 1 and err == "", (rc, err)


def test_runtime_and_commands_run_without_torch(model_dir, wavs, tmp_path):
    """A fresh interpreter: import serve, decode a file (22.05 kHz: the runtime resamples),
    run `asr transcribe --onnx` (greedy, and beam search with a word LM) and `asr stream`, and
    torch is never imported. The tokens equal torch streaming decoding of the same file."""
    from asr.decoding.lexicon import load_lm, train_word_lm
    from asr.decoding.lm import LMFusion

    model, out = model_dir
    speech, _ = wavs
    lm, symbols = train_word_lm(["the quick brown fox", "jumps over the lazy dog", "the dog"], 2)
    lm.save_arpa(tmp_path / "words.arpa", symbols)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(out), str(speech), str(tmp_path / "words.arpa")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "NO_TORCH" in proc.stdout
    lines = proc.stdout.splitlines()
    api = json.loads(next(line for line in lines if line.startswith("API "))[4:])
    ref = torch_stream(model, read_audio(speech, 16000))
    assert len(set(ref.tokens)) >= 3
    assert api == ref.tokens
    text = model.hyp_to_transcript(ref)
    line = next(line for line in lines if line.startswith(str(speech)))
    stamps = " ".join(f"{t}@{ts:.2f}" for t, ts in zip(text.tokens, text.timestamps))
    assert line == f"{speech}\t{text.text}\t[{stamps}]"
    assert any(line.startswith("final ") for line in lines)
    assert any(line.startswith("audio ") and "RTF" in line for line in lines)
    tok = model.tokenizer
    fusion = LMFusion(load_lm(tmp_path / "words.arpa", "word", tok.pieces(), tok.encode_batch), 0.6, 1.0)
    ref = model.hyp_to_transcript(torch_stream(model, read_audio(speech, 16000), "beam", fusion=fusion))
    assert lines[lines.index("WORD_LM") + 1] == f"{speech}\t{ref.text}"


def test_transcribe_onnx_several_files_and_errors(model_dir, wavs, tmp_path, capsys):
    model, out = model_dir
    speech, synth = wavs
    missing = tmp_path / "missing.wav"
    loud = tmp_path / "loud.wav"  # an unnormalized float WAV: refused by name, the other files still transcribed
    import soundfile as sf

    sf.write(loud, 3.0 * read_audio(speech, 16000), 16000, subtype="FLOAT")
    with pytest.raises(SystemExit) as e:
        main(["transcribe", "--onnx", str(out), str(synth), str(missing), str(loud), str(speech)])
    assert e.value.code == 1
    cap = capsys.readouterr()
    assert f"audio file not found: {missing}" in cap.err
    assert f"audio file {loud} has samples up to" in cap.err and "beyond +-2" in cap.err
    got = dict(line.split("\t") for line in cap.out.splitlines())
    for path in (synth, speech):
        ref = torch_stream(model, read_audio(path, 16000))
        assert got[str(path)] == model.hyp_to_transcript(ref).text
    with pytest.raises(SystemExit, match="error: model directory not found"):
        main(["transcribe", "--onnx", str(tmp_path / "nowhere"), str(synth)])
    with pytest.raises(SystemExit, match="error"):
        main(["transcribe", str(synth)])  # neither a model file nor --onnx


def test_transcribe_onnx_feeds_a_long_file_piecewise_with_a_progress_bar_on_a_terminal(model_dir, tmp_path):
    """A recording over a minute: fed 10 s at a time (the result equals the runtime's one-call
    transcribe), with a progress bar on a terminal's stderr and none on a pipe."""
    from serve import Recognizer

    _, out = model_dir
    x = synthetic_audio(75.0, seed=3)
    wav = tmp_path / "long.wav"
    sf.write(str(wav), x, 16000, subtype="FLOAT")
    want = Recognizer(out, endpoint=None).transcribe(x).text
    rc, stdout, bar = run_with_terminal_stderr([sys.executable, "-m", "asr.cli", "transcribe", "--onnx", str(out), str(wav)], ROOT)
    assert rc == 0, bar
    assert stdout.rstrip("\n") == f"{wav}\t{want}"
    assert "long.wav:" in bar and "/75 s of audio" in bar, bar
    piped = subprocess.run([sys.executable, "-m", "asr.cli", "transcribe", "--onnx", str(out), str(wav)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout == stdout and "of audio" not in piped.stderr, piped.stderr


def test_stream_command_segments_and_realtime(model_dir, wavs, tmp_path, capsys):
    """`asr stream`: partial results, final segments at endpoints (speech, a pause, speech),
    the summary; with --realtime it takes at least the audio's duration."""
    _, out = model_dir
    speech = read_audio(wavs[0], 16000)
    pause = 0.01 * np.random.default_rng(0).standard_normal(16000)
    wav = tmp_path / "pause.wav"
    sf.write(str(wav), np.concatenate([speech, pause, speech]).astype(np.float32), 16000)
    main(["stream", "--onnx", str(out), str(wav), "--rule2", "0.6"])
    lines = capsys.readouterr().out.splitlines()
    finals = [line for line in lines if line.startswith("final ")]
    assert len(finals) >= 2 and "(rule2)" in finals[0]
    assert any(line.startswith("partial ") for line in lines)
    summary = next(line for line in lines if line.startswith("latency:"))
    assert "per piece p50" in summary and "token p50" in summary
    text = next(line for line in lines if line.startswith("text: "))[6:]
    assert text == " ".join(f.split(" | ", 1)[1] for f in finals if f.split(" | ", 1)[1])
    with pytest.raises(SystemExit, match="--rule2 set endpoint rules, which --no-endpoint turns off"):
        main(["stream", "--onnx", str(out), str(wav), "--rule2", "0.6", "--no-endpoint"])  # it used to ignore --rule2

    short = tmp_path / "short.wav"
    sf.write(str(short), speech[:8000], 16000)
    t0 = time.perf_counter()
    main(["stream", "--onnx", str(out), str(short), "--realtime", "--quiet"])
    assert time.perf_counter() - t0 >= 0.5 - 0.02
    lines = capsys.readouterr().out.splitlines()
    assert "(real time)" in lines[1] and not any(line.startswith("partial ") for line in lines)
    with pytest.raises(SystemExit, match="piece-ms"):
        main(["stream", "--onnx", str(out), str(wav), "--piece-ms", "0"])
    with pytest.raises(SystemExit, match="--piece-ms must be positive and finite, got inf"):  # was an OverflowError
        main(["stream", "--onnx", str(out), str(wav), "--piece-ms", "inf"])
    with pytest.raises(SystemExit, match="--seconds must be positive and finite"):  # refused before any device is opened
        main(["stream", "--mic", "--onnx", str(out), "--seconds", "inf"])
    with pytest.raises(SystemExit, match="audio file not found"):
        main(["stream", "--onnx", str(out), str(tmp_path / "nope.wav")])
    odd = tmp_path / "odd.wav"  # a rate whose filter would be too long: was a ValueError traceback
    sf.write(str(odd), speech, 191999)
    capsys.readouterr()
    with pytest.raises(SystemExit, match=r"error: resampling 191999 Hz to 16000 Hz .* send audio at a common rate"):
        main(["stream", "--onnx", str(out), str(odd)])
    assert capsys.readouterr().out == ""  # refused before the header


def test_bench_tiny_setting_runs(tmp_path):
    """The benchmark on one tiny model: our runtime and sherpa-onnx on the same exported files,
    fp32 and int8, and the long-stream latency; the report is complete."""
    from serve.bench import main as bench

    out = tmp_path / "bench.json"
    res = bench(["--tiny", "--models", "conformer-tiny", "--seconds", "2", "--long-minutes", "0.2",
                 "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert [(r["model"], r["precision"], r["threads"]) for r in res["rows"]] == [("conformer-tiny", "fp32", 1), ("conformer-tiny", "int8", 1)]
    for r in res["rows"]:
        assert r["ours"]["rtf"] > 0 and r["ours"]["windows"] > 0 and r["ours"]["tokens"] > 0
        assert r["sherpa"]["rtf"] > 0 and r["sherpa"]["tokens"] > 0 and r["ours_over_sherpa"] > 0
        assert r["ours"]["size_mb"] > 0
    long = res["long"]["conformer-tiny"]
    assert long["first_ms_p50"] > 0 and long["last_ms_p50"] > 0
    assert res["targets"] and all(isinstance(t["ok"], bool) and t["value"] > 0 for t in res["targets"])
    meta = json.loads((tmp_path / "work" / "conformer-tiny" / "bench.json").read_text())
    assert 0.1 <= meta["emission"]["tokens_per_frame"] <= 0.3 and meta["emission"]["distinct_tokens"] >= 3


def test_decode_onnx_equals_torch_streaming_per_utterance(live_model, trained_ctc, tmp_path):
    """`asr decode --onnx DIR` (the torch-free runtime) gives, cut by cut, the transcripts of
    `asr decode --model --chunkwise` (torch, real streaming); `--int8` runs the int8 files."""
    import json

    from asr.cli import main

    cuts = str(trained_ctc / "cuts_few.jsonl.gz")
    main(["decode", "--model", str(trained_ctc / "model.pt"), "--chunkwise", "--cuts", cuts, "--out", str(tmp_path / "torch")])
    main(["decode", "--onnx", str(live_model.onnx_dir), "--cuts", cuts, "--out", str(tmp_path / "fp32")])
    main(["decode", "--onnx", str(live_model.onnx_dir), "--int8", "--cuts", cuts, "--out", str(tmp_path / "int8")])

    def hyps(d):
        lines = (tmp_path / d / "results_few.txt").read_text().splitlines()
        return [line.split("\tHYP: ", 1)[1] for line in lines if "\tHYP: " in line]

    assert len(hyps("torch")) == 6 and hyps("fp32") == hyps("torch") and any(h.strip() for h in hyps("fp32"))
    fp32 = json.loads((tmp_path / "fp32" / "wer.json").read_text())
    assert "fp32" in fp32["decoding"] and fp32["splits"]["few"]["words"] > 0
    assert "int8" in json.loads((tmp_path / "int8" / "wer.json").read_text())["decoding"]
    assert len(hyps("int8")) == 6
    # a cut shorter than the runtime takes (50 ms) is skipped and counted, not the end of the run
    from lhotse import CutSet

    (tmp_path / "short").mkdir()
    cs = list(CutSet.from_file(cuts))
    CutSet.from_cuts([cs[0].truncate(duration=0.03), *cs[1:]]).to_file(tmp_path / "short" / "cuts_few.jsonl.gz")
    main(["decode", "--onnx", str(live_model.onnx_dir), "--cuts", str(tmp_path / "short" / "cuts_few.jsonl.gz"),
          "--out", str(tmp_path / "short_out")])
    assert json.loads((tmp_path / "short_out" / "wer.json").read_text())["splits"]["few"]["skipped"] == {"too_short": 1}
    assert hyps("short_out") == hyps("fp32")[1:]
    with pytest.raises(SystemExit, match="not both"):
        main(["decode", "--onnx", str(live_model.onnx_dir), "--model", "m.pt", "--cuts", cuts])
    with pytest.raises(SystemExit, match="chunkwise"):
        main(["decode", "--onnx", str(live_model.onnx_dir), "--chunkwise", "--cuts", cuts])
    # the runtime fuses LMs into transducer beam search only (this is a CTC model); sherpa-onnx not at all
    lm = tmp_path / "words.arpa"
    lm.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0 WORD\n\n\\end\\\n")
    for extra, msg in [(["--method", "beam"], "streaming CTC decoding is greedy"),
                       (["--runtime", "sherpa", "--method", "beam"], "--lm, --max-symbols and --ctc-guard apply to our runtime")]:
        with pytest.raises(SystemExit, match=msg):
            main(["decode", "--onnx", str(live_model.onnx_dir), "--cuts", cuts, "--lm", str(lm), "--lm-unit", "word", *extra])


def test_decode_with_sherpa_onnx_matches_our_runtime_cut_by_cut(trained_ctc, tmp_path):
    """`asr decode --onnx DIR --runtime sherpa` runs the export's sherpa-onnx files in sherpa-onnx
    and gives, cut by cut, our runtime's transcripts (`--compare-to` counts them); our runtime
    gives the same transcripts decoding 4 streams together as one at a time."""
    import json

    import torch

    import asr.models
    from asr.cli import main
    from exporters import export

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export(asr.models.load(trained_ctc / "model.pt"), tmp_path / "onnx", sherpa=True)
    finally:
        torch.set_num_threads(n)
    onnx, cuts = str(tmp_path / "onnx"), str(trained_ctc / "cuts_few.jsonl.gz")
    # the same audio on both sides: sherpa-onnx runs full windows only and needs silence after
    # the speech; this causal LSTM emits its last characters during that silence
    tail = ["--tail-padding", "0.5"]
    main(["decode", "--onnx", onnx, "--cuts", cuts, "--out", str(tmp_path / "one"), "--batch", "1", "--no-progress", *tail])
    main(["decode", "--onnx", onnx, "--cuts", cuts, "--out", str(tmp_path / "ours"), "--batch", "4", "--no-progress", *tail,
          "--compare-to", str(tmp_path / "one")])
    main(["decode", "--onnx", onnx, "--runtime", "sherpa", "--cuts", cuts, "--out", str(tmp_path / "sherpa"),
          "--no-progress", *tail, "--compare-to", str(tmp_path / "ours")])
    for d in ("ours", "sherpa"):
        rep = json.loads((tmp_path / d / "compare.json").read_text())["splits"]["few"]
        assert rep == {"identical": 6, "compared": 6, "missing": 0, "differ": []}, (d, rep)
    assert "sherpa-onnx ctc" in json.loads((tmp_path / "sherpa" / "wer.json").read_text())["decoding"]
    hyps = (tmp_path / "sherpa" / "results_few.txt").read_text()
    assert sum(1 for line in hyps.splitlines() if "\tHYP: " in line and line.split("\tHYP: ")[1].strip()) >= 5

    # the comparison can fail: one changed hypothesis is found and named
    other = tmp_path / "changed"
    other.mkdir()
    lines = (tmp_path / "ours" / "results_few.txt").read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if "\tHYP: " in line)
    cid = lines[i].split("\t")[0]
    lines[i] = f"{cid}\tHYP: SOMETHING ELSE"
    (other / "results_few.txt").write_text("\n".join(lines) + "\n")
    main(["decode", "--onnx", onnx, "--runtime", "sherpa", "--cuts", cuts, "--out", str(tmp_path / "sherpa2"),
          "--no-progress", *tail, "--compare-to", str(other)])
    rep = json.loads((tmp_path / "sherpa2" / "compare.json").read_text())["splits"]["few"]
    assert rep["identical"] == 5 and rep["differ"] == [cid]

    with pytest.raises(SystemExit, match="at most one symbol"):
        main(["decode", "--onnx", onnx, "--runtime", "sherpa", "--method", "beam", "--cuts", cuts])
    with pytest.raises(SystemExit, match="apply to --onnx"):
        main(["decode", "--model", str(trained_ctc / "model.pt"), "--runtime", "sherpa", "--cuts", cuts])
    with pytest.raises(SystemExit, match="tail-padding must be"):
        main(["decode", "--onnx", onnx, "--tail-padding", "-1", "--cuts", cuts])
    with pytest.raises(SystemExit, match="no results_few.txt"):
        main(["decode", "--onnx", onnx, "--cuts", cuts, "--out", str(tmp_path / "x"), "--compare-to", str(tmp_path)])


def test_transcribe_onnx_with_the_ctc_guard(wavs, tmp_path, capsys):
    """`asr transcribe --onnx DIR --ctc-guard P` on a hybrid TDT export prints what torch's
    guarded streaming decodes; `--ctc-guard` is refused where it cannot apply."""
    model, out = build(tmp_path, "lstm", "pruned_tdt", ctc_weight=0.3)
    _, synth = wavs
    audio = read_audio(synth, 16000)
    ref = model.hyp_to_transcript(torch_stream(model, audio, ctc_guard=0.5))
    main(["transcribe", "--onnx", str(out), str(synth), "--ctc-guard", "0.5"])
    assert capsys.readouterr().out.strip() == f"{synth}\t{ref.text}"
    with pytest.raises(SystemExit, match="applies to a hybrid TDT"):
        main(["transcribe", "--onnx", str(out), str(synth), "--ctc-guard", "0.5", "--use-ctc"])
    cuts = tmp_path / "none.jsonl.gz"
    with pytest.raises(SystemExit, match="--ctc-guard apply to our runtime"):
        main(["decode", "--onnx", str(out), "--cuts", str(cuts), "--runtime", "sherpa", "--ctc-guard", "0.5"])
    # sherpa-onnx has no TDT search: the hybrid's CTC head only when asked for (it used to switch silently)
    from lhotse import CutSet, Recording, SupervisionSegment

    rec = Recording.from_file(synth)
    cut = rec.to_cut()
    cut.supervisions = [SupervisionSegment(id="s", recording_id=rec.id, start=0.0, duration=rec.duration, text="A")]
    one = tmp_path / "cuts_one.jsonl.gz"
    CutSet.from_cuts([cut]).to_file(one)
    from exporters import export

    sherpa = tmp_path / "with_sherpa"
    export(model, sherpa, sherpa=True)
    with pytest.raises(SystemExit, match="cannot run this model's pruned_tdt head.*add --use-ctc"):
        main(["decode", "--onnx", str(sherpa), "--cuts", str(one), "--runtime", "sherpa", "--out", str(tmp_path / "sh")])
    main(["decode", "--onnx", str(sherpa), "--cuts", str(one), "--runtime", "sherpa", "--use-ctc", "--out", str(tmp_path / "sh")])
    assert "sherpa-onnx ctc" in capsys.readouterr().out
