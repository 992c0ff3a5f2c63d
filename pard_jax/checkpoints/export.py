"""Writing a model out: a HF directory transformers loads (`save_hf`), or a delta (`save_delta`)."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pard_jax.checkpoints import delta
from pard_jax.checkpoints.checkpoint import Checkpoint
from pard_jax.checkpoints.config_json import read_config, write_config
from pard_jax.checkpoints.safetensors_io import write_safetensors
from pard_jax.drafter_kinds import DrafterKind
from pard_jax.errors import CheckpointError
from pard_jax.model import Transformer
from pard_jax.sharding import path_str


def hf_name(path: str) -> tuple[str, bool]:
  """HF tensor name for an NNX parameter path, and whether the HF tensor is transposed."""
  parts = path.split("/")
  leaf = parts[-1]
  transposed = leaf == "kernel"
  if leaf in ("kernel", "embedding"):
    parts[-1] = "weight"
  name = ".".join(parts)
  return (name if parts[0] == "lm_head" else "model." + name), transposed


def model_tensors(model: Transformer, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array in HF layout) for every parameter, gathered to the host."""
  _, state = nnx.split(model)
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name, transposed = hf_name(path_str(path))
    array = np.asarray(jax.device_get(leaf))
    if dtype:
      array = array.astype(jnp.dtype(dtype))
    yield name, (array.T if transposed else array)


def save_hf(model: Transformer, out_dir: str | os.PathLike, tokenizer=None,
            extra_config: dict[str, Any] | None = None, dtype: str | None = None,
            drafter: DrafterKind | None = None) -> pathlib.Path:
  """Writes `config.json` (declaring `drafter`) + `model.safetensors` (+ tokenizer) that
  transformers loads."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  write_safetensors(out_dir / "model.safetensors", dict(model_tensors(model, dtype)))
  extra = dict(extra_config or {})
  if dtype:
    extra["torch_dtype"] = dtype
  write_config(out_dir, model.config, drafter, **extra)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
  return out_dir


def save_delta(model: Transformer, out_dir: str | os.PathLike, base: str | os.PathLike,
               keep_layers: Sequence[int] = (), dtype: str = "float16",
               max_changed_rows: float = 0.5, drafter: DrafterKind | None = None,
               factors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
               ) -> pathlib.Path:
  """Writes what `model` changes over `base` (cut to `keep_layers`), stored in `dtype`, and
  the low-rank adapters `factors` (`pard_jax.adapters.factors`) that change it further.

  A `base` that is itself a delta (a drafter trained on from a shipped one) is replaced by its
  own base, so a delta always names a plain checkpoint and loads without the first delta.
  """
  base = pathlib.Path(base)
  while (over := read_config(base).delta) is not None:
    if over.keep_layers:
      keep_layers = tuple(over.keep_layers[i] for i in keep_layers) or over.keep_layers
    base = over.resolve(base)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  fetch_base = Checkpoint.open(base).cut(keep_layers).fetch
  stored = delta.with_factors(
      delta.changes(model_tensors(model), fetch_base, base, max_changed_rows), factors or {})
  for name, array in stored.items():
    if np.issubdtype(array.dtype, np.floating):
      stored[name] = narrowed = array.astype(jnp.dtype(dtype))
      if not np.all(np.isfinite(narrowed)):
        raise CheckpointError(f"{name} overflows {dtype}; save the delta in another dtype")
  write_safetensors(out_dir / "model.safetensors", stored)
  write_config(out_dir, model.config, drafter, delta.Delta.over(base, keep_layers),
               torch_dtype=dtype)
  return out_dir
