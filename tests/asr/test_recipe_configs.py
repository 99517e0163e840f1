"""Every config the recipes ship loads, passes the trainer's range checks and builds its model:
a typo or an out-of-range value in a recipe fails here, not hours into someone's run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from asr.config import load_yaml
from asr.models import ASRModel
from asr.training.trainer import TrainConfig, check_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CONFIGS = sorted(p for p in RECIPES.glob("*/conf/*.yaml") if not p.name.startswith("_"))


def test_the_recipes_ship_configs():
    assert {p.parent.parent.name for p in CONFIGS} == {"mini", "librispeech"}, CONFIGS


# millions of parameters at BPE-500 (LibriSpeech) or characters (mini, 30 tokens), as each
# config's header or the README states them
SIZES = {"librispeech/fastconformer_hybrid_tdt_ctc.yaml": 110.4, "librispeech/citrinet_ctc.yaml": 141.5,
         "librispeech/lstm_transducer.yaml": 112.5, "librispeech/ssm_transducer.yaml": 111.8,
         "mini/conformer.yaml": 4.36, "mini/citrinet.yaml": 3.89, "mini/lstm.yaml": 3.07, "mini/ssm.yaml": 6.25}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_shipped_config_loads_checks_and_builds(path):
    cfg = load_yaml(TrainConfig, path)
    check_config(cfg)
    vocab = 500 if path.parent.parent.name == "librispeech" else 30
    with torch.device("meta"):  # the LibriSpeech models' shapes without their memory
        model = ASRModel(dataclasses.replace(cfg.model, vocab_size=vocab), cfg.features)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(SIZES[f"{path.parent.parent.name}/{path.name}"], rel=0.01), millions


# ---------------------------------------------------------------------- the recipes' run.sh
RUN_SCRIPTS = [RECIPES / "mini" / "run.sh", RECIPES / "librispeech" / "run.sh"]


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=lambda p: p.parent.name)
@pytest.mark.parametrize("args, message", [
    (["--stage"], "--stage needs a stage number"),
    (["--stage", "abc"], "--stage needs a stage number, got 'abc'"),
    (["--stop-stage", "x"], "--stop-stage needs a stage number, got 'x'"),
    (["--stage", "9"], "there is no stage 9 (the stages are 0-6)"),
    (["--stage", "5", "--stop-stage", "2"], "--stage 5 is after --stop-stage 2: no stage would run"),
    (["--stage=1"], "unknown option --stage=1"),
])
def test_run_sh_refuses_bad_stage_options(script, args, message, tmp_path):
    """Before any stage runs (no set-up either), from any directory: exit 2 and the reason."""
    import subprocess

    r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "bootstrap" not in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=lambda p: p.parent.name)
def test_run_sh_help_from_any_directory(script, tmp_path):
    import subprocess

    r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("# ") and "Stages:" in r.stdout and "set -euo" not in r.stdout, r


def test_librispeech_run_sh_checks_late_settings_first(tmp_path):
    """NGPU, CONFIG and DOWNLOAD with another LIBRISPEECH are refused before stage 0."""
    import os
    import subprocess

    def run(**env):
        return subprocess.run(["bash", str(RECIPES / "librispeech" / "run.sh"), "--stage", "4"], capture_output=True,
                              text=True, cwd=tmp_path, timeout=60, env={**os.environ, **env})

    r = run(NGPU="two")
    assert r.returncode == 2 and "NGPU must be a number of processes" in r.stderr, r.stderr
    r = run(CONFIG="nope.yaml")  # relative to where it was run
    assert r.returncode == 2 and f"CONFIG {tmp_path}/nope.yaml: no such file" in r.stderr, r.stderr
    r = run(DOWNLOAD="1", LIBRISPEECH="corpus/LS")
    assert r.returncode == 2 and "DOWNLOAD=1 fetches LibriSpeech into DL_DIR" in r.stderr, r.stderr


def test_mini_run_sh_refuses_a_bad_nproc(tmp_path):
    import os
    import subprocess

    r = subprocess.run(["bash", str(RECIPES / "mini" / "run.sh"), "--stage", "2"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60, env={**os.environ, "NPROC": "two"})
    assert r.returncode == 2 and "NPROC must be a positive whole number or auto, not 'two'" in r.stderr, r.stderr


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_mini_run_sh_passes_train_args_to_asr_train(tiny_data, tmp_path, nproc):
    """recipes/mini/run.sh's stage 2 with TRAIN_ARGS: the --set overrides reach `asr train`
    (here the tiny corpus, a CTC head and one step instead of the recipe's 15 minutes), in one
    process or in NPROC=2 torchrun processes that split the config's batch and the cores."""
    import os
    import subprocess

    import yaml

    manifests = tiny_data / "manifests"
    train_args = " ".join([
        "--set", f"data.train=[{manifests}/cuts_train.jsonl.gz]", f"data.dev=[{manifests}/cuts_dev.jsonl.gz]",
        f"data.tokenizer={tiny_data}/lang_bpe48", f"data.augment.noise_manifest={tiny_data}/corpus/noise/recordings.jsonl.gz", "data.sampler.num_workers=0",
        "model.head=ctc", "model.ctc_warmup_steps=0", "max_steps=1", "data.dev_max_cuts=2"])
    env = {**os.environ, "EXP": "exp", "TRAIN_ARGS": train_args, "NPROC": nproc}
    r = subprocess.run(["bash", str(RECIPES / "mini" / "run.sh"), "--stage", "2", "--stop-stage", "2"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert cfg["model"]["head"] == "ctc" and cfg["max_steps"] == 1 and cfg["data"]["tokenizer"].endswith("lang_bpe48")
    assert (tmp_path / "exp" / "model.pt").is_file()
    shipped = load_yaml(TrainConfig, RECIPES / "mini" / "conf" / "conformer.yaml").data.sampler.max_duration
    assert cfg["data"]["sampler"]["max_duration"] == pytest.approx(shipped / int(nproc))  # the same global batch
    assert f"{nproc} process(es)" in (tmp_path / "exp" / "train.log").read_text()
    if nproc == "2":
        assert cfg["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


def test_mini_run_sh_stages_2_to_6_on_the_tiny_corpus(tiny_data, tmp_path):
    """recipes/mini/run.sh after the corpus (the main job's stages 2-6) on the tiny corpus: 2
    training steps of the recipe's Conformer hybrid TDT+CTC, every decode of stage 3 (both LMs,
    and the word LM chunk by chunk), the export, the runtime's decodes of stage 5 (greedy and beam
    + word LM, each compared with torch's chunk-wise transcripts), sherpa-onnx, and stage 6's
    two streams. The main job runs these stages on a 15-minute model; CI cannot."""
    import json
    import os
    import subprocess

    manifests = tiny_data / "manifests"
    train_args = " ".join([
        "--set", f"data.train=[{manifests}/cuts_train.jsonl.gz]", f"data.dev=[{manifests}/cuts_dev.jsonl.gz]",
        f"data.tokenizer={tiny_data}/lang_bpe48", f"data.augment.noise_manifest={tiny_data}/corpus/noise/recordings.jsonl.gz",
        "data.sampler.num_workers=0", "model.ctc_warmup_steps=0", "max_steps=2", "data.dev_max_cuts=2"])
    env = {**os.environ, "DATA": str(tiny_data), "EXP": "exp", "TRAIN_ARGS": train_args}
    r = subprocess.run(["bash", str(RECIPES / "mini" / "run.sh"), "--stage", "2"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dec = tmp_path / "exp" / "decode"
    ctx = sorted(p.name for p in dec.glob("chunkwise_*") if not p.name.endswith("_wordlm"))
    assert len(ctx) == 1, sorted(p.name for p in dec.iterdir())
    lm_ref = json.loads((dec / f"{ctx[0]}_beam8_wordlm" / "wer.json").read_text())
    lm_onnx = json.loads((dec / "onnx_fp32_beam8_wordlm" / "wer.json").read_text())
    assert "word LM words_3gram.arpa.gz" in lm_ref["decoding"] and "word LM words_3gram.arpa.gz" in lm_onnx["decoding"]
    assert set(lm_onnx["splits"]) == {"test-seen", "test-unseen"}
    for d in ("onnx_fp32", "onnx_fp32_beam8_wordlm"):  # the runtime = torch chunk by chunk, transcript by transcript
        same = json.loads((dec / d / "compare.json").read_text())["splits"]
        assert all(v["identical"] == v["compared"] > 0 for v in same.values()), (d, same)
    assert {p.name for p in dec.iterdir()} >= {"greedy", "beam8_lm", "beam8_wordlm", "onnx_fp32", "onnx_int8",
                                                "onnx_ctc_tail", "sherpa_ctc"}
    assert r.stdout.count("stream one unseen-voice test file") == 1
    assert r.stdout.count("RTF") >= 2, r.stdout[-2000:]  # stage 6 streamed twice (greedy, beam + word LM)


@pytest.mark.slow
def test_librispeech_run_sh_every_stage_on_the_tiny_corpus(tiny_data, tmp_path):
    """recipes/librispeech/run.sh, stages 0-6, on the tiny TTS corpus in LibriSpeech layout, with
    its data and experiment under a directory whose name has a space, given relative to where
    the script runs: manifests, tokenizer, 2 training steps of the small FastConformer, every
    decode of stage 5 (the n-gram LMs included) and the ONNX export."""
    import json
    import os
    import subprocess
    import sys

    work = tmp_path / "a dir"
    work.mkdir()
    env = {**os.environ, "LIBRISPEECH": str(tiny_data / "corpus" / "LibriSpeech"), "PARTS": "train dev test-seen",
           "TRAIN_PARTS": "train", "DEV_SETS": "dev", "TEST_SETS": "test-seen", "DATA": "data", "EXP": "exp", "VOCAB": "40",
           "TRAIN_ARGS": "--set max_steps=2 model.encoder_config.preset=small data.sampler.num_workers=0",
           "LM_ORDER": "3", "WORD_LM_ORDER": "2"}
    r = subprocess.run(["bash", str(RECIPES / "librispeech" / "run.sh")], capture_output=True, text=True, cwd=work,
                       env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (work / "data" / "lang_bpe40" / "tokens.txt").is_file() and (work / "exp" / "model.pt").is_file()
    decodes = sorted(p.parent.name for p in (work / "exp" / "decode").glob("*/wer.json"))
    contexts = subprocess.run([sys.executable, "-m", "asr.cli", "info", str(work / "exp" / "model.pt"), "--contexts"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert decodes == sorted(["greedy", "beam4", "beam8_lm3", "beam8_wordlm2"] + [f"{k}_{c}" for c in contexts
                                                                                   for k in ("simulated", "chunkwise")]), decodes
    for d in decodes:
        splits = json.loads((work / "exp" / "decode" / d / "wer.json").read_text())["splits"]
        assert set(splits) == {"test-seen"}, (d, splits)
    assert (work / "exp" / "onnx" / "model.json").is_file()
