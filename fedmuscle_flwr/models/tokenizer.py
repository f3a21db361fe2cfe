"""A deterministic word-level hashing tokenizer that needs no vocabulary file.

Used by text models built from a config (no pretrained files): lowercase, split on
non-alphanumerics, ``id = 2 + crc32(word) % (vocab_size - 2)``, with ``pad = 0`` and a
leading ``cls = 1``. The same text gives the same ids on every machine and in every run.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["HashingTokenizer"]

_WORD = re.compile(r"[0-9a-z]+")


class HashingTokenizer:
    """Words to hashed ids, padded to the longest text of the batch.

    Parameters
    ----------
    vocab_size : int
        Size of the embedding table the ids index (>= 3).
    max_length : int
        Maximum sequence length including the leading ``cls`` token (>= 2).
    """

    pad_token_id = 0
    cls_token_id = 1

    def __init__(self, vocab_size: int, max_length: int) -> None:
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3, got {vocab_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.vocab_size = int(vocab_size)
        self.max_length = int(max_length)

    def token_ids(self, text: str) -> list[int]:
        """Return the ids of one text: ``cls`` then one id per word, truncated."""
        words = _WORD.findall(text.lower())[: self.max_length - 1]
        buckets = self.vocab_size - 2
        return [self.cls_token_id] + [2 + zlib.crc32(w.encode()) % buckets for w in words]

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenise a batch.

        Returns
        -------
        dict
            ``input_ids`` and ``attention_mask``, both long (B, L) with L the longest
            tokenised text in the batch (at most ``max_length``).
        """
        if isinstance(texts, str):
            raise TypeError("expected a list of strings, got one string")
        rows = [self.token_ids(t) for t in texts]
        length = max((len(r) for r in rows), default=1)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __repr__(self) -> str:
        return f"HashingTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
