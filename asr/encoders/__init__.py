"""Streaming encoders: one file per family behind one interface (see ``base.py``).

>>> from asr.encoders import build_encoder, stream
>>> enc = build_encoder("conformer", preset="small", input_dim=80).eval()
>>> enc.set_context(70, 6)                # pick the look-ahead at inference (Conformer)
>>> y, y_lens = enc(x, x_lens)            # whole utterance, same limits as streaming
>>> y2, y2_lens = stream(enc, x, x_lens)  # chunk by chunk through forward_chunk: equal

Families: ``conformer`` (cache-aware FastConformer, multi-lookahead), ``quartznet``,
``citrinet``, ``lstm``, ``ssm`` (gated diagonal state space). ``parameter_table()`` lists the
parameter count of every family at every preset.
"""

from __future__ import annotations

from asr.encoders.base import StreamingEncoder, stream
from asr.encoders.presets import FAMILIES, PRESETS, build_encoder, encoder_config, parameter_table

__all__ = [
    "StreamingEncoder",
    "stream",
    "build_encoder",
    "encoder_config",
    "parameter_table",
    "FAMILIES",
    "PRESETS",
]
