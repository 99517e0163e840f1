"""Streaming speech recognition in PyTorch: data, encoders, heads, decoding, training.

The path from audio to text (see docs/architecture.md):
features (``asr.data``) -> encoder (``asr.encoders``) -> heads (``asr.heads``)
-> decoding (``asr.decoding``) -> text and token timestamps. ``asr.models.ASRModel`` ties
them together and ``asr.training`` trains it; the ``asr`` command (``asr.cli``) drives it all.
"""

__version__ = "0.1.0"

__all__ = ["load"]


def __getattr__(name: str):
    # ``asr.load`` without importing torch at ``import asr`` (the CLI and the ONNX runtime
    # import this package and must stay light).
    if name == "load":
        from asr.models import load

        return load
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
