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
