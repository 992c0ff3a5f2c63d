"""The value rules decoding, evaluation and training share, each written once (no jax).

A rule returns what is wrong with a value, phrased to follow the field's name, or "" when
nothing is: `DecodeConfig` raises `"<field> <problem>"`, `EvalSpec` and `TrainSpec`
`"config.<field>: <problem>"`, so each front end keeps naming the field its own way.
"""

from __future__ import annotations

from typing import Iterable

# K, the drafts per iteration, for decoding and training alike.
MAX_DRAFT_TOKENS = 64


def is_int(value) -> bool:
  """A Python int that is not a bool (True would pass every range check as 1)."""
  return isinstance(value, int) and not isinstance(value, bool)


def num_draft_tokens(k) -> str:
  if is_int(k) and 1 <= k <= MAX_DRAFT_TOKENS:
    return ""
  return f"must be an integer in [1, {MAX_DRAFT_TOKENS}], got {k!r}"


def temperature(t) -> str:
  return "" if t >= 0 else f"must be >= 0 (0 = greedy), got {t}"


def top_k(k) -> str:
  return "" if k >= 0 else f"must be >= 0 (0 disables it), got {k}"


def top_p(p) -> str:
  return "" if 0 < p <= 1 else f"must be in (0, 1], got {p}"


def verify_threshold(v) -> str:
  return "" if 0 <= v <= 1 else f"must be in [0, 1] (0 = verify every draft), got {v}"


def ids_in_vocabulary(ids: Iterable[int], vocab_size: int, whose: str) -> str:
  """The first of `ids` outside `[0, vocab_size)`, said as "<id> is outside <whose>
  vocabulary [0, V)"; "" when all lie inside."""
  for token in ids:
    if not 0 <= token < vocab_size:
      return f"{token} is outside {whose} vocabulary [0, {vocab_size})"
  return ""


def feature_peer_width(drafter_width: int, target_width: int) -> str:
  """The autoregressive feature peer feeds its own hidden state where the target's goes."""
  if drafter_width == target_width:
    return ""
  return (f"the autoregressive feature peer feeds its own hidden state where the target's "
          f"goes, but its width is {drafter_width} and the target's {target_width}")
