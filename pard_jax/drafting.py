"""Drafters: what each method feeds its draft model, and how it reads K drafts back.

Every drafter keeps its own KV cache and a per-row `draft_lengths_B`: its cache is valid for
slots `[0, draft_lengths_B)`. Each iteration first feeds the committed tokens it has not seen
yet (`tokens[draft_length:length]`, the "catch-up"), then drafts. The return value `fed`
says how many of the K drafts entered the cache as real tokens, so that after verification
the caller sets `draft_lengths = lengths + min(num_accepted, fed)` and stale entries are
simply overwritten next time.

- `sd`: an autoregressive drafter, K forwards (catch-up of at most 2 tokens, then 1 each).
- `pard` / `parallelspec`: one forward over the catch-up (at most K+1 tokens) followed by
  K-1 mask tokens; draft i+1 is read at mask i. PARD repeats one shared mask id, ParallelSpec
  uses K-1 distinct ones: the mask ids are the only difference between them at inference.

Each method is a `DrafterKind` (bottom of this file), which also owns the drafter fields of
`config.json`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:  # model.py imports config.py, which imports this module
  from pard_jax.model import KVCache


class DraftConfigError(ValueError):
  """The drafter cannot serve the requested method."""


def take_window(tokens_BxT, starts_B, width: int):
  """`tokens[b, starts[b] : starts[b] + width]`, indices past the end clipped."""
  idx_BxW = starts_B[:, None] + jnp.arange(width)
  return jnp.take_along_axis(tokens_BxT, idx_BxW, axis=1, mode="clip"), idx_BxW


def _logits_at(model, hidden_BxSxD, idx_BxN):
  """Logits only where they are needed: `[batch, N, vocab]`."""
  picked = jnp.take_along_axis(hidden_BxSxD, idx_BxN[..., None], axis=1)
  return model.logits(picked)


ProbsFn = Callable[[jax.Array], jax.Array]
SampleFn = Callable[[jax.Array, jax.Array], jax.Array]


def draft_autoregressive(model: nnx.Module, cache: KVCache, tokens_BxT, lengths_B,
                         draft_lengths_B, num_draft_tokens: int, probs_fn: ProbsFn,
                         sample_fn: SampleFn, rng):
  """K drafts from K drafter forwards. Returns (drafts_BxK, q_BxKxV, cache, fed=K-1)."""
  # Since the last iteration the drafter has missed one token, or two after accepting all K.
  catchup_BxW, positions_BxW = take_window(tokens_BxT, draft_lengths_B, 2)
  hidden, cache = model.backbone(catchup_BxW, positions_BxW, cache)
  last_B1 = (lengths_B - draft_lengths_B - 1)[:, None]
  rngs = jax.random.split(rng, num_draft_tokens)
  q_B1xV = probs_fn(_logits_at(model, hidden, last_B1))
  first_B = sample_fn(rngs[0], q_B1xV[:, 0])

  def step(carry, rng_i):
    cache, token_B, position_B = carry
    logits, cache = model(token_B[:, None], position_B[:, None], cache)
    q_BxV = probs_fn(logits[:, 0])
    token_B = sample_fn(rng_i, q_BxV)
    return (cache, token_B, position_B + 1), (token_B, q_BxV)

  (cache, _, _), (rest_KxB, q_rest_KxBxV) = jax.lax.scan(
      step, (cache, first_B, lengths_B), rngs[1:])
  drafts_BxK = jnp.concatenate([first_B[:, None], rest_KxB.T], axis=1)
  q_BxKxV = jnp.concatenate([q_B1xV, jnp.moveaxis(q_rest_KxBxV, 0, 1)], axis=1)
  return drafts_BxK, q_BxKxV, cache, num_draft_tokens - 1


def draft_parallel(model: nnx.Module, cache: KVCache, tokens_BxT, lengths_B, draft_lengths_B,
                   mask_ids, probs_fn: ProbsFn, sample_fn: SampleFn, rng):
  """K drafts from one forward over `[catch-up tokens, mask_1 .. mask_{K-1}]`.

  The catch-up holds 1..K+1 real tokens per row; the masks follow each row's last real token
  at consecutive positions. Returns (drafts_BxK, q_BxKxV, cache, fed=0).
  """
  num_masks = len(mask_ids)
  k = num_masks + 1
  width = k + 1 + num_masks
  real_BxW, positions_BxW = take_window(tokens_BxT, draft_lengths_B, width)
  num_real_B1 = (lengths_B - draft_lengths_B)[:, None]
  offset_BxW = jnp.arange(width)[None] - num_real_B1
  masks_M = jnp.asarray(mask_ids, jnp.int32).reshape(num_masks)
  mask_BxW = masks_M[jnp.clip(offset_BxW, 0, max(num_masks - 1, 0))] if num_masks else real_BxW
  inputs_BxW = jnp.where(offset_BxW < 0, real_BxW, mask_BxW)
  hidden, cache = model.backbone(inputs_BxW, positions_BxW, cache)
  read_BxK = num_real_B1 - 1 + jnp.arange(k)[None]
  q_BxKxV = probs_fn(_logits_at(model, hidden, read_BxK))
  drafts_BxK = sample_fn(rng, q_BxKxV)
  return drafts_BxK, q_BxKxV, cache, 0


# ------------------------------------------------------------------------- drafter kinds

class DrafterKind:
  """What a drafter is: one small frozen (hashable, jit-static) dataclass per method.

  Method names stop here: `for_method` turns one into a kind at the config boundary, and
  `from_hf` / `to_hf` are the only readers and writers of a drafter's `config.json` fields
  (`"pard_token"`, `"parallelspec_tokens"`, `"spd_type"`).
  """
  method: ClassVar[str]
  uses_drafter: ClassVar[bool] = True  # False: the target decodes alone

  @property
  def tokens(self) -> tuple[int, ...]:
    """Every input id this kind feeds after the real tokens."""
    return ()

  def mask_ids(self, num_draft_tokens: int) -> tuple[int, ...]:
    """The ids that follow the real tokens when drafting K tokens in one forward."""
    del num_draft_tokens
    return ()

  def num_drafts(self, num_draft_tokens: int) -> int:
    return num_draft_tokens if self.uses_drafter else 0

  def to_hf(self) -> dict[str, Any]:
    """The `config.json` fields that declare a checkpoint of this kind."""
    return {}

  @classmethod
  def resolve(cls, declared: DrafterKind | None, override: tuple[int, ...]) -> DrafterKind:
    """This kind, from what the drafter's config declares and the user's mask-id override."""
    del declared, override
    return cls()


@dataclasses.dataclass(frozen=True)
class NoDrafter(DrafterKind):
  """`ar`: the target alone; the loop verifies its pending token and commits one sample."""
  method: ClassVar[str] = "ar"
  uses_drafter: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class AutoregressiveDrafter(DrafterKind):
  """`sd`: a small AR model drafts K tokens in K forwards."""
  method: ClassVar[str] = "sd"

  def draft(self, model, cache, tokens_BxT, lengths_B, draft_lengths_B, num_draft_tokens,
            probs_fn, sample_fn, rng):
    return draft_autoregressive(model, cache, tokens_BxT, lengths_B, draft_lengths_B,
                                num_draft_tokens, probs_fn, sample_fn, rng)


class _MaskDrafter(DrafterKind):
  """K drafts in one forward over the real tokens followed by K-1 mask ids."""

  def draft(self, model, cache, tokens_BxT, lengths_B, draft_lengths_B, num_draft_tokens,
            probs_fn, sample_fn, rng):
    return draft_parallel(model, cache, tokens_BxT, lengths_B, draft_lengths_B,
                          self.mask_ids(num_draft_tokens), probs_fn, sample_fn, rng)


@dataclasses.dataclass(frozen=True)
class PardDrafter(_MaskDrafter):
  """`pard`: K-1 copies of one shared mask id, so one drafter serves any K."""
  mask_token: int
  method: ClassVar[str] = "pard"

  @property
  def tokens(self) -> tuple[int, ...]:
    return (self.mask_token,)

  def mask_ids(self, num_draft_tokens: int) -> tuple[int, ...]:
    return (self.mask_token,) * (num_draft_tokens - 1)

  def to_hf(self) -> dict[str, Any]:
    return {"pard_token": self.mask_token, "spd_type": "pard"}

  @classmethod
  def resolve(cls, declared, override):
    if override:
      if len(set(override)) != 1:
        raise DraftConfigError(f"pard uses one shared mask token, got {override}")
      return cls(override[0])
    if not isinstance(declared, cls):
      raise DraftConfigError(
          f"the drafter is not a PARD checkpoint: its config.json has no 'pard_token' "
          f"({_declares(declared)}); pass the mask id with --config.mask_token_ids")
    return declared


@dataclasses.dataclass(frozen=True)
class ParallelSpecDrafter(_MaskDrafter):
  """`parallelspec`: a distinct mask id per depth, so K is at most len(mask_tokens) + 1."""
  mask_tokens: tuple[int, ...]
  method: ClassVar[str] = "parallelspec"

  def __post_init__(self):
    if not self.mask_tokens or len(set(self.mask_tokens)) != len(self.mask_tokens):
      raise DraftConfigError(f"parallelspec needs distinct mask token ids (one per depth "
                             f"1..K-1), got {self.mask_tokens}")

  @property
  def tokens(self) -> tuple[int, ...]:
    return self.mask_tokens

  def mask_ids(self, num_draft_tokens: int) -> tuple[int, ...]:
    if num_draft_tokens - 1 > len(self.mask_tokens):
      raise DraftConfigError(
          f"parallelspec with K={num_draft_tokens} needs {num_draft_tokens - 1} distinct mask "
          f"ids; this drafter has {len(self.mask_tokens)} ('parallelspec_tokens'), so K <= "
          f"{len(self.mask_tokens) + 1}")
    return self.mask_tokens[:num_draft_tokens - 1]

  def to_hf(self) -> dict[str, Any]:
    return {"parallelspec_tokens": list(self.mask_tokens), "spd_type": "parallelspec"}

  @classmethod
  def resolve(cls, declared, override):
    if override:
      return cls(tuple(override))
    if not isinstance(declared, cls):
      raise DraftConfigError(
          f"the drafter is not a ParallelSpec checkpoint: its config.json has no "
          f"'parallelspec_tokens' ({_declares(declared)}); pass K-1 mask ids with "
          "--config.mask_token_ids")
    return declared


KINDS: dict[str, type[DrafterKind]] = {
    kind.method: kind
    for kind in (NoDrafter, AutoregressiveDrafter, PardDrafter, ParallelSpecDrafter)}
METHODS = tuple(KINDS)


def _declares(declared: DrafterKind | None) -> str:
  return f"it declares {declared.method}" if declared else "it declares no drafter kind"


def for_method(method: str, declared: DrafterKind | None = None,
               override: Sequence[int] = ()) -> DrafterKind:
  """The kind behind a method name. `declared` is what the drafter's config.json says
  (`from_hf`); `override` (one id for pard, K-1 for parallelspec) replaces its mask ids."""
  if method not in KINDS:
    raise DraftConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
  return KINDS[method].resolve(declared, tuple(override))


HF_FIELDS = ("pard_token", "parallelspec_tokens", "spd_type")  # what from_hf reads


def from_hf(hf: dict[str, Any]) -> PardDrafter | ParallelSpecDrafter | None:
  """The kind a `config.json` declares; None for a plain AR model."""
  spd_type = hf.get("spd_type")
  declared = None
  if hf.get("parallelspec_tokens"):
    declared = ParallelSpecDrafter(tuple(int(t) for t in hf["parallelspec_tokens"]))
  elif hf.get("pard_token") is not None:
    declared = PardDrafter(int(hf["pard_token"]))
  if spd_type is not None and (declared is None or spd_type != declared.method):
    raise DraftConfigError(
        f"config.json: spd_type {spd_type!r} does not match its mask fields (pard: "
        f"'pard_token'; parallelspec: 'parallelspec_tokens'), got {_declares(declared)}")
  return declared
