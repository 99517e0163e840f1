"""Torch-free runtime: onnxruntime + numpy, microphone, WebSocket server, web page (not yet implemented)."""
