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
  uses K-1 distinct ones; `mask_token_ids` is the only difference between them at inference.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pard_jax.model import KVCache

PARALLEL_METHODS = ("pard", "parallelspec")


class DraftConfigError(ValueError):
  """The drafter cannot serve the requested method."""


def mask_token_ids(method: str, num_draft_tokens: int, drafter_hf_config: dict[str, Any],
                   override: tuple[int, ...] = ()) -> tuple[int, ...]:
  """The K-1 input ids that follow the real tokens in a parallel drafter's input.

  PARD checkpoints name their shared mask in `config.json` (`"pard_token"`, with
  `"spd_type": "pard"`); ParallelSpec drafters list distinct ids in `"parallelspec_tokens"`.
  `override` (one id for PARD, K-1 for ParallelSpec) replaces what the config says.
  """
  k = num_draft_tokens
  if method == "pard":
    if override:
      if len(set(override)) != 1:
        raise DraftConfigError(f"pard uses one shared mask token, got {override}")
      mask = override[0]
    elif drafter_hf_config.get("pard_token") is not None:
      if drafter_hf_config.get("spd_type", "pard") != "pard":
        raise DraftConfigError(
            f"drafter spd_type is {drafter_hf_config.get('spd_type')!r}, not 'pard'")
      mask = int(drafter_hf_config["pard_token"])
    else:
      raise DraftConfigError("the drafter is not a PARD checkpoint: its config.json has no "
                             "'pard_token'; pass the mask id with --config.mask_token_ids")
    return (mask,) * (k - 1)
  if method == "parallelspec":
    ids = tuple(override) or tuple(drafter_hf_config.get("parallelspec_tokens") or ())
    if len(ids) < k - 1 or len(set(ids[:k - 1])) != k - 1:
      raise DraftConfigError(f"parallelspec needs {k - 1} distinct mask token ids "
                             f"('parallelspec_tokens' in the drafter config), got {ids}")
    return ids[:k - 1]
  return ()


def take_window(tokens_BxT, starts_B, width: int):
  """`tokens[b, starts[b] : starts[b] + width]`, indices past the end clipped."""
  idx_BxW = starts_B[:, None] + jnp.arange(width)
  return jnp.take_along_axis(tokens_BxT, idx_BxW, axis=1, mode="clip"), idx_BxW


def _logits_at(model, hidden_BxSxD, idx_BxN):
  """Logits only where they are needed: `[batch, N, vocab]`."""
  picked = jnp.take_along_axis(hidden_BxSxD, idx_BxN[..., None], axis=1)
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
