"""SentencePiece tokenizer with the blank at id 0.

Ids: 0 is ``<blk>`` (the CTC/transducer blank), 1 is ``<unk>``, then the pieces. ``tokens.txt``
has one ``symbol id`` a line, the format sherpa-onnx and icefall read. The model's serialized
protobuf travels inside checkpoints (``to_bytes``/``from_bytes``), so a model file needs
nothing beside it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Iterable, Literal, Sequence

import sentencepiece as spm

from .text import suspicious_chars

__all__ = ["Tokenizer"]

log = logging.getLogger(__name__)

BLANK = "<blk>"
UNK = "<unk>"


class Tokenizer:
    blank_id = 0
    unk_id = 1

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(self._proto)
        if self.sp.id_to_piece(0) != BLANK or self.sp.unk_id() != 1:
            raise ValueError(
                f"sentencepiece model must have {BLANK} at id 0 and {UNK} at id 1 "
                f"(got {self.sp.id_to_piece(0)!r} and unk id {self.sp.unk_id()}); train it with Tokenizer.train"
            )
        # Characters the model can spell: every character of every piece.
        self._chars = {ch for i in range(2, len(self)) for ch in self.sp.id_to_piece(i).replace("\u2581", "")}

    # ------------------------------------------------------------------ building
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 256,
        model_type: Literal["bpe", "unigram", "char"] = "bpe",
        out_dir: str | Path | None = None,
    ) -> "Tokenizer":
        """Train on ``texts`` (already normalized). Writes ``bpe.model`` and ``tokens.txt`` to
        ``out_dir`` when given. ``vocab_size`` counts blank and unk."""
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError("cannot train a tokenizer on no text")
        odd = suspicious_chars(texts)
        if odd:  # character coverage 1.0: each of them becomes a piece the model must learn
            shown = ", ".join(f"{ch!r} x{n}" for ch, n in list(odd.items())[:12])
            log.warning("the tokenizer's training text holds %d characters that are not letters or are rare "
                        "(%s%s): each becomes a piece of its own; spell digits and symbols out as words, or drop "
                        "those sentences, unless you mean to recognize them", len(odd), shown, " ..." if len(odd) > 12 else "")
        buf = io.BytesIO()
        kwargs = dict(
            sentence_iterator=iter(texts),
            model_writer=buf,
            model_type=model_type,
            character_coverage=1.0,
            user_defined_symbols=[BLANK],
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
        )
        if model_type != "char":
            kwargs["vocab_size"] = vocab_size
            kwargs["hard_vocab_limit"] = False
        spm.SentencePieceTrainer.train(**kwargs)
        tok = cls(buf.getvalue())
        if model_type != "char" and len(tok) < vocab_size:  # hard_vocab_limit=False: no error, fewer pieces
            log.warning("asked for %d tokens, but the training text (%d sentences) gives only %d", vocab_size,
                        len(texts), len(tok))
        if out_dir is not None:
            tok.save(out_dir)
        return tok

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load from a ``.model`` file or a directory holding ``bpe.model``."""
        path = Path(path)
        if path.is_dir():
            path = path / "bpe.model"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        return cls(path.read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "Tokenizer":
        return cls(data)

    def to_bytes(self) -> bytes:
        return self._proto

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bpe.model").write_bytes(self._proto)
        self.write_tokens_txt(out / "tokens.txt")

    def write_tokens_txt(self, path: str | Path) -> None:
        with open(path, "w") as f:
            for i, piece in enumerate(self.pieces()):
                f.write(f"{piece} {i}\n")

    # ------------------------------------------------------------------ use
    def __len__(self) -> int:
        return self.sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        return len(self)

    def missing_chars(self, text: str) -> set[str]:
        """Characters of ``text`` (spaces aside) that no piece contains."""
        return {ch for ch in text if ch != " " and ch not in self._chars}

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (blank and <unk> dropped), without the space a final word-start piece
        leaves at the end (sentencepiece keeps it)."""
        return self.sp.decode([int(i) for i in ids if int(i) > self.unk_id]).rstrip(" ")

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def pieces(self) -> list[str]:
        """Every piece, indexed by its id (the symbols of tokens.txt and of a token LM)."""
        return [self.sp.id_to_piece(i) for i in range(len(self))]
