"""ONNX export of every model: streaming and offline graphs, decoder/joiner, CTC, int8
quantization, metadata, and files in the contracts sherpa-onnx loads (see README.md)."""

from .onnx_export import export, export_file, lookahead_choices, select_context

__all__ = ["export", "export_file", "lookahead_choices", "select_context"]
