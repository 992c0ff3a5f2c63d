"""What a drafter is: one small frozen (hashable, jit-static) dataclass per decoding method.

Method names stop here: `for_method` turns one into a kind at the config boundary, and
`from_hf` / `DrafterKind.to_hf` are the only readers and writers of a drafter's `config.json`
fields (`"pard_token"`, `"parallelspec_tokens"`, `"spd_type"`). This module is plain data: it
imports no jax, so configs and tools can read drafter metadata without an accelerator runtime.
How each kind drafts inside the compiled loop is `pard_jax.drafting`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

from pard_jax.errors import CheckpointError, ConfigError

# K, the drafts per iteration, for decoding and training alike.
MAX_DRAFT_TOKENS = 64


class DrafterKind:
  """Base of the kinds: what the drafter is fed after the real tokens, and its config.json."""
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

  def check_vocab(self, vocab_size: int) -> None:
    """A checkpoint declaring this kind must hold its mask ids."""
    if not all(0 <= t < vocab_size for t in self.tokens):
      raise CheckpointError(f"{self.method} mask tokens {self.tokens} lie outside the "
                            f"vocabulary [0, {vocab_size})")

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


@dataclasses.dataclass(frozen=True)
class PardDrafter(DrafterKind):
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
        raise ConfigError(f"pard uses one shared mask token, got {override}")
      return cls(override[0])
    if not isinstance(declared, cls):
      raise ConfigError(
          f"the drafter is not a PARD checkpoint: its config.json has no 'pard_token' "
          f"({_declares(declared)}); pass the mask id with --config.mask_token_ids")
    return declared


@dataclasses.dataclass(frozen=True)
class ParallelSpecDrafter(DrafterKind):
  """`parallelspec`: a distinct mask id per depth, so K is at most len(mask_tokens) + 1."""
  mask_tokens: tuple[int, ...]
  method: ClassVar[str] = "parallelspec"

  def __post_init__(self):
    if not self.mask_tokens or len(set(self.mask_tokens)) != len(self.mask_tokens):
      raise ConfigError(f"parallelspec needs distinct mask token ids (one per depth "
                        f"1..K-1), got {self.mask_tokens}")

  @property
  def tokens(self) -> tuple[int, ...]:
    return self.mask_tokens

  def mask_ids(self, num_draft_tokens: int) -> tuple[int, ...]:
    if num_draft_tokens - 1 > len(self.mask_tokens):
      raise ConfigError(
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
      raise ConfigError(
          f"the drafter is not a ParallelSpec checkpoint: its config.json has no "
          f"'parallelspec_tokens' ({_declares(declared)}); pass K-1 mask ids with "
          "--config.mask_token_ids")
    return declared


KINDS: dict[str, type[DrafterKind]] = {
    kind.method: kind
    for kind in (NoDrafter, AutoregressiveDrafter, PardDrafter, ParallelSpecDrafter)}
METHODS = tuple(KINDS)
# The kinds a training run produces (`drafter.kind` of the training config).
TRAINED_KINDS = (PardDrafter.method, ParallelSpecDrafter.method)


def _declares(declared: DrafterKind | None) -> str:
  return f"it declares {declared.method}" if declared else "it declares no drafter kind"


def for_method(method: str, declared: DrafterKind | None = None,
               override: Sequence[int] = ()) -> DrafterKind:
  """The kind behind a method name. `declared` is what the drafter's config.json says
  (`from_hf`); `override` (one id for pard, K-1 for parallelspec) replaces its mask ids."""
  if method not in KINDS:
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
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
    raise CheckpointError(
        f"config.json: spd_type {spd_type!r} does not match its mask fields (pard: "
        f"'pard_token'; parallelspec: 'parallelspec_tokens'), got {_declares(declared)}")
  return declared
