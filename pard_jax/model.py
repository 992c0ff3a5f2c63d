"""Llama-family decoder (Llama 2/3.x, SmolLM2, Qwen2/2.5, Qwen3) as a Flax NNX module.

One forward serves prefill, K-token verification, mask-token drafting and training layouts:

  logits_BxSxV, cache = model(tokens_BxS, positions_BxS, cache, attn_mask_BxSxT)

The KV cache is an explicit pytree of preallocated per-layer buffers. Cache slot t holds the
key/value of the token at position t of that row, so a forward writes its tokens at the slots
named by their positions and a query at position p sees exactly slots 0..p. Rolling back
rejected tokens therefore needs no copy: the next forward simply overwrites their slots.
Callers must keep slots 0..p-1 valid before querying at position p (decoding keeps per-row
lengths for that); writes at positions >= the cache length are dropped.

Shape suffixes, one letter per dimension, with one meaning across the package:
  B batch                  S query tokens of a forward   T key / cache slots (token buffer)
  L packed training row    P prompt width                W a drafter's input window
  D hidden width           V vocabulary                  R restricted draft vocabulary
  K drafts per iteration (training: depths)              K1 the K + 1 verified positions
  M mask tokens of one parallel draft (K - 1)            N max_new_tokens (one per iteration)
  Q query heads            G key/value heads             E query heads per key/value head
  H head dim               F rotary frequencies (H / 2)  O, I out / in features of a weight
  C target features a feature drafter reads (feature layers x the target's D)
  A anchors: the row indices a held-out iteration starts from (`train.heldout`)
  1 a unit axis
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pard_jax.config import ModelConfig


class KVCache(NamedTuple):
  """Per-layer key and value buffers, each `[batch, max_len, kv_heads, head_dim]`."""
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]

  @property
  def max_len(self) -> int:
    return self.k[0].shape[1]


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch, max_len, config.num_kv_heads, config.head_dim)
  return KVCache(k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                 v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)))


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32 and scaled after casting back, as transformers does."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


def apply_rope(x_BxSxQxH, positions_BxS, inv_freq_F):
  """Rotary embedding in the half-split (`rotate_half`) layout of HF checkpoints."""
  angles_BxSxF = positions_BxS[..., None].astype(jnp.float32) * inv_freq_F
  cos = jnp.cos(angles_BxSxF)[:, :, None, :].astype(x_BxSxQxH.dtype)
  sin = jnp.sin(angles_BxSxF)[:, :, None, :].astype(x_BxSxQxH.dtype)
  x1, x2 = jnp.split(x_BxSxQxH, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _dense(in_dim, out_dim, config, rngs, use_bias=False):
  return nnx.Linear(in_dim, out_dim, use_bias=use_bias, dtype=jnp.dtype(config.dtype),
                    param_dtype=jnp.dtype(config.param_dtype),
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _write_cache(buf_BxTxGxH, new_BxSxGxH, positions_BxS):
  batch_idx = jnp.arange(buf_BxTxGxH.shape[0])[:, None]
  return buf_BxTxGxH.at[batch_idx, positions_BxS].set(
      new_BxSxGxH.astype(buf_BxTxGxH.dtype), mode="drop")


class Attention(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
    self.q_proj = _dense(d, h * hd, config, rngs, config.attention_bias)
    self.k_proj = _dense(d, kv * hd, config, rngs, config.attention_bias)
    self.v_proj = _dense(d, kv * hd, config, rngs, config.attention_bias)
    self.o_proj = _dense(h * hd, d, config, rngs)
    pdt = jnp.dtype(config.param_dtype)
    self.q_norm = RMSNorm(hd, config.rms_norm_eps, pdt) if config.qk_norm else None
    self.k_norm = RMSNorm(hd, config.rms_norm_eps, pdt) if config.qk_norm else None

  def __call__(self, x_BxSxD, positions_BxS, inv_freq_F, kv_cache, mask_BxSxT):
    b, s, _ = x_BxSxD.shape
    q = self.q_proj(x_BxSxD).reshape(b, s, self.num_heads, self.head_dim)
    k = self.k_proj(x_BxSxD).reshape(b, s, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x_BxSxD).reshape(b, s, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = apply_rope(q, positions_BxS, inv_freq_F)
    k = apply_rope(k, positions_BxS, inv_freq_F)
    if kv_cache is not None:
      k_cache, v_cache = kv_cache
      k_cache = _write_cache(k_cache, k, positions_BxS)
      v_cache = _write_cache(v_cache, v, positions_BxS)
      kv_cache = (k_cache, v_cache)
      k, v = k_cache.astype(q.dtype), v_cache.astype(q.dtype)
    groups = self.num_heads // self.num_kv_heads
    q_BxSxGxExH = q.reshape(b, s, self.num_kv_heads, groups, self.head_dim)
    scores = jnp.einsum("bsgeh,btgh->bgest", q_BxSxGxExH, k).astype(jnp.float32)
    scores = scores * (self.head_dim ** -0.5)
    scores = jnp.where(mask_BxSxT[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bgest,btgh->bsgeh", probs, v).reshape(b, s, self.num_heads * self.head_dim)
    return self.o_proj(out), kv_cache


class MLP(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.gate_proj = _dense(d, f, config, rngs)
    self.up_proj = _dense(d, f, config, rngs)
    self.down_proj = _dense(f, d, config, rngs)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    pdt = jnp.dtype(config.param_dtype)
    self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pdt)
    self.self_attn = Attention(config, rngs)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pdt)
    self.mlp = MLP(config, rngs)

  def __call__(self, x, positions, inv_freq, kv_cache, mask):
    attn_out, kv_cache = self.self_attn(self.input_layernorm(x), positions, inv_freq, kv_cache,
                                        mask)
    x = x + attn_out
    return x + self.mlp(self.post_attention_layernorm(x)), kv_cache


def feature_layer_ids(feature_layers, num_layers: int) -> tuple[int, ...]:
  """Layer indices (negative ones count from the end) as indices in [0, num_layers)."""
  return tuple(layer % num_layers for layer in feature_layers)


class FeatureInput(nnx.Module):
  """A feature drafter's extra input: the target's features, normalised per layer and projected
  to the drafter's width, added to the token embeddings (PARD-2, P-EAGLE). A position without a
  target feature (a mask token, the first token) gets a learned stand-in; a token the
  autoregressive peer drafted reads the drafter's own state (`Transformer.own_feature_embeddings`).

  The projection starts at zero, so a drafter cut from its target starts as the token-only
  drafter it was: a random projection would swamp its trained input.
  """

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c, pdt = config.feature_size, jnp.dtype(config.param_dtype)
    self.feature_norm = nnx.Param(jnp.ones((c,), pdt))
    self.feature_proj = nnx.Linear(c, config.hidden_size, use_bias=False,
                                   dtype=jnp.dtype(config.dtype), param_dtype=pdt,
                                   kernel_init=nnx.initializers.zeros, rngs=rngs)
    self.feature_stand_in = nnx.Param(jnp.zeros((c,), pdt))
    self.groups, self.eps = config.num_feature_layers, config.rms_norm_eps

  def __call__(self, features_BxSxC, has_feature_BxS):
    x = features_BxSxC.astype(jnp.float32)
    x = x.reshape(*x.shape[:-1], self.groups, -1)  # one RMS per target layer
    x = (x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)).reshape(
        features_BxSxC.shape) * self.feature_norm[...].astype(jnp.float32)
    x = jnp.where(has_feature_BxS[..., None], x, self.feature_stand_in[...].astype(jnp.float32))
    return self.feature_proj(x.astype(self.feature_proj.dtype))


class Transformer(nnx.Module):
  """Llama-family causal LM. Parameter names mirror the HF checkpoint names.

  With `config.feature_size`, also a feature drafter's input (`FeatureInput`, parameters
  `feature_*`): `backbone(..., extra_BxSxD=model.feature_embeddings(...))`.
  """

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    pdt, cdt = jnp.dtype(config.param_dtype), jnp.dtype(config.dtype)
    self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=cdt,
                                  param_dtype=pdt, embedding_init=nnx.initializers.normal(0.02),
                                  rngs=rngs)
    self.layers = nnx.List([DecoderLayer(config, rngs) for _ in range(config.num_layers)])
    self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pdt)
    self.lm_head = (None if config.tie_word_embeddings else
                    _dense(config.hidden_size, config.vocab_size, config, rngs))
    self.features = FeatureInput(config, rngs) if config.feature_size else None
    # Decoding on CPU may swap in the head's matrix prepacked (`packed_dense.pack`).
    self.packed_head = None

  def feature_embeddings(self, features_BxSxC, has_feature_BxS):
    """What a feature drafter adds to its token embeddings (`extra_BxSxD` of `backbone`)."""
    return self.features(features_BxSxC, has_feature_BxS)

  def own_feature_embeddings(self, residual_BxSxD):
    """What the autoregressive feature peer adds to a token it drafted itself (EAGLE): its own
    last residual stream at the previous position (`backbone_features(..., (-1,))`), in the
    place of every target layer it reads, since no target feature exists yet for that token."""
    groups = self.config.num_feature_layers
    return self.features(jnp.tile(residual_BxSxD, (1,) * (residual_BxSxD.ndim - 1) + (groups,)),
                         jnp.ones(residual_BxSxD.shape[:-1], bool))

  def backbone(self, tokens_BxS, positions_BxS, cache: KVCache | None = None,
               attn_mask_BxSxT=None, extra_BxSxD=None):
    """Final hidden states `[batch, seq, hidden]` and the updated cache.

    Query (b, i) sees key slot t iff position(t) <= positions_BxS[b, i], AND-ed with
    `attn_mask_BxSxT` when given. Without a cache the keys are the inputs themselves (T = S),
    so training layouts pass their own mask. `extra_BxSxD` is added to the token embeddings.
    """
    hidden, cache, _ = self.backbone_features(tokens_BxS, positions_BxS, cache,
                                              attn_mask_BxSxT, extra_BxSxD=extra_BxSxD)
    return hidden, cache

  def backbone_features(self, tokens_BxS, positions_BxS, cache: KVCache | None = None,
                        attn_mask_BxSxT=None, feature_layers: tuple[int, ...] = (),
                        extra_BxSxD=None):
    """`backbone`, plus the features a feature drafter reads: the residual stream after each
    of `feature_layers`, concatenated in that order (`[batch, seq, C]`; None without layers).
    The same forward: no extra pass over the weights."""
    x = self.embed_tokens(tokens_BxS)
    if extra_BxSxD is not None:
      x = x + extra_BxSxD.astype(x.dtype)
    wanted = feature_layer_ids(feature_layers, len(self.layers))
    taken = {}
    key_pos = positions_BxS if cache is None else jnp.arange(cache.max_len)[None]
    mask = key_pos[:, None, :] <= positions_BxS[:, :, None]
    if attn_mask_BxSxT is not None:
      mask = mask & attn_mask_BxSxT
    inv_freq = jnp.asarray(self.config.rope_inv_freq(), jnp.float32)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else (cache.k[i], cache.v[i])
      x, layer_cache = layer(x, positions_BxS, inv_freq, layer_cache, mask)
      if i in wanted:
        taken[i] = x
      if cache is not None:
        new_k.append(layer_cache[0])
        new_v.append(layer_cache[1])
    new_cache = None if cache is None else KVCache(tuple(new_k), tuple(new_v))
    features = jnp.concatenate([taken[i] for i in wanted], axis=-1) if wanted else None
    return self.norm(x), new_cache, features

  def head_logits(self, hidden_BxSxD):
    """Float32 logits over the head's vocabulary: `[batch, seq, R]`, R = len(draft_vocab) or V.

    A restricted head multiplies by only its R rows of the (tied or untied) output matrix:
    for a small drafter the V-row head is most of the cost of a forward.
    """
    if self.packed_head is not None:
      return self.packed_head(hidden_BxSxD).astype(jnp.float32)
    ids = self.config.draft_vocab
    if ids is None:
      if self.lm_head is None:
        return self.embed_tokens.attend(hidden_BxSxD).astype(jnp.float32)
      return self.lm_head(hidden_BxSxD).astype(jnp.float32)
    ids_R = jnp.asarray(ids, jnp.int32)
    if self.lm_head is None:
      table_RxD = self.embed_tokens(ids_R)  # through the module: adapted rows count
    else:
      table_RxD = self.lm_head.kernel[...][:, ids_R].T
    dtype = jnp.dtype(self.config.dtype)
    return jnp.einsum("bsd,rd->bsr", hidden_BxSxD.astype(dtype),
                      table_RxD.astype(dtype)).astype(jnp.float32)

  def logits(self, hidden_BxSxD):
    """Float32 logits `[batch, seq, vocab]`; -inf outside a restricted head's vocabulary."""
    logits_BxSxR = self.head_logits(hidden_BxSxD)
    if self.config.draft_vocab is None:
      return logits_BxSxR
    full_BxSxV = jnp.full(logits_BxSxR.shape[:-1] + (self.config.vocab_size,), -jnp.inf,
                          jnp.float32)
    return full_BxSxV.at[..., jnp.asarray(self.config.draft_vocab)].set(logits_BxSxR)

  def __call__(self, tokens_BxS, positions_BxS, cache: KVCache | None = None,
               attn_mask_BxSxT=None):
    hidden, cache = self.backbone(tokens_BxS, positions_BxS, cache, attn_mask_BxSxT)
    return self.logits(hidden), cache


def grow_vocab(model: Transformer, vocab_size: int) -> Transformer:
  """`model` with embedding (and untied head) rows appended up to `vocab_size`, e.g. for new
  mask tokens. New rows start at the mean of the existing ones; existing rows are unchanged."""
  _, state = nnx.split(model)
  grown = nnx.eval_shape(lambda: Transformer(model.config.replace(vocab_size=vocab_size),
                                             rngs=nnx.Rngs(0)))
  new_graphdef, new_abstract = nnx.split(grown)

  def grow(old, new):
    if old.shape == new.shape:
      return old
    axis = next(i for i, (a, b) in enumerate(zip(old.shape, new.shape)) if a != b)
    mean = jnp.mean(old, axis=axis, keepdims=True)
    extra = jnp.repeat(mean, new.shape[axis] - old.shape[axis], axis=axis)
    return jnp.concatenate([old, extra.astype(old.dtype)], axis=axis)
  return nnx.merge(new_graphdef, jax.tree.map(grow, state, new_abstract))


def make_identity_layers(model: Transformer, layers) -> Transformer:
  """`model` with decoder `layers` passing their input through: their attention and MLP
  output projections zeroed, so a body grown with them computes what it did without them
  (and the zeroed projections still get gradients, so the layers learn)."""
  for i in layers:
    layer = model.layers[i]
    for dense in (layer.self_attn.o_proj, layer.mlp.down_proj):
      dense.kernel[...] = jnp.zeros_like(dense.kernel[...])
  return model


def add_feature_input(model: Transformer, num_feature_layers: int,
                      feature_size: int) -> Transformer:
  """`model` as a feature drafter reading `num_feature_layers` target layers (`feature_size`
  values per token): its weights unchanged, the new input starting at zero (`FeatureInput`),
  so it drafts exactly as before until trained."""
  _, state = nnx.split(model)
  config = model.config.replace(feature_size=feature_size,
                                num_feature_layers=num_feature_layers)
  graphdef, new_state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
  flat = dict(nnx.to_flat_state(new_state))
  flat.update(nnx.to_flat_state(state))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def create_model(config: ModelConfig, seed: int = 0) -> Transformer:
  """A randomly initialised model (tests, from-scratch training)."""
  return Transformer(config, rngs=nnx.Rngs(seed))


def abstract_model(config: ModelConfig) -> Transformer:
  """The model's structure with `jax.ShapeDtypeStruct` leaves, for loading without init."""
  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
