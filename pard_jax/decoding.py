"""The speculative decoding engine: one jitted `lax.while_loop` for ar, sd, pard, parallelspec.

Each iteration drafts K tokens, verifies them with one target forward over K+1 positions,
and commits the accepted prefix plus one target token. State has fixed shapes throughout:

- `tokens_BxT`: prompt then generated tokens, row b valid on `[0, lengths_B[b])`;
- the target cache is valid on `[0, lengths - 1)`: the last committed token is "pending"
  and is fed at the start of the next verification;
- the drafter cache is valid on `[0, draft_lengths)` (see `drafting.py`);
- for a feature drafter, `features_BxTxC` holds the target's features by position, valid where
  its cache is: prefill and each verification write them, at no extra forward.

Rejected tokens are rolled back only by these lengths: the model writes each token's key and
value at the slot of its position, so the next forward overwrites stale slots. `ar` is the same
loop with K = 0 (verify the pending token, commit one sample), so every method shares one body.

Over a device mesh (`SpeculativeDecoder(..., mesh=)`) the same loop is one SPMD program: weights
split by `sharding.decode_rules` (Megatron-style over `tensor`), caches over key/value heads on
`tensor`, every row-indexed array over the batch axes (`data`, `fsdp`). Each iteration ends in a
sharding constraint on the whole state, so the carry keeps its layout and the weights are never
gathered inside the loop.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pard_jax import drafter_kinds as kinds
from pard_jax import drafting, rules, sampling, sharding
from pard_jax.decode_config import DecodeConfig, DecodeResult, prompt_ids
from pard_jax.errors import DecodeError
from pard_jax.model import KVCache, Transformer, init_cache

__all__ = ["DecodeConfig", "DecodeError", "DecodeResult", "SpeculativeDecoder", "decode_loop"]


@flax.struct.dataclass
class LoopState:
  """The `while_loop` carry: fixed shapes, one row per prompt."""
  tokens_BxT: jax.Array  # prompt then committed tokens; row b valid on [0, lengths_B[b])
  lengths_B: jax.Array  # committed tokens per row (the last one is pending for the target)
  draft_lengths_B: jax.Array  # the drafter's cache is valid on [0, draft_lengths_B)
  target_cache: KVCache  # valid on [0, lengths_B - 1)
  drafter_cache: KVCache | None  # None for `ar`
  features_BxTxC: jax.Array | None  # the target's features by position (feature drafters)
  rng: jax.Array
  done_B: jax.Array  # the row hit a stop token or max_new_tokens
  num_iterations_B: jax.Array  # iterations in which the row was still active
  accept_lengths_BxN: jax.Array  # tokens committed per iteration
  accepted_drafts_BxN: jax.Array  # drafts the verification accepted per iteration (uncut)
  verified_drafts_BxN: jax.Array  # drafts the target's forward verified per iteration


def _state_shardings(state: LoopState, mesh: Mesh) -> LoopState:
  """Where each part of the loop state lives on `mesh` (a pytree like `state`): caches by
  `sharding.cache_spec`, the key replicated, everything else split by rows where they divide."""
  def one(path, leaf):
    field = path[0].name
    if field == "rng":
      spec = P()
    elif field in ("target_cache", "drafter_cache"):
      spec = sharding.cache_spec(leaf.shape[2], mesh)
    else:
      spec = P(sharding.BATCH_AXES)
    return NamedSharding(mesh, sharding.fit(spec, leaf.shape, mesh))
  return jax.tree_util.tree_map_with_path(one, state)


def _constrain(state: LoopState, mesh: Mesh | None) -> LoopState:
  if mesh is None:
    return state
  return jax.lax.with_sharding_constraint(state, _state_shardings(state, mesh))


def _probs_fn(cfg: DecodeConfig):
  return functools.partial(sampling.probs_from_logits, temperature=cfg.temperature,
                           top_k=cfg.top_k, top_p=cfg.top_p)


def _draft(cfg: DecodeConfig, drafter, target_vocab: int, s: LoopState,
           rng) -> drafting.Drafts:
  """Step 1: K drafts and their distributions q (`ar`: none, a zero-width draft)."""
  batch = s.lengths_B.shape[0]
  if not cfg.num_drafts:
    return drafting.Drafts(
        tokens_BxK=jnp.zeros((batch, 0), jnp.int32),
        q_BxKxV=jnp.zeros((batch, 0, target_vocab), jnp.float32),
        confidence_BxK=jnp.zeros((batch, 0), jnp.float32), cache=s.drafter_cache, fed=0)
  sample_fn = functools.partial(sampling.sample, greedy=cfg.greedy)
  probs_fn, tokens_BxT = _probs_fn(cfg), s.tokens_BxT
  if cfg.shared_vocab_size:
    # q lives on the target's ids: drop the drafter's padding rows, give the target's zero mass.
    shared = cfg.shared_vocab_size
    fit = lambda logits: jnp.pad(logits[..., :shared],
                                 [(0, 0)] * (logits.ndim - 1) + [(0, target_vocab - shared)],
                                 constant_values=jnp.finfo(jnp.float32).min)
    target_probs_fn = probs_fn
    probs_fn = lambda logits: target_probs_fn(fit(logits))
    # The target may commit ids past the drafter's table; they only cost acceptance.
    tokens_BxT = jnp.minimum(tokens_BxT, drafter.config.vocab_size - 1)
  return drafting.draft(cfg.drafter_kind, drafting.DraftInput(
      drafter, s.drafter_cache, tokens_BxT, s.lengths_B, s.draft_lengths_B, probs_fn, sample_fn,
      rng, s.features_BxTxC), cfg.num_draft_tokens)


class Verified(NamedTuple):
  """What the target's verification of one iteration's drafts returns."""
  num_accepted_B: jax.Array  # leading drafts accepted
  committed_BxK1: jax.Array  # the accepted drafts, then the target's own token
  num_verified: jax.Array | None  # drafts the forward covered (None: all K)
  target_cache: KVCache
  features_BxK1xC: jax.Array | None  # the target's features at the verified positions
  positions_BxK1: jax.Array


def _verify(cfg: DecodeConfig, target, s: LoopState, drafts: drafting.Drafts, rng) -> Verified:
  """Step 2: one target forward over the pending token and the drafts, then the lossless
  acceptance rule (`sampling.verify`)."""
  k = cfg.num_drafts
  pending_Bx1, _ = drafting.take_window(s.tokens_BxT, s.lengths_B - 1, 1)
  verify_BxK1 = jnp.concatenate([pending_Bx1, drafts.tokens_BxK], axis=1)
  positions_BxK1 = (s.lengths_B - 1)[:, None] + jnp.arange(k + 1)[None]

  def forward(cache, width):
    """Logits and features over the first `width` verify positions, padded to K + 1:
    positions past the width are never read (verify() treats their drafts as rejected)."""
    hidden, cache, features = target.backbone_features(
        verify_BxK1[:, :width], positions_BxK1[:, :width], cache,
        feature_layers=cfg.drafter_kind.feature_layers)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, k + 1 - width), (0, 0)), mode="edge")
    return pad(target.logits(hidden)), cache, None if features is None else pad(features)

  num_verified = None
  if cfg.verify_threshold and k:
    confident_BxK = jnp.cumprod(drafts.confidence_BxK, axis=1) >= cfg.verify_threshold
    # One forward serves the batch: its width is the widest any active row asks for.
    num_verified = jnp.max(jnp.where(~s.done_B, jnp.sum(confident_BxK, axis=1), 0))
    logits_BxK1xV, cache, features_BxK1xC = jax.lax.switch(
        num_verified, [functools.partial(forward, width=width) for width in range(1, k + 2)],
        s.target_cache)
  else:
    logits_BxK1xV, cache, features_BxK1xC = forward(s.target_cache, k + 1)
  num_accepted_B, committed_BxK1 = sampling.verify(
      rng, drafts.tokens_BxK, drafts.q_BxKxV, _probs_fn(cfg)(logits_BxK1xV), cfg.greedy,
      num_verified)
  return Verified(num_accepted_B, committed_BxK1, num_verified, cache, features_BxK1xC,
                  positions_BxK1)


def _commit_count(cfg: DecodeConfig, committed_BxK1, num_accepted_B, lengths_B,
                  prompt_lengths_B):
  """Tokens to commit per row (accepted + 1, cut at a stop token and at max_new_tokens)."""
  count_B = num_accepted_B + 1
  in_range_BxK1 = jnp.arange(committed_BxK1.shape[1])[None] < count_B[:, None]
  stop_ids = jnp.asarray(cfg.stop_token_ids or (-1,), jnp.int32)
  is_stop_BxK1 = jnp.isin(committed_BxK1, stop_ids) & in_range_BxK1
  hit_stop_B = jnp.any(is_stop_BxK1, axis=1)
  count_B = jnp.where(hit_stop_B, jnp.argmax(is_stop_BxK1, axis=1) + 1, count_B)
  budget_B = prompt_lengths_B + cfg.max_new_tokens - lengths_B
  return jnp.minimum(count_B, budget_B), hit_stop_B


def _record(stats_BxN, active_B, iteration_B, values_B):
  """`stats_BxN[b, iteration_B[b]] = values_B[b]` on the active rows."""
  slot_B = jnp.where(active_B, iteration_B, stats_BxN.shape[1])
  return stats_BxN.at[jnp.arange(stats_BxN.shape[0]), slot_B].set(values_B, mode="drop")


def _commit(cfg: DecodeConfig, s: LoopState, drafts: drafting.Drafts, v: Verified,
            prompt_lengths_B, rng) -> LoopState:
  """Step 3: append the committed tokens (and their features), advance lengths, record the
  iteration's statistics; finished rows keep their state."""
  active_B = ~s.done_B
  count_B, hit_stop_B = _commit_count(cfg, v.committed_BxK1, v.num_accepted_B, s.lengths_B,
                                      prompt_lengths_B)
  count_B = jnp.where(active_B, count_B, 0)
  rows_Bx1 = jnp.arange(count_B.shape[0])[:, None]
  # Slots past the committed count receive leftovers that later commits overwrite.
  write_BxK1 = jnp.where(active_B[:, None], s.lengths_B[:, None] + jnp.arange(
      v.committed_BxK1.shape[1])[None], s.tokens_BxT.shape[1])
  tokens_BxT = s.tokens_BxT.at[rows_Bx1, write_BxK1].set(v.committed_BxK1, mode="drop")
  features_BxTxC = s.features_BxTxC
  if features_BxTxC is not None:  # the features of every verified position, at its position
    at_BxK1 = jnp.where(active_B[:, None], v.positions_BxK1, features_BxTxC.shape[1])
    features_BxTxC = features_BxTxC.at[rows_Bx1, at_BxK1].set(v.features_BxK1xC, mode="drop")
  lengths_B = s.lengths_B + count_B
  done_B = s.done_B | (active_B & hit_stop_B) | (lengths_B - prompt_lengths_B
                                                  >= cfg.max_new_tokens)
  verified = cfg.num_drafts if v.num_verified is None else v.num_verified
  record = functools.partial(_record, active_B=active_B, iteration_B=s.num_iterations_B)
  return LoopState(
      tokens_BxT=tokens_BxT, lengths_B=lengths_B,
      draft_lengths_B=jnp.where(active_B, s.lengths_B + jnp.minimum(v.num_accepted_B,
                                                                     drafts.fed),
                                s.draft_lengths_B),
      target_cache=v.target_cache, drafter_cache=drafts.cache, features_BxTxC=features_BxTxC,
      rng=rng, done_B=done_B, num_iterations_B=s.num_iterations_B + active_B,
      accept_lengths_BxN=record(s.accept_lengths_BxN, values_B=count_B),
      accepted_drafts_BxN=record(s.accepted_drafts_BxN, values_B=v.num_accepted_B),
      verified_drafts_BxN=record(s.verified_drafts_BxN,
                                 values_B=jnp.broadcast_to(verified, count_B.shape)))


def _iteration(cfg: DecodeConfig, target, drafter, prompt_lengths_B, mesh: Mesh | None,
               s: LoopState) -> LoopState:
  """One iteration: draft -> verify -> commit."""
  rng, draft_rng, verify_rng = jax.random.split(s.rng, 3)
  drafts = _draft(cfg, drafter, target.config.vocab_size, s, draft_rng)
  verified = _verify(cfg, target, s, drafts, verify_rng)
  return _constrain(_commit(cfg, s, drafts, verified, prompt_lengths_B, rng), mesh)


def _prefill(model, tokens_BxP, cache, feature_layers=(), features_BxTxC=None):
  """Writes the prompt's keys and values; no logits are needed (the last token is pending).
  Returns the cache and, with `feature_layers`, the prompt's features `[batch, P, C]`."""
  positions_BxP = jnp.broadcast_to(jnp.arange(tokens_BxP.shape[1]), tokens_BxP.shape)
  extra = drafting.feature_input(model, features_BxTxC, positions_BxP,
                                 jnp.ones_like(tokens_BxP, bool))
  _, cache, features = model.backbone_features(tokens_BxP, positions_BxP, cache,
                                               feature_layers=feature_layers, extra_BxSxD=extra)
  return cache, features


def decode_loop(cfg: DecodeConfig, target_def, drafter_def, prompt_len: int, mesh: Mesh | None,
                target_params, drafter_params, tokens_BxT, prompt_lengths_B, seed) -> LoopState:
  """Prefill and generate until every row is done (`SpeculativeDecoder.lower` jits it with
  the settings before `target_params` bound)."""
  target = nnx.merge(target_def, target_params)
  drafter = nnx.merge(drafter_def, drafter_params) if drafter_def is not None else None
  batch, max_len = tokens_BxT.shape
  layers = cfg.drafter_kind.feature_layers
  target_cache, prompt_features_BxPxC = _prefill(
      target, tokens_BxT[:, :prompt_len], init_cache(target.config, batch, max_len), layers)
  features_BxTxC = None
  if layers:
    features_BxTxC = jnp.pad(prompt_features_BxPxC, ((0, 0), (0, max_len - prompt_len), (0, 0)))
  drafter_cache = None
  if drafter is not None:
    drafter_cache, _ = _prefill(drafter, tokens_BxT[:, :prompt_len],
                                init_cache(drafter.config, batch, max_len),
                                features_BxTxC=features_BxTxC)
  state = LoopState(
      tokens_BxT=tokens_BxT, lengths_B=prompt_lengths_B, draft_lengths_B=prompt_lengths_B - 1,
      target_cache=target_cache, drafter_cache=drafter_cache, features_BxTxC=features_BxTxC,
      rng=jax.random.key(seed),
      done_B=jnp.zeros((batch,), bool), num_iterations_B=jnp.zeros((batch,), jnp.int32),
      accept_lengths_BxN=jnp.zeros((batch, cfg.max_new_tokens), jnp.int32),
      accepted_drafts_BxN=jnp.zeros((batch, cfg.max_new_tokens), jnp.int32),
      verified_drafts_BxN=jnp.zeros((batch, cfg.max_new_tokens), jnp.int32))
  body = functools.partial(_iteration, cfg, target, drafter, prompt_lengths_B, mesh)
  return jax.lax.while_loop(lambda s: ~jnp.all(s.done_B), body, _constrain(state, mesh))


class SpeculativeDecoder:
  """Compiles and runs the decoding loop for one (target, drafter, config) triple.

  Models are split once; each (batch, prompt_len) shape compiles once and is cached. With
  `mesh` (`sharding.make_mesh`), the models are placed on it by `sharding.decode_rules` (a no-op
  for ones `checkpoints.load_model` already read into those shardings) and the loop runs over it.
  """

  def __init__(self, target: Transformer, drafter: Transformer | None, cfg: DecodeConfig,
               mesh: Mesh | None = None):
    if cfg.drafter_kind.uses_drafter:
      if drafter is None:
        raise DecodeError(f"method {cfg.method!r} needs a drafter")
      target_vocab, drafter_vocab = target.config.vocab_size, drafter.config.vocab_size
      if not cfg.shared_vocab_size and drafter_vocab != target_vocab:
        raise DecodeError(
            f"target and drafter vocabularies differ: target has {target_vocab} tokens, "
            f"drafter {drafter_vocab}; a drafter must share the target's tokenizer (when only "
            "the embedding padding differs, set shared_vocab_size to the tokenizer's size)")
      if cfg.shared_vocab_size > min(target_vocab, drafter_vocab):
        raise DecodeError(f"shared_vocab_size {cfg.shared_vocab_size} exceeds a model's "
                          f"vocabulary (target {target_vocab}, drafter {drafter_vocab})")
      problem = rules.ids_in_vocabulary(cfg.drafter_kind.mask_ids(cfg.num_draft_tokens),
                                        drafter_vocab, "the drafter's")
      if problem:
        raise DecodeError(f"mask token id {problem}")
      error = kinds.feature_layout_error(cfg.drafter_kind, drafter.config, target.config)
      if error:
        raise DecodeError(error)
    else:
      drafter = None
    problem = rules.ids_in_vocabulary(cfg.stop_token_ids, target.config.vocab_size, "the")
    if problem:
      raise DecodeError(f"stop token id {problem}")
    self.cfg, self.mesh = cfg, mesh
    self.target_def, self.target_params = sharding.split_onto(target, mesh)
    self.drafter_def, self.drafter_params = (sharding.split_onto(drafter, mesh) if drafter is not None
                                             else (None, None))
    self.vocab_size = target.config.vocab_size
    self.max_positions = min(m.config.max_position_embeddings
                             for m in (target, drafter) if m is not None)
    self._compiled = {}

  def lower(self, batch: int, prompt_len: int) -> jax.stages.Lowered:
    """The loop for `batch` prompts padded to `prompt_len`, lowered (not yet compiled). Over a
    mesh its inputs carry their shardings and its outputs are placed as the carry is."""
    max_len = prompt_len + self.cfg.max_new_tokens
    loop = functools.partial(decode_loop, cfg=self.cfg, target_def=self.target_def,
                             drafter_def=self.drafter_def, prompt_len=prompt_len, mesh=self.mesh)
    args = dict(target_params=self.target_params, drafter_params=self.drafter_params,
                tokens_BxT=self._abstract((batch, max_len)),
                prompt_lengths_B=self._abstract((batch,)), seed=self._abstract(()))
    out_shardings = None
    if self.mesh is not None:
      out_shardings = _state_shardings(jax.eval_shape(loop, **args), self.mesh)
    jitted = jax.jit(loop, out_shardings=out_shardings, donate_argnames="tokens_BxT")
    return jitted.trace(**args).lower()

  def _abstract(self, shape) -> jax.ShapeDtypeStruct:
    """An int32 input of `shape`: rows split over the mesh's batch axes where they divide."""
    sharding_ = None
    if self.mesh is not None:
      spec = sharding.fit(P(sharding.BATCH_AXES) if shape else P(), shape, self.mesh)
      sharding_ = NamedSharding(self.mesh, spec)
    return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding_)

  def _executable(self, batch: int, prompt_len: int):
    key = (batch, prompt_len)
    if key not in self._compiled:
      self._compiled[key] = self.lower(batch, prompt_len).compile()
    return self._compiled[key]

  def _input(self, array: np.ndarray, like: jax.ShapeDtypeStruct) -> jax.Array:
    if like.sharding is None:
      return jnp.asarray(array)
    # Every process holds the whole input and hands each of its devices that device's slice.
    return jax.make_array_from_callback(array.shape, like.sharding, lambda index: array[index])

  def check_fits(self, prompt_len: int, cache_len: int | None = None) -> None:
    needed = prompt_len + self.cfg.max_new_tokens
    limit = min(cache_len or self.max_positions, self.max_positions)
    if needed > limit:
      raise DecodeError(
          f"prompt of {prompt_len} tokens + max_new_tokens={self.cfg.max_new_tokens} needs a "
          f"cache of {needed} positions, more than the {limit} available "
          f"(cache_len / max_position_embeddings); shorten the prompt or max_new_tokens")

  def generate(self, prompts: Sequence[Sequence[int]], seed: int = 0,
               prompt_len: int | None = None, cache_len: int | None = None) -> DecodeResult:
    """Generates for a batch of token-id prompts (ragged lengths allowed).

    `prompt_len` pads prompts to a fixed width so that many batches share one compilation.
    """
    prompts = prompt_ids(prompts, self.vocab_size)
    longest = max(len(p) for p in prompts)
    prompt_len = prompt_len or longest
    if longest > prompt_len:
      raise DecodeError(f"a prompt has {longest} tokens, more than prompt_len={prompt_len}")
    self.check_fits(prompt_len, cache_len)
    batch = len(prompts)
    tokens = np.zeros((batch, prompt_len + self.cfg.max_new_tokens), np.int32)
    for row, prompt in enumerate(prompts):
      tokens[row, :len(prompt)] = prompt
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    run = self._executable(batch, prompt_len)
    inputs = [self._input(np.asarray(value, np.int32), self._abstract(np.shape(value)))
              for value in (tokens, lengths, seed)]
    start = time.perf_counter()
    state = run(target_params=self.target_params, drafter_params=self.drafter_params,
                tokens_BxT=inputs[0], prompt_lengths_B=inputs[1], seed=inputs[2])
    state = jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    out_tokens, out_lengths, iterations, accepts, drafts, verified = sharding.fetch(
        (state.tokens_BxT, state.lengths_B, state.num_iterations_B, state.accept_lengths_BxN,
         state.accepted_drafts_BxN, state.verified_drafts_BxN))
    return DecodeResult(
        output_ids=[out_tokens[b, lengths[b]:out_lengths[b]].tolist() for b in range(batch)],
        accept_lengths=[accepts[b, :iterations[b]].tolist() for b in range(batch)],
        accepted_drafts=[drafts[b, :iterations[b]].tolist() for b in range(batch)],
        verified_drafts=[verified[b, :iterations[b]].tolist() for b in range(batch)],
        num_iterations=iterations.tolist(),
        num_drafted=(iterations * self.cfg.num_drafts).tolist(),
        seconds=seconds)
