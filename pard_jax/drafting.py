"""Drafters: what each method feeds its draft model, and how it reads K drafts back.

Every drafter keeps its own KV cache and a per-row `draft_lengths_B`: its cache is valid for
slots `[0, draft_lengths_B)`. Each iteration first feeds the committed tokens it has not seen
yet (`tokens[draft_length:length]`, the "catch-up"), then drafts. The returned `Drafts.fed`
says how many of the K drafts entered the cache as real tokens, so that after verification
the caller sets `draft_lengths = lengths + min(num_accepted, fed)` and stale entries are
simply overwritten next time.

- `sd`: an autoregressive drafter, K forwards (catch-up of at most 2 tokens, then 1 each). A
  feature drafter (EAGLE style) feeds each drafted token with its own last residual stream in
  place of the target's feature, which does not exist yet; its accepted drafts are fed again
  with the target's: fed = 0 and a catch-up of up to K+1 tokens, as for the parallel kinds.
- `pard` / `parallelspec`: one forward over the catch-up (at most K+1 tokens) followed by
  K-1 mask tokens; draft i+1 is read at mask i. PARD repeats one shared mask id, ParallelSpec
  uses K-1 distinct ones: the mask ids are the only difference between them at inference.

A feature drafter (a kind with `feature_layers`) also reads `features_BxTxC`, the target's
features by position: a real token at position p is fed with the feature at p - 1 (the target's
state that produced it); mask tokens and position 0 get the learned stand-in.

`draft` dispatches on the drafter kind (`pard_jax.drafter_kinds`), the plain data that says
which method a drafter serves.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pard_jax import drafter_kinds as kinds
from pard_jax.model import KVCache


def take_window(tokens_BxT, starts_B, width: int):
  """`tokens[b, starts[b] : starts[b] + width]`, indices past the end clipped."""
  idx_BxW = starts_B[:, None] + jnp.arange(width)
  return jnp.take_along_axis(tokens_BxT, idx_BxW, axis=1, mode="clip"), idx_BxW


def feature_input(model, features_BxTxC, positions_BxW, real_BxW):
  """What a feature drafter adds to the embeddings of the tokens at `positions_BxW`: each real
  token (`real_BxW`) past position 0 reads the feature at its position - 1; None without
  features (a plain drafter, or a feature drafter in token-only mode)."""
  if features_BxTxC is None:
    return None
  before_BxW = jnp.maximum(positions_BxW - 1, 0)
  features_BxWxC = jnp.take_along_axis(features_BxTxC, before_BxW[..., None], axis=1,
                                       mode="clip")
  return model.feature_embeddings(features_BxWxC, real_BxW & (positions_BxW > 0))


def _logits_at(model, hidden_BxSxD, idx_BxK):
  """Logits only where they are needed: `[batch, K, vocab]`."""
  picked = jnp.take_along_axis(hidden_BxSxD, idx_BxK[..., None], axis=1)
  return model.logits(picked)


ProbsFn = Callable[[jax.Array], jax.Array]
SampleFn = Callable[[jax.Array, jax.Array], jax.Array]


class DraftInput(NamedTuple):
  """What every drafter reads in one drafting step."""
  model: nnx.Module
  cache: KVCache  # valid on [0, draft_lengths_B)
  tokens_BxT: jax.Array  # committed tokens, valid on [0, lengths_B)
  lengths_B: jax.Array
  draft_lengths_B: jax.Array
  probs_fn: ProbsFn  # logits -> q after temperature / top-k / top-p
  sample_fn: SampleFn  # (rng, q) -> tokens
  rng: jax.Array
  features_BxTxC: jax.Array | None = None  # the target's, for a kind with feature layers


class Drafts(NamedTuple):
  """What one drafting step returns."""
  tokens_BxK: jax.Array  # draft i sampled from q_BxKxV[:, i]
  q_BxKxV: jax.Array  # the drafter's distributions after temperature / top-k / top-p
  # The drafter's own (temperature 1) probability of each draft: how sure it is, also when
  # greedy q is one-hot. Only decides how many drafts to verify, never whether one is accepted.
  confidence_BxK: jax.Array
  cache: KVCache
  fed: int  # leading drafts that entered the drafter's cache as real tokens


def _confidence(logits_xV, tokens_x):
  logits_xV = logits_xV.astype(jnp.float32)
  picked = jnp.take_along_axis(logits_xV, tokens_x[..., None], axis=-1)[..., 0]
  return jnp.exp(picked - jax.nn.logsumexp(logits_xV, axis=-1))


def draft_autoregressive(x: DraftInput, num_draft_tokens: int) -> Drafts:
  """K drafts from K drafter forwards (fed = K - 1; with features 0)."""
  model, probs_fn, sample_fn, features_BxTxC = x.model, x.probs_fn, x.sample_fn, x.features_BxTxC
  lengths_B, draft_lengths_B = x.lengths_B, x.draft_lengths_B
  # Since the last iteration the drafter has missed one token, or two after accepting all K
  # (K + 1 when it keeps none of its drafts).
  fed = num_draft_tokens - 1 if features_BxTxC is None else 0
  catchup_BxW, positions_BxW = take_window(x.tokens_BxT, draft_lengths_B,
                                           num_draft_tokens + 1 - fed)
  extra = feature_input(model, features_BxTxC, positions_BxW, jnp.ones_like(catchup_BxW, bool))
  # A feature drafter also returns its own last residual stream, fed with its next draft.
  own_layers = () if features_BxTxC is None else (-1,)
  hidden, cache, own_BxWxD = model.backbone_features(catchup_BxW, positions_BxW, x.cache,
                                                     feature_layers=own_layers, extra_BxSxD=extra)
  last_Bx1 = (lengths_B - draft_lengths_B - 1)[:, None]
  rngs = jax.random.split(x.rng, num_draft_tokens)
  logits_Bx1xV = _logits_at(model, hidden, last_Bx1)
  q_Bx1xV = probs_fn(logits_Bx1xV)
  first_B = sample_fn(rngs[0], q_Bx1xV[:, 0])
  own_Bx1xD = (None if own_BxWxD is None else
              jnp.take_along_axis(own_BxWxD, last_Bx1[..., None], axis=1))

  def step(carry, rng_i):
    cache, token_B, position_B, own_Bx1xD = carry
    position_Bx1 = position_B[:, None]
    # A drafted token has no target feature yet: it reads the drafter's own (EAGLE).
    extra = None if own_Bx1xD is None else model.own_feature_embeddings(own_Bx1xD)
    hidden, cache, own_Bx1xD = model.backbone_features(token_B[:, None], position_Bx1, cache,
                                                      feature_layers=own_layers,
                                                      extra_BxSxD=extra)
    logits = model.logits(hidden)
    q_BxV = probs_fn(logits[:, 0])
    token_B = sample_fn(rng_i, q_BxV)
    return ((cache, token_B, position_B + 1, own_Bx1xD),
            (token_B, q_BxV, _confidence(logits[:, 0], token_B)))

  (cache, _, _, _), (rest_KxB, q_rest_KxBxV, confidence_rest_KxB) = jax.lax.scan(
      step, (cache, first_B, lengths_B, own_Bx1xD), rngs[1:])
  confidence_Bx1 = _confidence(logits_Bx1xV[:, 0], first_B)[:, None]
  return Drafts(tokens_BxK=jnp.concatenate([first_B[:, None], rest_KxB.T], axis=1),
                q_BxKxV=jnp.concatenate([q_Bx1xV, jnp.moveaxis(q_rest_KxBxV, 0, 1)], axis=1),
                confidence_BxK=jnp.concatenate([confidence_Bx1, confidence_rest_KxB.T], axis=1),
                cache=cache, fed=fed)


def draft_parallel(x: DraftInput, mask_ids: tuple[int, ...]) -> Drafts:
  """K drafts from one forward over `[catch-up tokens, mask_1 .. mask_{K-1}]` (fed = 0).

  The catch-up holds 1..K+1 real tokens per row; the masks follow each row's last real token
  at consecutive positions.
  """
  model = x.model
  num_masks = len(mask_ids)
  k = num_masks + 1
  width = k + 1 + num_masks
  real_BxW, positions_BxW = take_window(x.tokens_BxT, x.draft_lengths_B, width)
  num_real_Bx1 = (x.lengths_B - x.draft_lengths_B)[:, None]
  offset_BxW = jnp.arange(width)[None] - num_real_Bx1
  masks_M = jnp.asarray(mask_ids, jnp.int32).reshape(num_masks)
  mask_BxW = masks_M[jnp.clip(offset_BxW, 0, max(num_masks - 1, 0))] if num_masks else real_BxW
  inputs_BxW = jnp.where(offset_BxW < 0, real_BxW, mask_BxW)
  extra = feature_input(model, x.features_BxTxC, positions_BxW, offset_BxW < 0)
  hidden, cache = model.backbone(inputs_BxW, positions_BxW, x.cache, extra_BxSxD=extra)
  read_BxK = num_real_Bx1 - 1 + jnp.arange(k)[None]
  logits_BxKxV = _logits_at(model, hidden, read_BxK)
  q_BxKxV = x.probs_fn(logits_BxKxV)
  drafts_BxK = x.sample_fn(x.rng, q_BxKxV)
  return Drafts(tokens_BxK=drafts_BxK, q_BxKxV=q_BxKxV,
                confidence_BxK=_confidence(logits_BxKxV, drafts_BxK), cache=cache, fed=0)


@functools.singledispatch
def draft(kind: kinds.DrafterKind, x: DraftInput, num_draft_tokens: int) -> Drafts:
  """K drafts the way `kind` makes them (`x.features_BxTxC`: for a kind with feature layers)."""
  raise TypeError(f"{type(kind).__name__} does not draft")


@draft.register
def _(kind: kinds.AutoregressiveDrafter, x: DraftInput, num_draft_tokens: int) -> Drafts:
  del kind
  return draft_autoregressive(x, num_draft_tokens)


@draft.register(kinds.PardDrafter)
@draft.register(kinds.ParallelSpecDrafter)
def _(kind, x: DraftInput, num_draft_tokens: int) -> Drafts:
  return draft_parallel(x, kind.mask_ids(num_draft_tokens))
