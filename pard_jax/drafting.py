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

`draft` dispatches on the drafter kind (`pard_jax.drafter_kinds`), the plain data that says
which method a drafter serves.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pard_jax import drafter_kinds as kinds
from pard_jax.model import KVCache


def take_window(tokens_BxT, starts_B, width: int):
  """`tokens[b, starts[b] : starts[b] + width]`, indices past the end clipped."""
  idx_BxW = starts_B[:, None] + jnp.arange(width)
  return jnp.take_along_axis(tokens_BxT, idx_BxW, axis=1, mode="clip"), idx_BxW


def _logits_at(model, hidden_BxSxD, idx_BxK):
  """Logits only where they are needed: `[batch, K, vocab]`."""
  picked = jnp.take_along_axis(hidden_BxSxD, idx_BxK[..., None], axis=1)
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


@functools.singledispatch
def draft(kind: kinds.DrafterKind, model: nnx.Module, cache: KVCache, tokens_BxT, lengths_B,
          draft_lengths_B, num_draft_tokens: int, probs_fn: ProbsFn, sample_fn: SampleFn, rng):
  """K drafts the way `kind` makes them: (drafts_BxK, q_BxKxV, cache, fed)."""
  raise TypeError(f"{type(kind).__name__} does not draft")


@draft.register
def _(kind: kinds.AutoregressiveDrafter, model, cache, tokens_BxT, lengths_B, draft_lengths_B,
      num_draft_tokens, probs_fn, sample_fn, rng):
  del kind
  return draft_autoregressive(model, cache, tokens_BxT, lengths_B, draft_lengths_B,
                              num_draft_tokens, probs_fn, sample_fn, rng)


@draft.register(kinds.PardDrafter)
@draft.register(kinds.ParallelSpecDrafter)
def _(kind, model, cache, tokens_BxT, lengths_B, draft_lengths_B, num_draft_tokens, probs_fn,
      sample_fn, rng):
  return draft_parallel(model, cache, tokens_BxT, lengths_B, draft_lengths_B,
                        kind.mask_ids(num_draft_tokens), probs_fn, sample_fn, rng)
