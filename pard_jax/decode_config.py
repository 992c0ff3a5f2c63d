"""What goes into the decoding loop and what comes out: its static settings (`DecodeConfig`, a
jit static argument), the checks on the prompts it is given, and a run's per-row results."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from pard_jax import drafter_kinds as kinds
from pard_jax import rules
from pard_jax.errors import DecodeError


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Static settings of one compiled decoding loop (hashable: a jit static argument)."""
  drafter_kind: kinds.DrafterKind = kinds.NoDrafter()  # `drafter_kinds.for_method` builds one
  num_draft_tokens: int = 4
  max_new_tokens: int = 64
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  stop_token_ids: tuple[int, ...] = ()
  # Ids [0, n) mean the same token to target and drafter, whose embedding tables may be padded
  # to different sizes (Qwen2.5-0.5B: 151936 rows, Qwen2.5-7B: 152064). 0: sizes must match.
  shared_vocab_size: int = 0
  # Verify only the leading drafts whose running product of drafter confidences
  # (`drafting.Drafts.confidence_BxK`) is at least this, with a target forward over just
  # those (one `lax.switch` branch per width 1..K+1): cheaper iterations when acceptance is
  # unlikely. Lossless, as the count depends on the drafts alone. 0 = always verify all K.
  verify_threshold: float = 0.0

  def __post_init__(self):
    if not isinstance(self.drafter_kind, kinds.DrafterKind):
      raise DecodeError(f"drafter_kind must be a drafter_kinds.DrafterKind (drafter_kinds."
                        f"for_method(name) for one of {', '.join(kinds.METHODS)}), got "
                        f"{self.drafter_kind!r}")
    # Normalized to plain Python values: the config is a jit static argument, so it must hash,
    # and a float or NaN here would silently become a shape or all-zero probabilities.
    for field in ("num_draft_tokens", "max_new_tokens", "top_k", "shared_vocab_size"):
      object.__setattr__(self, field, _integer(field, getattr(self, field)))
    for field in ("temperature", "top_p", "verify_threshold"):
      object.__setattr__(self, field, _finite(field, getattr(self, field)))
    object.__setattr__(self, "stop_token_ids", _stop_ids(self.stop_token_ids))
    checks = [("temperature", rules.temperature), ("top_k", rules.top_k),
              ("top_p", rules.top_p), ("verify_threshold", rules.verify_threshold)]
    if self.drafter_kind.uses_drafter:
      checks.insert(0, ("num_draft_tokens", rules.num_draft_tokens))
    for field, rule in checks:
      problem = rule(getattr(self, field))
      if problem:
        raise DecodeError(f"{field} {problem}")
    if self.max_new_tokens < 1:
      raise DecodeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.shared_vocab_size < 0:
      raise DecodeError(f"shared_vocab_size must be >= 0, got {self.shared_vocab_size}")
    # A ParallelSpec drafter may know fewer depths than K.
    self.drafter_kind.mask_ids(self.num_draft_tokens)

  @property
  def method(self) -> str:
    return self.drafter_kind.method

  @property
  def num_drafts(self) -> int:
    return self.drafter_kind.num_drafts(self.num_draft_tokens)

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def _integer(field: str, value: Any) -> int:
  # bool is an Integral, and 2.0 would pass every range check.
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise DecodeError(f"{field} must be an integer, got {value!r}")
  return int(value)


def _finite(field: str, value: Any) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value)):
    raise DecodeError(f"{field} must be a finite number, got {value!r}")
  return float(value)


def _stop_ids(value: Any) -> tuple[int, ...]:
  """Any sequence of ids (a list, a numpy array) as the hashable tuple jit needs."""
  try:
    ids = tuple(value)
  except TypeError:
    raise DecodeError(f"stop_token_ids must be a sequence of token ids, got {value!r}") from None
  return tuple(_integer(f"stop_token_ids[{i}]", t) for i, t in enumerate(ids))


def prompt_ids(prompts: Any, vocab_size: int) -> list[np.ndarray]:
  """Each prompt as int32 ids; refuses what a cast would silently change (1.9 -> 1,
  2**32 + 10 -> 10) and names the prompt."""
  try:
    rows = list(prompts)  # a list of sequences or a 2-D array alike
  except TypeError:
    raise DecodeError(f"prompts must be a sequence of prompts, each a sequence of token ids, "
                      f"got {prompts!r:.60}") from None
  if not rows:
    raise DecodeError("prompts is empty: give at least one prompt")
  checked = []
  for index, prompt in enumerate(rows):
    try:
      ids_P = np.asarray(prompt)
    except ValueError:  # ragged nesting
      ids_P = np.asarray(prompt, dtype=object)
    if ids_P.ndim != 1:
      raise DecodeError(f"prompt {index} must be a 1-D sequence of token ids, got shape "
                        f"{ids_P.shape}: {prompt!r:.60}")
    if not ids_P.size:
      raise DecodeError(f"prompt {index} is empty: every prompt needs at least one token")
    if ids_P.dtype.kind not in "iu":
      bad = next((t for t in prompt
                  if isinstance(t, bool) or not isinstance(t, numbers.Integral)), None)
      if bad is not None:
        bad = bad.item() if isinstance(bad, np.generic) else bad
        raise DecodeError(f"prompt {index}: token ids must be integers, got {bad!r}")
    outside = np.flatnonzero((ids_P < 0) | (ids_P >= vocab_size))
    if outside.size:
      position = int(outside[0])
      raise DecodeError(f"prompt {index}: token id {ids_P[position]} at position {position} is "
                        f"outside the vocabulary; ids must lie in [0, {vocab_size})")
    checked.append(ids_P.astype(np.int32))
  return checked


@dataclasses.dataclass
class DecodeResult:
  """Per-row outputs of one `generate` call (generated ids end at and include a stop token)."""
  output_ids: list[list[int]]
  accept_lengths: list[list[int]]  # tokens committed in each iteration
  # Drafts accepted in each iteration, before the cut at a stop token or max_new_tokens.
  accepted_drafts: list[list[int]]
  verified_drafts: list[list[int]]  # drafts verified in each iteration (K but with a threshold)
  num_iterations: list[int]
  num_drafted: list[int]
  seconds: float  # wall time of the compiled run, compilation excluded

  @property
  def num_generated(self) -> int:
    return sum(len(ids) for ids in self.output_ids)

  @property
  def mean_accept_length(self) -> float:
    """τ: mean tokens committed per iteration over all rows."""
    return self.num_generated / max(sum(self.num_iterations), 1)

  @property
  def tokens_per_second(self) -> float:
    return self.num_generated / self.seconds if self.seconds else float("nan")
