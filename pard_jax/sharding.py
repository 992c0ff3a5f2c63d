"""Device mesh and partition rules for Llama-family parameters.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters and optimizer state sharded) and `tensor` (Megatron-style model parallelism).
Rules map parameter paths to `PartitionSpec`s; an axis that does not divide a dimension is
dropped for that parameter (it is replicated instead), so tiny test models shard on any mesh.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pard_jax.errors import DecodeError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex over the '/'-joined parameter path, spec). Kernels are [in, out].
LLAMA_RULES: tuple[tuple[str, P], ...] = (
    (r"embed_tokens/embedding$", P("tensor", "fsdp")),
    (r"self_attn/(q|k|v)_proj/kernel$", P("fsdp", "tensor")),
    (r"self_attn/(q|k|v)_proj/bias$", P("tensor")),
    (r"self_attn/o_proj/kernel$", P("tensor", "fsdp")),
    (r"mlp/(gate|up)_proj/kernel$", P("fsdp", "tensor")),
    (r"mlp/down_proj/kernel$", P("tensor", "fsdp")),
    (r"lm_head/kernel$", P("fsdp", "tensor")),
    (r"(norm|layernorm|q_norm|k_norm)/weight$", P()),
    # A feature drafter's input (`model.FeatureInput`): [C, D] projection, C-vectors.
    (r"features/feature_proj/kernel$", P("fsdp", "tensor")),
    (r"features/feature_(norm|stand_in)$", P()),
    # Low-rank adapters and learned mask rows (`pard_jax.adapters`): small, replicated.
    (r"lora/lora_(a|b)$", P()),
    (r"embed_tokens/rows$", P()),
)


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
  """A `(data, fsdp, tensor)` mesh; `-1` in `shape` takes the remaining devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if devices.size % known:
      raise ValueError(f"{devices.size} devices do not divide into mesh {shape}")
    shape[shape.index(-1)] = devices.size // known
  if any(s <= 0 for s in shape) or int(np.prod(shape)) != devices.size:
    raise ValueError(f"mesh {shape} needs {int(np.prod(shape))} devices, have {devices.size}")
  return Mesh(devices.reshape(shape), MESH_AXES)


def path_str(path) -> str:
  """'/'-joined names of a pytree key path (NNX state or HF-style tuple)."""
  parts = []
  for key in path:
    key = getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
    if key != "value":
      parts.append(str(key))
  return "/".join(parts)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh,
             rules: Sequence[tuple[str, P]] = LLAMA_RULES) -> P:
  """The rule's spec for `path`, with axes that do not divide their dimension dropped."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      break
  else:
    raise ValueError(f"no partition rule matches parameter {path!r}")
  return fit(spec, shape, mesh)


def fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """`spec` with each axis that does not divide its dimension dropped (replicated there)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
    fitted.append(axes if names and dim % size == 0 else None)
  return P(*fitted)


def state_shardings(state, mesh: Mesh, rules: Sequence[tuple[str, P]] = LLAMA_RULES):
  """A pytree of `NamedSharding`s matching `state`: NNX parameters, or a train state whose
  optimizer moments mirror them (rules match path suffixes); scalars are replicated."""
  def one(path, leaf):
    if leaf.ndim == 0:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, spec_for(path_str(path), leaf.shape, mesh, rules))
  return jax.tree_util.tree_map_with_path(one, state)


def decode_rules(num_kv_heads: int, mesh: Mesh) -> tuple[tuple[str, P], ...]:
  """`LLAMA_RULES` for decoding one model: weights are not split over `fsdp` (gathering them at
  every forward would cost more than their memory saves; `fsdp` carries batch rows, as `data`
  does), and attention is split over `tensor` only where the key/value heads divide, so every
  device attends with whole heads and holds their slice of the cache (else it is replicated)."""
  heads_split = num_kv_heads % mesh.shape["tensor"] == 0
  rules = []
  for pattern, spec in LLAMA_RULES:
    if pattern.startswith(r"self_attn/") and not heads_split:
      spec = P()
    rules.append((pattern, P(*(None if axes == "fsdp" else axes for axes in spec))))
  return tuple(rules)


def cache_spec(num_kv_heads: int, mesh: Mesh) -> P:
  """A `[batch, max_len, kv_heads, head_dim]` cache buffer: rows over the batch axes, heads
  over `tensor` where they divide (`decode_rules`)."""
  heads = "tensor" if num_kv_heads % mesh.shape["tensor"] == 0 else None
  return P(BATCH_AXES, None, heads, None)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def split_onto(model, mesh: Mesh | None):
  """`nnx.split(model)` with its parameters placed on `mesh` by `decode_rules` (a no-op for
  parameters `checkpoints.load_model` already read into those shardings)."""
  graphdef, params = nnx.split(model)
  if mesh is None:
    return graphdef, params
  if getattr(model, "packed_head", None) is not None:
    raise DecodeError("the packed dense kernel runs on one CPU device; over a mesh decode with "
                      "dense_kernel='xla' (decode.py: --config.dense_kernel=xla)")
  kv_heads = model.config.num_kv_heads
  if kv_heads % mesh.shape["tensor"]:
    logging.info("%d key/value heads do not divide over tensor=%d: this model's attention "
                 "weights and cache are replicated on every device of an axis", kv_heads,
                 mesh.shape["tensor"])
  shardings = state_shardings(params, mesh, decode_rules(kv_heads, mesh))
  return graphdef, jax.device_put(params, shardings)


def fetch(arrays):
  """Host copies of (possibly multi-process) global arrays."""
  if jax.process_count() == 1:
    return jax.device_get(arrays)
  return tuple(np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in arrays)
