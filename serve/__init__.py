"""Torch-free streaming runtime: the ONNX files of ``asr export`` run by onnxruntime + numpy.

>>> from serve import Recognizer, EndpointConfig
>>> rec = Recognizer("exp/model/onnx", decoding="greedy")      # or "beam", int8=True, ...
>>> s = rec.create_stream()
>>> s.accept_waveform(16000, samples); s.input_finished()
>>> rec.decode([s]); print(s.result().text)

Features come from kaldi-native-fbank configured like training's lhotse fbank; decoding
(CTC greedy, RNN-T/TDT greedy and modified beam search) is numpy over batched onnxruntime
calls and reproduces ``asr.decoding.streaming.StreamingRecognizer``. Nothing here imports
torch. See docs/runtime.md.
"""

from .endpoint import EndpointConfig, EndpointRule
from .model import OnnxModel
from .recognizer import Recognizer, Result, Stream

__all__ = ["Recognizer", "Stream", "Result", "EndpointConfig", "EndpointRule", "OnnxModel"]
