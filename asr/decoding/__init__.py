"""Decoding: CTC greedy and prefix beam search; RNN-T / TDT greedy (label looping) and modified
beam search, batched and streaming, all with token frames; token n-gram LM shallow fusion for the
beam searches, and a word n-gram LM that restricts them to its vocabulary (``LexiconLM``). WER
scoring.

The names below are imported on first use: ``lm``, ``lexicon`` and ``wer`` need only numpy, and
the torch-free ONNX runtime (``serve``) loads its LMs from them without importing torch.
"""

from importlib import import_module

_HOME = {
    "BeamState": "beam",
    "modified_beam_search": "beam",
    "Hypothesis": "ctc",
    "ctc_greedy": "ctc",
    "ctc_prefix_beam_search": "ctc",
    "LexiconLM": "lexicon",
    "LMFusion": "lm",
    "NgramLM": "lm",
    "DecoderState": "transducer",
    "greedy_search": "transducer",
    "WER": "wer",
    "word_errors": "wer",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
