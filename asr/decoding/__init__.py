"""Decoding: CTC greedy (batched) now; transducer/TDT greedy and beam search next. WER scoring."""

from .ctc import Hypothesis, ctc_greedy
from .wer import WER, word_errors

__all__ = ["Hypothesis", "ctc_greedy", "WER", "word_errors"]
