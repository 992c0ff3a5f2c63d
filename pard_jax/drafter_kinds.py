"""What a drafter is: one small frozen (hashable, jit-static) dataclass per decoding method.

Method names stop here: `for_method` turns one into a kind at the config boundary, and
`from_hf` / `DrafterKind.to_hf` are the only readers and writers of a drafter's `config.json`
fields (`"pard_token"`, `"parallelspec_tokens"`, `"spd_type"`, `"target_feature_layers"`).

A kind with `feature_layers` is a feature drafter (PARD-2, P-EAGLE, ParallelSpec on EAGLE): it
reads the target's hidden states after those layers beside the tokens. Without them, the
same checkpoint drafts from tokens alone ("dual mode"). This module is plain data: it
imports no jax, so configs and tools can read drafter metadata without an accelerator runtime.
How each kind drafts inside the compiled loop is `pard_jax.drafting`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

from pard_jax import rules
from pard_jax.config import ModelConfig
from pard_jax.errors import CheckpointError, ConfigError
from pard_jax.rules import MAX_DRAFT_TOKENS  # noqa: F401  (read here by the front ends)


class DrafterKind:
  """Base of the kinds: what the drafter is fed after the real tokens, and its config.json."""
  method: ClassVar[str]
  uses_drafter: ClassVar[bool] = True  # False: the target decodes alone
  # Drafts one token per forward, feeding each back (K forwards for K drafts).
  autoregressive: ClassVar[bool] = False
  feature_layers: tuple[int, ...] = ()  # target layers whose hidden states it reads

  def without_features(self) -> DrafterKind:
    """The same kind drafting from tokens alone."""
    return dataclasses.replace(self, feature_layers=()) if self.feature_layers else self

  def check_features(self, num_feature_layers: int, where: str) -> None:
    """A feature drafter's checkpoint must be built for as many layers as it names."""
    if len(set(self.feature_layers)) != len(self.feature_layers):
      raise CheckpointError(f"{where}: target_feature_layers {list(self.feature_layers)} "
                            "names a layer twice")
    if len(self.feature_layers) != num_feature_layers:
      raise CheckpointError(
          f"{where}: target_feature_layers names {len(self.feature_layers)} layers but the "
          f"model reads {num_feature_layers} (num_target_feature_layers)")

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

  def layout_masks(self, num_draft_tokens: int) -> tuple[int, ...]:
    """Depth k's input id in this kind's training layout (`layout.build_layout`)."""
    return self.mask_ids(num_draft_tokens)

  def to_hf(self) -> dict[str, Any]:
    """The `config.json` fields that declare a checkpoint of this kind."""
    return {"target_feature_layers": list(self.feature_layers)} if self.feature_layers else {}

  def check_vocab(self, vocab_size: int) -> None:
    """A checkpoint declaring this kind must hold its mask ids."""
    problem = rules.ids_in_vocabulary(self.tokens, vocab_size, "the")
    if problem:
      raise CheckpointError(f"{self.method} mask tokens {self.tokens}: {problem}")

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
  """`sd`: a small AR model drafts K tokens in K forwards. With features (the autoregressive
  peer of the parallel feature drafters, EAGLE style), a token it drafted reads its own last
  hidden state in place of the target's, so its width must be the target's."""
  feature_layers: tuple[int, ...] = ()
  method: ClassVar[str] = "sd"
  autoregressive: ClassVar[bool] = True

  def layout_masks(self, num_draft_tokens: int) -> tuple[int, ...]:
    # Placeholders: the step feeds each chain slot its true token (teacher forcing).
    return (0,) * (num_draft_tokens - 1)

  def to_hf(self) -> dict[str, Any]:
    return {**super().to_hf(), "spd_type": "sd"} if self.feature_layers else {}

  @classmethod
  def resolve(cls, declared, override):
    del override
    return declared if isinstance(declared, cls) else cls()


@dataclasses.dataclass(frozen=True)
class PardDrafter(DrafterKind):
  """`pard`: K-1 copies of one shared mask id, so one drafter serves any K."""
  mask_token: int
  feature_layers: tuple[int, ...] = ()
  method: ClassVar[str] = "pard"

  @property
  def tokens(self) -> tuple[int, ...]:
    return (self.mask_token,)

  def mask_ids(self, num_draft_tokens: int) -> tuple[int, ...]:
    return (self.mask_token,) * (num_draft_tokens - 1)

  def to_hf(self) -> dict[str, Any]:
    return {**super().to_hf(), "pard_token": self.mask_token, "spd_type": "pard"}

  @classmethod
  def resolve(cls, declared, override):
    if override:
      if len(set(override)) != 1:
        raise ConfigError(f"pard uses one shared mask token, got {override}")
      return cls(override[0], _features(declared))
    if not isinstance(declared, cls):
      raise ConfigError(
          f"the drafter is not a PARD checkpoint: its config.json has no 'pard_token' "
          f"({_declares(declared)}); pass the mask id with --config.mask_token_ids")
    return declared


@dataclasses.dataclass(frozen=True)
class ParallelSpecDrafter(DrafterKind):
  """`parallelspec`: a distinct mask id per depth, so K is at most len(mask_tokens) + 1."""
  mask_tokens: tuple[int, ...]
  feature_layers: tuple[int, ...] = ()
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
    return {**super().to_hf(), "parallelspec_tokens": list(self.mask_tokens),
            "spd_type": "parallelspec"}

  @classmethod
  def resolve(cls, declared, override):
    if override:
      return cls(tuple(override), _features(declared))
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
# The baseline and vanilla speculative decoding, named where results are labelled by method.
AR, SD = NoDrafter.method, AutoregressiveDrafter.method
# The kinds a training run produces (`drafter.kind` of the training config).
TRAINED_KINDS = (PardDrafter.method, ParallelSpecDrafter.method)


def feature_layout_error(kind: DrafterKind, drafter: ModelConfig,
                         target: ModelConfig) -> str | None:
  """Why a feature drafter cannot read this target's features (None: it can)."""
  layers = kind.feature_layers
  if not layers:
    return None
  if not all(-target.num_layers <= i < target.num_layers for i in layers):
    return (f"the drafter reads target layers {list(layers)}, but the target has "
            f"{target.num_layers} layers")
  if drafter.feature_size != len(layers) * target.hidden_size:
    return (f"the drafter reads {drafter.feature_size} feature values per token "
            f"(target_feature_size), but {len(layers)} layers of this target give "
            f"{len(layers)} x {target.hidden_size} = {len(layers) * target.hidden_size}: it was "
            "trained for another target")
  if kind.autoregressive:
    return rules.feature_peer_width(drafter.hidden_size, target.hidden_size) or None
  return None


def _declares(declared: DrafterKind | None) -> str:
  return f"it declares {declared.method}" if declared else "it declares no drafter kind"


def _features(declared: DrafterKind | None) -> tuple[int, ...]:
  return declared.feature_layers if declared is not None else ()


def for_method(method: str, declared: DrafterKind | None = None,
               override: Sequence[int] = ()) -> DrafterKind:
  """The kind behind a method name. `declared` is what the drafter's config.json says
  (`from_hf`); `override` (one id for pard, K-1 for parallelspec) replaces its mask ids."""
  if method not in KINDS:
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
  return KINDS[method].resolve(declared, tuple(override))


# What from_hf reads.
HF_FIELDS = ("pard_token", "parallelspec_tokens", "spd_type", "target_feature_layers")


def from_hf(hf: dict[str, Any]) -> DrafterKind | None:
  """The kind a `config.json` declares; None for a plain AR model."""
  spd_type = hf.get("spd_type")
  features = hf.get("target_feature_layers") or []
  if not (isinstance(features, list) and all(type(i) is int for i in features)):
    raise CheckpointError(f"config.json: target_feature_layers must be a list of layer "
                          f"indices, got {features!r}")
  features = tuple(features)
  declared = None
  if hf.get("parallelspec_tokens"):
    declared = ParallelSpecDrafter(tuple(int(t) for t in hf["parallelspec_tokens"]), features)
  elif hf.get("pard_token") is not None:
    declared = PardDrafter(int(hf["pard_token"]), features)
  elif spd_type == "sd" and features:
    declared = AutoregressiveDrafter(features)
  if spd_type is not None and (declared is None or spd_type != declared.method):
    found = (f"but its fields declare {declared.method}" if declared else
             "but none of those fields is there")
    raise CheckpointError(
        f"config.json: spd_type {spd_type!r} needs its field (pard: 'pard_token'; "
        f"parallelspec: 'parallelspec_tokens'; sd: 'target_feature_layers'), {found}")
  if features and declared is None:
    raise CheckpointError("config.json: target_feature_layers needs an spd_type (sd, pard or "
                          "parallelspec) to say how the feature drafter drafts")
  return declared
