"""Decoding: CTC greedy and prefix beam search; RNN-T / TDT greedy (label looping) and modified
beam search, batched and streaming, all with token frames; token n-gram LM shallow fusion for the
beam searches, and a word n-gram LM that restricts them to its vocabulary (``LexiconLM``). WER
scoring."""

from .beam import BeamState, modified_beam_search
from .ctc import Hypothesis, ctc_greedy, ctc_prefix_beam_search
from .lexicon import LexiconLM
from .lm import LMFusion, NgramLM
from .transducer import DecoderState, greedy_search
from .wer import WER, word_errors

__all__ = [
    "WER",
    "BeamState",
    "DecoderState",
    "Hypothesis",
    "LMFusion",
    "LexiconLM",
    "NgramLM",
    "ctc_greedy",
    "ctc_prefix_beam_search",
    "greedy_search",
    "modified_beam_search",
    "word_errors",
]
