"""AdamW for the drafter: the schedule, clipping, freezing the tensors a cut drafter shares with
its target (`trainable="layers"`), and the adapters-only split (`trainable="lora"`)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pard_jax import sharding as sharding_lib
from pard_jax.train.settings import SCHEDULES, TRAINABLE, OptimizerConfig


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {cfg.schedule!r}; known: {SCHEDULES}")
  decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
  after_warmup = {
      "constant": optax.constant_schedule(cfg.learning_rate),
      "cosine": optax.cosine_decay_schedule(cfg.learning_rate, decay_steps),
      "linear": optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps),
  }[cfg.schedule]
  if cfg.warmup_steps <= 0:
    return after_warmup
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warmup, after_warmup], [cfg.warmup_steps])


def freeze_shared(mask_tokens: Sequence[int]) -> optax.GradientTransformation:
  """Zeroes updates of the embedding (but its mask rows), the final norm and an untied head.

  For a drafter cut from its target: the shared tensors stay the target's, and only the kept
  layers and the mask tokens' embeddings learn. Applied before clipping (frozen gradients do
  not count in the norm) and after AdamW (no weight decay reaches frozen values).
  """
  def update(updates, state, params=None):
    del params

    def keep(path, u):
      name = sharding_lib.path_str(path)
      if name.startswith(("layers/", "features/")):  # a feature drafter's input learns too
        return u
      if name.startswith("embed_tokens/"):
        rows = np.zeros((u.shape[0], 1), np.float32)
        rows[list(mask_tokens)] = 1.0
        return u * jnp.asarray(rows, u.dtype)
      return jnp.zeros_like(u)
    return jax.tree_util.tree_map_with_path(keep, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimizerConfig, trainable: str = "all",
                   mask_tokens: Sequence[int] = ()) -> optax.GradientTransformation:
  """AdamW with optional clipping; `trainable="layers"` freezes the shared tensors. With
  `"lora"` it runs over `trainable_part(params)` only."""
  if trainable not in TRAINABLE:
    raise ValueError(f"unknown trainable {trainable!r}; known: {TRAINABLE}")
  adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay)
  chain = [adamw]
  if cfg.max_grad_norm > 0:
    chain.insert(0, optax.clip_by_global_norm(cfg.max_grad_norm))
  if trainable == "layers":
    chain = [freeze_shared(mask_tokens)] + chain + [freeze_shared(mask_tokens)]
  return optax.chain(*chain) if len(chain) > 1 else adamw


def trainable_part(params, adapters: bool):
  """What the optimizer updates and the gradient is taken of: with `adapters`, the
  `nnx.LoRAParam` leaves (`pard_jax.adapters`), else all of `params`; and the rest (or None)."""
  if not adapters:
    return params, None
  return nnx.split_state(params, nnx.LoRAParam, ...)


def with_trainable(trainable, rest):
  return trainable if rest is None else nnx.merge_state(trainable, rest)
