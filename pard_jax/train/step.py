"""The PARD train step: COD layout, next-token loss at every depth, AdamW, sharded jit.

A feature drafter trains with the target online: the frozen target runs over each packed row
and gives the features (and, with KL or CAT, the teacher's distributions). Real slots read the
feature of the position before theirs, mask slots the learned stand-in; the autoregressive
peer's chain slots hold true tokens and read the drafter's own hidden state (EAGLE's
training-time test, `layout_hidden`). With `feature_dropout` a row gets no features at all, so
the same drafter also drafts from tokens alone.

The train state is a plain pytree `{"params", "opt_state", "step"}` over the NNX parameter state
(`graphdef, params = nnx.split(model)` once, `nnx.merge` inside the step), so `jax.jit` with
`NamedSharding`s and orbax see ordinary arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pard_jax import drafter_kinds as kinds
from pard_jax import layout as layout_lib
from pard_jax import sharding as sharding_lib

SCHEDULES = ("constant", "cosine", "linear")
TrainState = dict[str, Any]


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


# "lora": only the adapters and the mask rows (`adapters`, all `nnx.LoRAParam`) learn; the
# optimizer sees just those (`trainable_part`).
TRAINABLE = ("all", "layers", "lora")


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


def layout_masks(kind: kinds.DrafterKind, num_draft_tokens: int) -> tuple[int, ...]:
  """Depth k's input id in the training layout of `kind` (the autoregressive peer's are
  replaced by true tokens)."""
  if isinstance(kind, kinds.AutoregressiveDrafter):
    return (0,) * (num_draft_tokens - 1)
  return kind.mask_ids(num_draft_tokens)


def head_labels(config, labels_BxS, weights_BxS):
  """Labels as indices into the head's vocabulary. A restricted head cannot predict tokens
  outside `draft_vocab`: those slots carry no loss and do not count."""
  if config.draft_vocab is None:
    return labels_BxS, weights_BxS
  index_V = np.full(config.vocab_size, -1, np.int32)
  index_V[list(config.draft_vocab)] = np.arange(len(config.draft_vocab))
  index_BxS = jnp.asarray(index_V)[labels_BxS]
  return jnp.maximum(index_BxS, 0), weights_BxS * (index_BxS >= 0).astype(weights_BxS.dtype)


def teacher_outputs(teacher_params, teacher_graphdef: nnx.GraphDef,
                    batch: dict[str, jax.Array], step_cfg: StepConfig):
  """One teacher forward over the packed rows (each document sees only itself), without
  gradient: its next-token logits `[batch, L, V_teacher]` (None without KL or CAT) and the features
  of `step_cfg.feature_layers` `[batch, L, C]` (None without)."""
  depths_BxL = jnp.zeros_like(batch["positions"])
  mask_BxLxL = layout_lib.attention_mask(depths_BxL, batch["positions"], batch["segment_ids"])
  teacher = nnx.merge(teacher_graphdef, teacher_params)
  hidden_BxLxD, _, features_BxLxC = teacher.backbone_features(
      batch["tokens"], batch["positions"], attn_mask_BxSxT=mask_BxLxL,
      feature_layers=step_cfg.feature_layers)
  logits_BxLxV = teacher.logits(hidden_BxLxD) if step_cfg.needs_teacher_logits else None
  return jax.lax.stop_gradient((logits_BxLxV, features_BxLxC))


def layout_features(model, layout: dict[str, jax.Array], features_BxLxC, row_keys_B,
                    step_cfg: StepConfig):
  """What the drafter adds to each slot's embedding: a real slot reads the feature of its row
  index - 1 (the same document: position > 0), a chain slot the stand-in (which the
  autoregressive peer replaces by its own state, `layout_hidden`); rows drawn by
  `feature_dropout` get nothing (token-only)."""
  before_BxS = jnp.maximum(layout["index"] - 1, 0)
  features_BxSxC = jnp.take_along_axis(features_BxLxC, before_BxS[..., None], axis=1)
  real_BxS = (layout["depths"] == 0) & (layout["positions"] > 0)
  return _drop_features(model.feature_embeddings(features_BxSxC, real_BxS), row_keys_B, step_cfg)


_DROPOUT_STREAM = 1 << 20  # the row key's stream for feature dropout (COD uses 1 .. K-1)


def _drop_features(extra_BxSxD, row_keys_B, step_cfg: StepConfig):
  """`extra_BxSxD` zeroed on the rows `feature_dropout` draws (the same rows for every call)."""
  if step_cfg.feature_dropout <= 0:
    return extra_BxSxD
  keep_B = jax.vmap(lambda key: jax.random.bernoulli(
      jax.random.fold_in(key, _DROPOUT_STREAM), 1 - step_cfg.feature_dropout))(row_keys_B)
  return extra_BxSxD * keep_B[:, None, None].astype(extra_BxSxD.dtype)


def chain_predecessors(index_BxS, counts: Sequence[int]):
  """The slot before each slot in its chain `[batch, S]`: depth d >= 1 at row index i follows
  depth d - 1 at row index i - 1 (COD keeps it: the chain property); depth 0, itself."""
  offsets = np.concatenate([[0], np.cumsum(counts)])

  def one_row(index_S):
    slots = [jnp.arange(counts[0], dtype=jnp.int32)]
    for depth in range(1, len(counts)):
      before = index_S[offsets[depth - 1]:offsets[depth]]  # sorted within a depth
      slots.append(offsets[depth - 1] + jnp.searchsorted(
          before, index_S[offsets[depth]:offsets[depth + 1]] - 1).astype(jnp.int32))
    return jnp.concatenate(slots)
  return jax.vmap(one_row)(index_BxS)


def kl_to_teacher(config, logits_BxSxR, teacher_BxLxV, index_BxS) -> jax.Array:
  """KL(p_teacher || q_drafter) `[batch, S]` over the drafter head's vocabulary.

  Slot s is compared with the teacher at its row index (the same next token). The teacher's
  distribution is renormalised on the head's tokens: a restricted head gives the rest q = 0.
  Drafter rows past the teacher's vocabulary (appended mask rows) get p = 0.
  """
  teacher_BxSxV = jnp.take_along_axis(teacher_BxLxV, index_BxS[..., None], axis=1)
  if config.draft_vocab is not None:
    teacher_BxSxR = teacher_BxSxV[..., jnp.asarray(config.draft_vocab)]
  else:
    extra = logits_BxSxR.shape[-1] - teacher_BxSxV.shape[-1]
    teacher_BxSxR = (jnp.pad(teacher_BxSxV, ((0, 0), (0, 0), (0, extra)),
                             constant_values=-jnp.inf) if extra > 0
                     else teacher_BxSxV[..., :logits_BxSxR.shape[-1]])
  log_p = jax.nn.log_softmax(teacher_BxSxR, axis=-1)
  log_q = jax.nn.log_softmax(logits_BxSxR, axis=-1)
  p = jnp.exp(log_p)
  return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def cat_weights(teacher_BxLxV, labels_BxL, index_BxS, depths_BxS) -> jax.Array:
  """PARD-2's CAT weight of each slot `[batch, S]`: for depth k at row index i, the teacher's
  probability of the k true tokens before the one it predicts, prod_{t=i-k}^{i-1} p(label_t).
  Its draft counts only if those k drafts are accepted first, and when they are the target's
  own samples that happens with this probability (a soft version of it under greedy); depth 0
  weighs 1."""
  log_p_BxLxV = jax.nn.log_softmax(teacher_BxLxV.astype(jnp.float32), axis=-1)
  log_p_BxL = jnp.take_along_axis(log_p_BxLxV, labels_BxL[..., None], axis=-1)[..., 0]
  # cumulative_BxL1[:, j] = sum of log_p over row indices < j.
  cumulative_BxL1 = jnp.pad(jnp.cumsum(log_p_BxL, axis=1), ((0, 0), (1, 0)))
  at = lambda idx_BxS: jnp.take_along_axis(cumulative_BxL1, idx_BxS, axis=1)
  return jnp.exp(at(index_BxS) - at(jnp.maximum(index_BxS - depths_BxS, 0)))


def layout_hidden(model, batch: dict[str, jax.Array], row_keys_B: jax.Array,
                  step_cfg: StepConfig, features_BxLxC: jax.Array | None = None):
  """The batch's training layout and the drafter's final hidden states over it."""
  layout = layout_lib.build_layout(row_keys_B, batch, step_cfg.counts, step_cfg.mask_tokens)
  if step_cfg.autoregressive:
    layout["tokens"] = jnp.take_along_axis(batch["tokens"], layout["index"], axis=1)
  mask_BxSxS = layout_lib.attention_mask(layout["depths"], layout["positions"],
                                         layout["segment_ids"])
  extra_BxSxD = (None if features_BxLxC is None else
                 layout_features(model, layout, features_BxLxC, row_keys_B, step_cfg))
  if step_cfg.autoregressive and features_BxLxC is not None:
    # EAGLE's training-time test: a drafted token reads the drafter's own residual stream at
    # the slot before it in its chain. Depth d depends on depth d - 1 only, so K - 1 passes
    # give every depth the input decoding feeds it. The fed-back states carry gradient only
    # with `feedback_gradient`: it more than doubles a SmolLM2 step on 2 CPU cores.
    before_BxS = chain_predecessors(layout["index"], step_cfg.counts)
    chain_BxSx1 = (layout["depths"] > 0)[..., None]
    real_extra_BxSxD = extra_BxSxD
    for _ in range(step_cfg.num_draft_tokens - 1):
      _, _, own_BxSxD = model.backbone_features(
          layout["tokens"], layout["positions"], attn_mask_BxSxT=mask_BxSxS,
          feature_layers=(-1,), extra_BxSxD=extra_BxSxD)
      if not step_cfg.feedback_gradient:
        own_BxSxD = jax.lax.stop_gradient(own_BxSxD)
      own_BxSxD = jnp.take_along_axis(own_BxSxD, before_BxS[..., None], axis=1)
      own_extra_BxSxD = _drop_features(model.own_feature_embeddings(own_BxSxD), row_keys_B,
                                       step_cfg)
      extra_BxSxD = jnp.where(chain_BxSx1, own_extra_BxSxD, real_extra_BxSxD)
  hidden_BxSxD, _ = model.backbone(layout["tokens"], layout["positions"],
                                   attn_mask_BxSxT=mask_BxSxS, extra_BxSxD=extra_BxSxD)
  return layout, hidden_BxSxD


def layout_loss(params, graphdef: nnx.GraphDef, batch: dict[str, jax.Array],
                 row_keys_B: jax.Array, step_cfg: StepConfig,
                 teacher_BxLxV: jax.Array | None = None,
                 features_BxLxC: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed weighted loss (`ce_weight` * CE + `kl_weight` * KL, times the CAT weight with
  `cat_weighting`) over the layout, and per-depth sums `[K]`.

  Sums (not means) make gradient accumulation and data parallelism exact: the step divides by
  the total weight once.
  """
  model = nnx.merge(graphdef, params)
  layout, hidden_BxSxD = layout_hidden(model, batch, row_keys_B, step_cfg, features_BxLxC)
  head = nnx.merge(graphdef, jax.lax.stop_gradient(params)) if step_cfg.frozen_head else model
  logits_BxSxR = head.head_logits(hidden_BxSxD)
  labels_BxS, weights_BxS = head_labels(model.config, layout["labels"], layout["weights"])
  nll_BxS = optax.softmax_cross_entropy_with_integer_labels(logits_BxSxR, labels_BxS)
  correct_BxS = (jnp.argmax(logits_BxSxR, axis=-1) == labels_BxS).astype(jnp.float32)
  onehot_SxK = jnp.asarray(np.eye(step_cfg.num_draft_tokens, dtype=np.float32)[
      layout_lib.slot_depths(step_cfg.counts)])
  per_depth = lambda x_BxS: jnp.einsum("bs,sk->k", x_BxS * weights_BxS, onehot_SxK)
  stats = dict(nll=per_depth(nll_BxS), correct=per_depth(correct_BxS),
               count=per_depth(jnp.ones_like(nll_BxS)))
  loss_BxS = step_cfg.ce_weight * nll_BxS
  if step_cfg.kl_weight > 0:
    kl_BxS = kl_to_teacher(model.config, logits_BxSxR, teacher_BxLxV, layout["index"])
    stats["kl"] = per_depth(kl_BxS)
    loss_BxS = loss_BxS + step_cfg.kl_weight * kl_BxS
  if step_cfg.cat_weighting:  # the logged per-depth losses stay unweighted
    loss_BxS = loss_BxS * cat_weights(teacher_BxLxV, batch["labels"], layout["index"],
                                      layout["depths"])
  return jnp.sum(loss_BxS * weights_BxS), stats


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


def trainable_part(params, adapters: bool):
  """What the optimizer updates and the gradient is taken of: with `adapters`, the
  `nnx.LoRAParam` leaves (`pard_jax.adapters`), else all of `params`; and the rest (or None)."""
  if not adapters:
    return params, None
  return nnx.split_state(params, nnx.LoRAParam, ...)


def with_trainable(trainable, rest):
  return trainable if rest is None else nnx.merge_state(trainable, rest)


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
