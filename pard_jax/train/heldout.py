"""Held-out acceptance: how many drafts greedy decoding accepts, read off one drafter forward.

The full layout (every depth at every row index: COD with r = r_min = 1) of a packed row holds,
for every anchor a (the last committed token), the K drafts an iteration starting there makes:
depth j at row index a + j, predicting token a + j + 1. A greedy iteration accepts drafts while
they equal the text's next tokens, so over the target's own greedy text (`distill.py`) this is
greedy decoding's acceptance at every position, without running the loop; over other text it is
the teacher-forced acceptance. An anchor counts when the token after it is a loss target (an
answer's, with `data.assistant_only_loss`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pard_jax import packing
from pard_jax import sharding as sharding_lib
from pard_jax.errors import DataError
from pard_jax.train import losses
from pard_jax.train import settings as train_settings


def full_layout(step_cfg: train_settings.StepConfig, length: int) -> train_settings.StepConfig:
  """`step_cfg` over the full K-depth layout of rows of `length`, drafting as decoding does:
  with features on every row, and no teacher logits (nothing here needs them)."""
  return dataclasses.replace(
      step_cfg, counts=train_settings.cod_counts(length, step_cfg.num_draft_tokens, 1.0, 1.0),
      feature_dropout=0.0, kl_weight=0.0, cat_weighting=False, ce_weight=1.0)


def anchor_acceptance(params, batch: dict[str, jax.Array], teacher_params=None, *,
                      graphdef: nnx.GraphDef, step_cfg: train_settings.StepConfig,
                      teacher_graphdef: nnx.GraphDef | None = None):
  """Per anchor a (row index) of a `[batch, L]` packed batch (`step_cfg` from `full_layout`):
  `right_BxKxA`, whether the depth-j draft is the text's token a + j + 1 and that token a loss
  target (past the end of an answer, or of the row, a draft is never right: decoding stops at
  the end of an answer), and `counted_BxA`, whether the token after a is a loss target. A greedy
  iteration from anchor a accepts `cumprod(right, axis=1).sum(1)` drafts."""
  k, counts = step_cfg.num_draft_tokens, step_cfg.counts
  features = None
  if step_cfg.feature_layers:
    _, features = losses.teacher_outputs(teacher_params, teacher_graphdef, batch, step_cfg)
  model = nnx.merge(graphdef, params)
  row_keys_B = jax.random.split(jax.random.key(0), batch["tokens"].shape[0])  # r = 1: unused
  layout, hidden_BxSxD = losses.layout_hidden(model, batch, row_keys_B, step_cfg, features)
  logits_BxSxR = model.head_logits(hidden_BxSxD)
  labels_BxS, in_head_BxS = losses.head_labels(model.config, layout["labels"],
                                                 jnp.ones_like(layout["weights"]))
  right_BxS = ((jnp.argmax(logits_BxSxR, axis=-1) == labels_BxS) & (in_head_BxS > 0)
               & (layout["weights"] > 0))
  offsets = np.concatenate([[0], np.cumsum(counts)])
  # Depth j's slots sit at row indices j .. L-1, in order: its a-th slot drafts for anchor a;
  # the last j anchors have no depth-j slot.
  by_anchor = lambda x_BxS: jnp.stack(
      [jnp.pad(x_BxS[:, offsets[j]:offsets[j + 1]], ((0, 0), (0, j))) for j in range(k)],
      axis=1)
  return by_anchor(right_BxS), layout["weights"][:, :counts[0]] > 0


def acceptance_sums(params, batch: dict[str, jax.Array], teacher_params=None, *,
                    graphdef: nnx.GraphDef, step_cfg: train_settings.StepConfig,
                    teacher_graphdef: nnx.GraphDef | None = None) -> dict[str, jax.Array]:
  """`anchor_acceptance` summed over the counted anchors: `correct` `[K]` (depth-j drafts
  right), `accepted` `[K]` (anchors whose first i + 1 drafts are right: accepted >= i + 1) and
  `anchors`."""
  right_BxKxA, counted_BxA = anchor_acceptance(params, batch, teacher_params, graphdef=graphdef,
                                               step_cfg=step_cfg,
                                               teacher_graphdef=teacher_graphdef)
  in_sum = lambda x_BxKxA: jnp.sum(x_BxKxA * counted_BxA[:, None], axis=(0, 2),
                                   dtype=jnp.float32)
  return dict(correct=in_sum(right_BxKxA), accepted=in_sum(jnp.cumprod(right_BxKxA, axis=1)),
              anchors=jnp.sum(counted_BxA, dtype=jnp.float32))


def jit_acceptance(graphdef: nnx.GraphDef, step_cfg: train_settings.StepConfig, mesh: Mesh,
                   params_sharding, teacher_graphdef: nnx.GraphDef | None = None,
                   teacher_sharding=None):
  """`acceptance_sums` jitted over `mesh` like the train step: params in their shardings, the
  batch split over the data axes; with features, the teacher's parameters a 3rd argument."""
  fn = functools.partial(acceptance_sums, graphdef=graphdef, step_cfg=step_cfg,
                         teacher_graphdef=teacher_graphdef)
  in_shardings = (params_sharding, sharding_lib.batch_sharding(mesh))
  if teacher_graphdef is not None:
    in_shardings += (teacher_sharding,)
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=NamedSharding(mesh, P()))


def summary(sums: dict[str, np.ndarray]) -> dict[str, float | list[float]]:
  """Rates from summed `acceptance_sums`: per-depth accuracy, accepted >= i (i = 1..K) and
  τ = 1 + their sum, the tokens a greedy iteration commits on average."""
  anchors = max(float(sums["anchors"]), 1.0)
  accepted = [float(x) / anchors for x in sums["accepted"]]
  return dict(tau=1.0 + sum(accepted), accepted=accepted,
              accuracy=[float(x) / anchors for x in sums["correct"]],
              anchors=int(sums["anchors"]))


def _documents(rows: packing.PackedRows) -> set[bytes]:
  """A digest of every document (piece) of the rows."""
  digests = set()
  for tokens_L, segments_L in zip(rows.tokens, rows.segment_ids):
    starts = np.flatnonzero(np.diff(segments_L, prepend=-1))
    for piece, segment in zip(np.split(tokens_L, starts[1:]), segments_L[starts]):
      if segment > 0:
        digests.add(hashlib.blake2b(piece.tobytes(), digest_size=16).digest())
  return digests


def check_unseen(heldout_rows: packing.PackedRows, rows: packing.PackedRows) -> None:
  """Refuses held-out rows holding a document (as packed) that the training rows hold too."""
  shared = len(_documents(heldout_rows) & _documents(rows))
  if shared:
    raise DataError(f"config.heldout.source: {shared} of its documents are also in "
                    "data.source: held-out rows must be text the run does not train on")


def first_rows(rows: packing.PackedRows, max_rows: int) -> packing.PackedRows:
  """The first `max_rows` rows (0: all)."""
  if not max_rows or max_rows >= rows.num_rows:
    return rows
  return packing.PackedRows(**rows.take(np.arange(max_rows)))


class Evaluator:
  """Held-out acceptance of a run's drafter: `evaluator(params, *teacher)` -> `summary`.

  The rows go in micro-batches of `micro_batch` (the train step's; the full layout holds about
  K x L slots against COD's (1 + r + r^2 + ...) x L), each process taking its share as
  `packing.BatchIterator` does; the rows padding the last batch count nothing.
  """

  def __init__(self, rows: packing.PackedRows, graphdef: nnx.GraphDef,
               step_cfg: train_settings.StepConfig, length: int, mesh: Mesh, params_sharding,
               micro_batch: int, teacher_graphdef: nnx.GraphDef | None = None,
               teacher_sharding=None):
    self.rows, self.micro_batch = rows, micro_batch
    self.in_sharding = sharding_lib.batch_sharding(mesh)
    self.fn = jit_acceptance(graphdef, full_layout(step_cfg, length), mesh, params_sharding,
                             teacher_graphdef, teacher_sharding)

  def batches(self):
    local = self.micro_batch // jax.process_count()
    empty = {k: np.zeros_like(v[:1]) for k, v in self.rows.take(np.arange(1)).items()}
    for start in range(0, self.rows.num_rows, self.micro_batch):
      index = start + jax.process_index() * local + np.arange(local)
      taken = self.rows.take(np.minimum(index, self.rows.num_rows - 1))
      real = index < self.rows.num_rows
      yield {k: np.where(real.reshape(-1, *[1] * (v.ndim - 1)), v, empty[k])
             for k, v in taken.items()}

  def __call__(self, params, *teacher) -> dict[str, float | list[float]]:
    total = None
    for local in self.batches():
      batch = {k: jax.make_array_from_process_local_data(self.in_sharding, v)
               for k, v in local.items()}
      sums = jax.device_get(self.fn(params, batch, *teacher))
      total = sums if total is None else jax.tree.map(np.add, total, sums)
    return summary(total)
