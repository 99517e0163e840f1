"""ONNX export of every model type, int8 quantization and metadata (not yet implemented)."""
