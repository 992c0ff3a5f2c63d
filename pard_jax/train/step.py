"""The PARD train step: one AdamW update over a packed batch, accumulated, jitted over a mesh.

The train state is a plain pytree `{"params", "opt_state", "step"}` over the NNX parameter state
(`graphdef, params = nnx.split(model)` once, `nnx.merge` inside the step), so `jax.jit` with
`NamedSharding`s and orbax see ordinary arrays. The loss is `losses.layout_loss`, the optimizer
`optimizer.make_optimizer`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pard_jax import sharding as sharding_lib
from pard_jax.train.losses import layout_loss, teacher_outputs
from pard_jax.train.optimizer import trainable_part, with_trainable
from pard_jax.train.settings import StepConfig

TrainState = dict[str, Any]


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               teacher_params=None, *, graphdef: nnx.GraphDef,
               optimizer: optax.GradientTransformation, step_cfg: StepConfig,
               accum_steps: int = 1,
               teacher_graphdef: nnx.GraphDef | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a `[batch, L]` packed batch, accumulated over `accum_steps` chunks.

  Chunk c takes rows c, c + accum_steps, ... so every chunk stays split over the data axes. Each
  row's COD sample depends only on (rng, step, row), so accumulation does not change the layout.
  With `step_cfg.uses_teacher` (KL, CAT or features) the teacher (a frozen model, usually the
  target) runs on each chunk.
  """
  def chunk(x):  # [batch, ...] -> [accum_steps, batch / accum_steps, ...]
    return x.reshape(-1, accum_steps, *x.shape[1:]).swapaxes(0, 1)

  trainable, rest = trainable_part(state["params"], step_cfg.adapters)
  grad_fn = jax.grad(lambda t, *args: layout_loss(with_trainable(t, rest), *args), has_aux=True)
  row_keys_B = jax.random.split(jax.random.fold_in(rng, state["step"]),
                                batch["tokens"].shape[0])

  use_kl = step_cfg.kl_weight > 0

  def accumulate(carry, xs):
    micro_batch, micro_keys = xs
    teacher, features = (teacher_outputs(teacher_params, teacher_graphdef, micro_batch, step_cfg)
                         if step_cfg.uses_teacher else (None, None))
    grads, stats = grad_fn(trainable, graphdef, micro_batch, micro_keys, step_cfg, teacher,
                           features)
    return jax.tree.map(jnp.add, carry, (grads, stats)), None

  stat_names = ("nll", "correct", "count") + (("kl",) if use_kl else ())
  zeros = (jax.tree.map(jnp.zeros_like, trainable),
           {k: jnp.zeros((step_cfg.num_draft_tokens,), jnp.float32) for k in stat_names})
  (grads, stats), _ = jax.lax.scan(
      accumulate, zeros, (jax.tree.map(chunk, batch), chunk(row_keys_B)))
  total = jnp.maximum(jnp.sum(stats["count"]), 1.0)
  grads = jax.tree.map(lambda g: g / total.astype(g.dtype), grads)
  updates, opt_state = optimizer.update(grads, state["opt_state"], trainable)
  params = with_trainable(optax.apply_updates(trainable, updates), rest)
  count_K = jnp.maximum(stats["count"], 1.0)
  loss = step_cfg.ce_weight * jnp.sum(stats["nll"])
  metrics = dict(loss_per_depth=stats["nll"] / count_K,
                 accuracy_per_depth=stats["correct"] / count_K, tokens_per_depth=stats["count"],
                 grad_norm=optax.tree.norm(grads))
  if use_kl:
    loss = loss + step_cfg.kl_weight * jnp.sum(stats["kl"])
    metrics["kl_per_depth"] = stats["kl"] / count_K
  metrics["loss"] = loss / total
  return dict(params=params, opt_state=opt_state, step=state["step"] + 1), metrics


def init_state(params, optimizer: optax.GradientTransformation,
               adapters: bool = False) -> TrainState:
  trainable, _ = trainable_part(params, adapters)
  return dict(params=params, opt_state=optimizer.init(trainable),
              step=jnp.zeros((), jnp.int32))


def jit_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                   step_cfg: StepConfig, mesh: Mesh, state_sharding, accum_steps: int = 1,
                   teacher_graphdef: nnx.GraphDef | None = None, teacher_sharding=None):
  """`train_step` jitted over `mesh`: state kept in its shardings and donated, batch split;
  with a teacher, its parameters are a 4th argument, kept in `teacher_sharding`."""
  replicated = NamedSharding(mesh, P())
  step = functools.partial(train_step, graphdef=graphdef, optimizer=optimizer,
                           step_cfg=step_cfg,
                           accum_steps=accum_steps, teacher_graphdef=teacher_graphdef)
  in_shardings = (state_sharding, sharding_lib.batch_sharding(mesh), replicated)
  if teacher_graphdef is not None:
    in_shardings += (teacher_sharding,)
  return jax.jit(step, in_shardings=in_shardings,
                 out_shardings=(state_sharding, replicated), donate_argnames="state")


def create_sharded_state(params, optimizer: optax.GradientTransformation, mesh: Mesh,
                         adapters: bool = False):
  """The initial train state placed in its shardings, and those shardings."""
  init = functools.partial(init_state, optimizer=optimizer, adapters=adapters)
  abstract = jax.eval_shape(init, params)
  sharding = sharding_lib.state_shardings(abstract, mesh)
  params = jax.device_put(params, sharding["params"])
  state = jax.jit(init, out_shardings=sharding)(params)
  return state, sharding
