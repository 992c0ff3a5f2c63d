"""Low-rank adapters for turning a small AR model into a parallel drafter on a small machine.

`add_adapters` wraps every dense layer of the decoder in Flax NNX's `LoRALinear` (the base
kernel kept, a rank-r update `x @ lora_a @ lora_b` beside it, `lora_b` starting at zero) and
gives the mask tokens learned embedding rows (`AdaptedEmbed`), all of type `nnx.LoRAParam`:
training updates only those (`train.trainable="lora"`), so the optimizer holds moments for a few
million values rather than the model's. The base weights keep their parameter paths, so the
checkpoint readers and the partition rules see the same tensors.

Decoding never runs the adapters: `merge_adapters` folds them into plain dense kernels and
embedding rows (no per-token cost), and a delta stores the factors (`factors`) for the loader
to fold in (`checkpoints.delta`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pard_jax.model import Transformer

# The dense layers of a decoder layer that get an adapter: every matrix the layer multiplies by.
DENSE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class AdaptedEmbed(nnx.Module):
  """An embedding table whose rows `row_ids` are learned (`rows`, an `nnx.LoRAParam`) while the
  rest stays the base's (`embedding`, the same path as `nnx.Embed`'s). Serves the tied head too:
  `attend` and a restricted head's row lookup read the patched table."""

  def __init__(self, embed: nnx.Embed, row_ids: Sequence[int], rows_RxD: jax.Array):
    self.embedding = embed.embedding
    self.row_ids = tuple(int(i) for i in row_ids)
    self.rows = nnx.LoRAParam(jnp.asarray(rows_RxD, embed.embedding[...].dtype))
    self.dtype = embed.dtype

  def table(self) -> jax.Array:
    """The patched table (a copy: export only; the forward patches what it reads)."""
    return self.embedding[...].at[jnp.asarray(self.row_ids)].set(self.rows[...])

  def __call__(self, ids):
    out = jnp.take(self.embedding[...], ids, axis=0)
    for j, row_id in enumerate(self.row_ids):
      out = jnp.where((ids == row_id)[..., None], self.rows[...][j], out)
    return out.astype(self.dtype or self.embedding.dtype)

  def attend(self, query):
    logits = query @ self.embedding[...].astype(query.dtype).T
    return logits.at[..., jnp.asarray(self.row_ids)].set(
        query @ self.rows[...].astype(query.dtype).T)


def _dense_slots(layer) -> Iterator[tuple[nnx.Module, str]]:
  for dotted in DENSE:
    parent_name, name = dotted.split(".")
    yield getattr(layer, parent_name), name


def add_adapters(model: Transformer, rank: int, mask_ids: Sequence[int] = (),
                 seed: int = 0) -> Transformer:
  """`model` (changed in place) with a rank-`rank` LoRA beside each decoder dense layer and
  learned embedding rows for `mask_ids`, starting at the mean of the table's rows (a mask row
  of a padded vocabulary is untrained: Qwen2.5's 151665 starts at ~25 nats of loss). The model
  computes exactly what it did until trained: `lora_b` starts at zero."""
  rngs = nnx.Rngs(seed)
  for layer in model.layers:
    for parent, name in _dense_slots(layer):
      old = getattr(parent, name)
      new = nnx.LoRALinear(old.in_features, old.out_features, lora_rank=rank,
                           use_bias=old.bias is not None, dtype=old.dtype,
                           param_dtype=old.param_dtype, lora_dtype=old.dtype,
                           lora_param_dtype=old.param_dtype,
                           kernel_init=nnx.initializers.zeros, rngs=rngs)
      new.kernel = old.kernel
      if old.bias is not None:
        new.bias = old.bias
      setattr(parent, name, new)
  if mask_ids:
    table = model.embed_tokens.embedding[...]
    mean_D = jnp.mean(table.astype(jnp.float32), axis=0)
    model.embed_tokens = AdaptedEmbed(model.embed_tokens, mask_ids,
                                      jnp.tile(mean_D, (len(mask_ids), 1)))
  return model


def has_adapters(model: Transformer) -> bool:
  return any(isinstance(getattr(parent, name), nnx.LoRALinear)
             for layer in model.layers for parent, name in _dense_slots(layer))


def factors(model: Transformer) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Each adapter as HF-layout factors, by the HF name of the weight it changes:
  `(down [r, in], up [out, r])`, the weight's change being `up @ down` (HF stores `[out, in]`)."""
  out = {}
  for i, layer in enumerate(model.layers):
    for dotted, (parent, name) in zip(DENSE, _dense_slots(layer)):
      dense = getattr(parent, name)
      if isinstance(dense, nnx.LoRALinear):
        a_IxR = np.asarray(jax.device_get(dense.lora.lora_a[...]), np.float32)
        b_RxO = np.asarray(jax.device_get(dense.lora.lora_b[...]), np.float32)
        out[f"model.layers.{i}.{dotted}.weight"] = (a_IxR.T, b_RxO.T)
  return out


def merge_adapters(model: Transformer, fold_dense: bool = True) -> Transformer:
  """`model` (changed in place) as a plain `Transformer`: each adapter folded into its kernel
  (`kernel + lora_a @ lora_b`, in float32) and learned rows into the embedding table. With
  `fold_dense=False` the kernels stay the base's (what a delta stores beside `factors`)."""
  for layer in model.layers:
    for parent, name in _dense_slots(layer):
      dense = getattr(parent, name)
      if not isinstance(dense, nnx.LoRALinear):
        continue
      plain = nnx.Linear(dense.in_features, dense.out_features, use_bias=dense.bias is not None,
                         dtype=dense.dtype, param_dtype=dense.param_dtype,
                         kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
      kernel = dense.kernel[...]
      if fold_dense:
        update = (dense.lora.lora_a[...].astype(jnp.float32)
                  @ dense.lora.lora_b[...].astype(jnp.float32))
        kernel = (kernel.astype(jnp.float32) + update).astype(kernel.dtype)
      plain.kernel[...] = kernel
      if dense.bias is not None:
        plain.bias = dense.bias
      setattr(parent, name, plain)
  if isinstance(model.embed_tokens, AdaptedEmbed):
    adapted = model.embed_tokens
    config = model.config
    embed = nnx.Embed(config.vocab_size, config.hidden_size, dtype=adapted.dtype,
                      param_dtype=adapted.embedding[...].dtype,
                      embedding_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
    embed.embedding[...] = adapted.table()
    model.embed_tokens = embed
  return model

