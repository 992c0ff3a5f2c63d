"""Dense layers as one prepacked-weight kernel on CPU, for decoding (`dense_kernel`).

On XLA:CPU a matmul over 2 to 16 rows repacks its weight on every call, so a speculative
verify forward over K + 1 tokens costs far more than a 1-token one, though both mostly read
the same weights. `pack` returns a copy of a float32 model whose dense layers (and head) hold
their weights prepacked for `packed_dense.cc`, which streams each weight once for all rows.
Decoding only: the packed copy has no gradient and runs on CPU.

  model = packed_dense.prepare(model, DenseKernel.AUTO)   # decode.py's `dense_kernel`
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from pard_jax.errors import ConfigError, require
from pard_jax.model import Transformer
from pard_jax.packed_dense import library

TILE = 16  # columns per packed tile, as in packed_dense.cc


class DenseKernel(enum.Enum):
  """How decoding computes dense layers: the config's `dense_kernel`."""
  AUTO = "auto"      # packed where it runs (float32 on an x86-64 CPU with AVX2), else xla
  XLA = "xla"        # XLA's own dot
  PACKED = "packed"  # the packed kernel; an error where it cannot run

  @classmethod
  def parse(cls, value: str, field: str = "dense_kernel") -> "DenseKernel":
    choices = [k.value for k in cls]
    require(value in choices, field, f"unknown {value!r}; choose one of {', '.join(choices)}")
    return cls(value)


def unavailable_reason(dtype: str) -> str:
  """Why the packed kernel cannot decode in `dtype` here ("" when it can); builds nothing."""
  if jax.default_backend() != "cpu":
    return f"it runs on CPU only and the default backend is {jax.default_backend()}"
  if jnp.dtype(dtype) != jnp.float32:
    return f"it computes in float32 only, not {dtype}"
  return library.unavailable_reason()


def resolve(kernel: DenseKernel, dtype: str, field: str = "dense_kernel") -> DenseKernel:
  """XLA or PACKED for this machine; PACKED asked for where it cannot run is a ConfigError."""
  if kernel is DenseKernel.XLA:
    return kernel
  reason = unavailable_reason(dtype)
  require(kernel is not DenseKernel.PACKED or not reason, field,
          f"'packed' cannot run here: {reason}; use 'auto' or 'xla'")
  if reason and dtype == "float32":  # bfloat16 picks XLA by design: nothing to say
    logging.warning("%s=auto uses XLA's dot: the packed kernel cannot run here (%s). On a CPU "
                    "a K+1-token verify then costs well above a 1-token forward, so "
                    "speculation gains less (benchmarks/dense_bench.py measures both)", field,
                    reason)
  return DenseKernel.XLA if reason else DenseKernel.PACKED


class PackedWeight(nnx.Variable):
  """A weight in the kernel's layout `[O / 16, I, 16]`; not trained."""


def pack_weight(kernel_IxO) -> jax.Array:
  """`[in, out]` -> `[ceil(out / 16), in, 16]`, zero-padded columns."""
  kernel = np.asarray(kernel_IxO, np.float32)
  fan_in, out = kernel.shape
  padded = -out % TILE
  if padded:
    kernel = np.concatenate([kernel, np.zeros((fan_in, padded), np.float32)], axis=1)
  return jnp.asarray(kernel.reshape(fan_in, -1, TILE).transpose(1, 0, 2))


def matmul(x_SxI, packed_OxIx16, out_features: int) -> jax.Array:
  """`x @ kernel` for float32 rows (S: a forward's tokens, batch rows flattened) through the
  kernel: `[S, out_features]`."""
  library.load()  # built and registered once, before the first trace that calls it
  rows = x_SxI.shape[0]
  y = jax.ffi.ffi_call(library.TARGET, jax.ShapeDtypeStruct(
      (rows, packed_OxIx16.shape[0] * TILE), jnp.float32), vmap_method="sequential")(
          x_SxI.astype(jnp.float32), packed_OxIx16)
  return y[:, :out_features] if y.shape[1] != out_features else y


class PackedDense(nnx.Module):
  """`nnx.Linear`'s forward (`x @ kernel + bias`) with a prepacked kernel."""

  def __init__(self, kernel_IxO, bias_O=None):
    self.in_features, self.out_features = kernel_IxO.shape
    self.dtype = jnp.dtype(jnp.float32)  # the compute dtype, as nnx.Linear names it
    self.packed = PackedWeight(pack_weight(kernel_IxO))
    self.bias = None if bias_O is None else PackedWeight(jnp.asarray(bias_O, jnp.float32))

  def __call__(self, x_BxSxI):
    y = matmul(x_BxSxI.reshape(-1, self.in_features), self.packed[...], self.out_features)
    if self.bias is not None:
      y = y + self.bias[...]
    return y.reshape(*x_BxSxI.shape[:-1], self.out_features)


def _packed_linear(linear: nnx.Linear) -> PackedDense:
  bias = None if linear.bias is None else linear.bias[...]
  return PackedDense(linear.kernel[...], bias)


def pack(model: Transformer, in_place: bool = False) -> Transformer:
  """A copy of `model` with every dense layer and its head on the packed kernel (built here
  on first use; a failed build is a ConfigError naming `dense_kernel`). `in_place` packs
  `model` itself, layer by layer, so host memory holds one unpacked layer at a time beside the
  model instead of a second copy of it (for a caller that drops the unpacked model)."""
  resolve(DenseKernel.PACKED, model.config.dtype)
  try:
    library.load()
  except OSError as e:
    raise ConfigError(f"config.dense_kernel: the packed kernel cannot run here: {e}; use "
                      "'xla'") from None
  packed = model if in_place else nnx.clone(model)
  linears = [path for path, node in nnx.iter_graph(packed)
             if isinstance(node, nnx.Linear) and path != ("lm_head",)]
  for path in linears:
    parent = packed
    for name in path[:-1]:
      parent = parent[name] if isinstance(name, int) else getattr(parent, name)
    setattr(parent, path[-1], _packed_linear(getattr(parent, path[-1])))
  # The head's matrix as `[D, R]` (R = the restricted vocabulary or V), gathered once here.
  ids = packed.config.draft_vocab
  if model.lm_head is not None:
    head_DxV = model.lm_head.kernel[...]
  else:
    head_DxV = model.embed_tokens.embedding[...].T
  packed.packed_head = nnx.data(
      PackedDense(head_DxV if ids is None else head_DxV[:, np.asarray(ids)]))
  return packed


def prepare(model: Transformer, kernel: DenseKernel, in_place: bool = False) -> Transformer:
  """`model` as decoding should run it under `kernel` (AUTO: packed where that runs); with
  `in_place`, `model` itself is packed (`pack`)."""
  kernel = resolve(kernel, model.config.dtype)
  return pack(model, in_place) if kernel is DenseKernel.PACKED else model
