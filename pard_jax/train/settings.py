"""The train step's settings as plain data (no jax): what `train.spec` builds from the config
and the jax side (`optimizer`, `losses`, `step`) reads."""

from __future__ import annotations

import dataclasses
import math

SCHEDULES = ("constant", "cosine", "linear")
# "lora": only the adapters and the mask rows (`adapters`, all `nnx.LoRAParam`) learn; the
# optimizer sees just those (`optimizer.trainable_part`).
TRAINABLE = ("all", "layers", "lora")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-5
  schedule: str = "constant"  # after warmup; cosine/linear decay to 0 at `total_steps`
  warmup_steps: int = 0
  total_steps: int = 1
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  max_grad_norm: float = 1.0  # 0 disables clipping


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step: kept slots per depth, each depth's mask id (one shared
  id for PARD, distinct ids for ParallelSpec) and the loss weights."""
  counts: tuple[int, ...]
  mask_tokens: tuple[int, ...]  # depth k >= 1 feeds mask_tokens[k - 1]
  # The head is frozen (`trainable="layers"`): skip its weight gradient, the costliest matmul
  # of a small drafter's step (vocab x hidden per slot); hidden states still get theirs.
  frozen_head: bool = False
  # Only the adapters and mask rows learn (`train.trainable="lora"`, `trainable_part`).
  adapters: bool = False
  ce_weight: float = 1.0  # cross-entropy on the data's next tokens
  kl_weight: float = 0.0  # KL(target || drafter) at every slot; needs a teacher (PARD-2: 0.1, 1.0)
  cat_weighting: bool = False  # PARD-2's CAT (`cat_weights`); needs a teacher
  # A feature drafter: the teacher's (target's) layers it reads, and the share of rows that
  # train without features (PARD-2: 0.1-0.2).
  feature_layers: tuple[int, ...] = ()
  feature_dropout: float = 0.0
  # The autoregressive peer: depth-k slots hold the true token at their position instead of a
  # mask (the drafts an AR drafter feeds itself, teacher-forced); with features, each reads
  # the drafter's own hidden state at the slot before it (EAGLE).
  autoregressive: bool = False
  feedback_gradient: bool = False  # the peer's fed-back states carry gradient (EAGLE-3)

  @property
  def num_draft_tokens(self) -> int:  # K: the depths of the layout
    return len(self.counts)

  @property
  def uses_teacher(self) -> bool:
    return self.needs_teacher_logits or bool(self.feature_layers)

  @property
  def needs_teacher_logits(self) -> bool:
    return self.kl_weight > 0 or self.cat_weighting


_FLOOR_EPS = 1e-9


def cod_counts(length: int, num_draft_tokens: int, r: float, r_min: float) -> tuple[int, ...]:
  """Kept slots per depth `(L, n_1, ..., n_{K-1})` under COD; depends only on static values."""
  if num_draft_tokens < 1:
    raise ValueError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
  if length < num_draft_tokens:
    raise ValueError(f"length ({length}) must be >= num_draft_tokens ({num_draft_tokens})")
  if not 0.0 < r <= 1.0:
    raise ValueError(f"r must be in (0, 1], got {r}")
  if not 0.0 <= r_min <= 1.0:
    raise ValueError(f"r_min must be in [0, 1], got {r_min}")
  counts = [length]
  for depth in range(1, num_draft_tokens):
    wanted = math.floor(length * max(r ** depth, r_min) + _FLOOR_EPS)
    counts.append(max(0, min(wanted, counts[-1] - 1)))
  return tuple(counts)
