"""Prompts into the decoding engine: stop ids, a shared prompt width, fixed-shape batches.

Both the evaluation sweep (`eval/`) and self-distillation (`distill.py`) feed many prompts to
one `SpeculativeDecoder`; these helpers keep every batch at one compiled shape.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

from pard_jax.decoding import SpeculativeDecoder

PROMPT_BUCKET = 16  # prompt widths round up to this, so a whole set compiles once


def stop_ids(hf_config: dict[str, Any], generation_config: dict[str, Any] | None,
             tokenizer) -> tuple[int, ...]:
  """EOS ids from config.json, generation_config.json and the tokenizer."""
  ids = set()
  sources = [hf_config.get("eos_token_id")]
  if generation_config is not None:
    sources.append(generation_config.get("eos_token_id"))
  if tokenizer is not None:
    sources.append(tokenizer.eos_token_id)
  for source in sources:
    if source is not None:
      ids.update(source if isinstance(source, list) else [source])
  return tuple(sorted(int(i) for i in ids))


def prompt_width(decoder: SpeculativeDecoder, longest: int, cache_len: int = 0) -> int:
  """`longest` rounded up to PROMPT_BUCKET, but never past the room the cache leaves."""
  room = min(cache_len or decoder.max_positions, decoder.max_positions) - decoder.cfg.max_new_tokens
  width = max(longest, min(PROMPT_BUCKET * math.ceil(longest / PROMPT_BUCKET), room))
  decoder.check_fits(width, cache_len or None)
  return width


def padded_batches(items: Sequence, batch_size: int) -> Iterator[tuple[int, list, list]]:
  """(start, batch, padded) per batch; a short last batch is padded with copies of its first
  item so that every batch has the compiled shape."""
  for start in range(0, len(items), batch_size):
    batch = list(items[start:start + batch_size])
    yield start, batch, batch + [batch[0]] * (batch_size - len(batch))
