"""The tokenizer of a checkpoint, through transformers (imported only when one is loaded)."""

from __future__ import annotations

import os
import pathlib


def load_tokenizer(path: str | os.PathLike):
  """`transformers.AutoTokenizer` for a HF directory or a `.gguf` file (chat template kept)."""
  from transformers import AutoTokenizer
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"tokenizer source not found: {path}")
  if path.suffix == ".gguf":
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  return AutoTokenizer.from_pretrained(path)
