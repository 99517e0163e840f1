"""Output heads on top of an encoder: CTC now; prediction network and joint (transducer, TDT) next."""

from .ctc import CTCHead

__all__ = ["CTCHead"]
