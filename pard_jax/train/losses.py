"""The PARD loss of a packed batch: the drafter's forward over the COD training layout and the
loss terms (cross-entropy at every depth, KL to a teacher, PARD-2's CAT weights).

A feature drafter trains with the target online: the frozen target runs over each packed row
and gives the features (and, with KL or CAT, the teacher's distributions). Real slots read the
feature of the position before theirs, mask slots the learned stand-in; the autoregressive
peer's chain slots hold true tokens and read the drafter's own hidden state (EAGLE's
training-time test, `layout_hidden`). With `feature_dropout` a row gets no features at all, so
the same drafter also drafts from tokens alone.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pard_jax import layout as layout_lib
from pard_jax.train.settings import StepConfig


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
    # with `feedback_gradient` (backpropagating through every pass makes a step much dearer).
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
