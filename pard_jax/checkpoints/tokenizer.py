"""The tokenizer of a checkpoint, through transformers (imported only when one is loaded)."""

from __future__ import annotations

import os
import pathlib

from pard_jax.checkpoints.config_json import read_config


def load_tokenizer(path: str | os.PathLike):
  """`transformers.AutoTokenizer` for a HF directory or a `.gguf` file (chat template kept); a
  delta directory without tokenizer files has its base's."""
  from transformers import AutoTokenizer
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"tokenizer source not found: {path}")
  if path.is_dir() and (path / "config.json").exists() and not any(path.glob("tokenizer*")):
    delta = read_config(path).delta
    if delta is not None:
      path = delta.resolve(path)
  if path.suffix == ".gguf":
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  return AutoTokenizer.from_pretrained(path)


def same_vocabulary(first, second) -> bool:
  """The one rule for two models to exchange token ids (a drafter and its target, a drafter and
  its teacher): both tokenizers known and mapping every token to the same id. Their embedding
  tables may still be padded to different sizes."""
  return first is not None and second is not None and first.get_vocab() == second.get_vocab()
