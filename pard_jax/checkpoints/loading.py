"""Loading a checkpoint into a `Transformer`, each parameter placed (or sharded) as it is read."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pard_jax.checkpoints.checkpoint import Checkpoint
from pard_jax.checkpoints.export import hf_name
from pard_jax.errors import CheckpointError
from pard_jax.model import Transformer, abstract_model
from pard_jax.sharding import LLAMA_RULES, path_str, state_shardings


def load_model(path: str | os.PathLike, *, dtype: str | None = None,
               param_dtype: str | None = None, mesh: Mesh | None = None,
               rules: Sequence[tuple[str, Any]] | None = None,
               config_overrides: dict[str, Any] | None = None,
               keep_layers: Sequence[int] = ()) -> Transformer:
  """Loads a HF model directory, `.gguf` file or delta directory into a `Transformer`.

  `dtype` is the compute dtype and `param_dtype` the storage dtype (both default to float32;
  bfloat16 halves memory). With `mesh`, parameters are sharded by `rules` (default
  `sharding.LLAMA_RULES`; decoding passes `sharding.decode_rules`), each read straight into its
  shards.
  `keep_layers` cuts the model to those decoder layers, in that order (`Checkpoint.cut`); only
  the kept layers are read.
  """
  checkpoint = Checkpoint.open(path).cut(keep_layers)
  overrides = dict(config_overrides or {})
  if dtype:
    overrides["dtype"] = dtype
  if param_dtype or dtype:
    overrides["param_dtype"] = param_dtype or dtype
  config = checkpoint.config.model.replace(**overrides)
  return fill_state(abstract_model(config), checkpoint.fetch, mesh, rules)


def fill_state(model_abstract: Transformer, fetch: Callable[[str], np.ndarray],
               mesh: Mesh | None, rules: Sequence[tuple[str, Any]] | None = None
               ) -> Transformer:
  """Materialises each parameter of an abstract model from `fetch(hf_name)`, one at a time
  (host memory holds one tensor); with `mesh`, each device gets its slice of it."""
  graphdef, abstract_state = nnx.split(model_abstract)

  def load(path, leaf, sharding=None):
    name, transposed = hf_name(path_str(path))
    array = fetch(name)
    if transposed:
      array = array.T
    if tuple(array.shape) != tuple(leaf.shape):
      raise CheckpointError(f"shape mismatch for {name}: checkpoint has "
                            f"{tuple(array.shape)}, model expects {tuple(leaf.shape)}")
    if sharding is None:
      return jnp.asarray(np.asarray(array, dtype=leaf.dtype))
    return jax.make_array_from_callback(
        leaf.shape, sharding, lambda idx: np.asarray(array[idx], dtype=leaf.dtype))

  if mesh is None:
    state = jax.tree_util.tree_map_with_path(load, abstract_state)
  else:
    state = jax.tree_util.tree_map_with_path(
        load, abstract_state, state_shardings(abstract_state, mesh, rules or LLAMA_RULES))
  return nnx.merge(graphdef, state)
