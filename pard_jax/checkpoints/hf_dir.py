"""The weights of a HF model directory: one file or shards behind an index, safetensors or .bin."""

from __future__ import annotations

import collections
import json
import os
import pathlib
from typing import Callable, Mapping

import numpy as np

from pard_jax.checkpoints.safetensors_io import read_safetensors
from pard_jax.checkpoints.torch_bin import read_torch_bin
from pard_jax.errors import CheckpointError

Reader = Callable[[pathlib.Path], Mapping[str, np.ndarray]]
# (single file, shard index, reader) in the order transformers prefers them.
_LAYOUTS: tuple[tuple[str, str, Reader], ...] = (
    ("model.safetensors", "model.safetensors.index.json", read_safetensors),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", read_torch_bin),
)


def read_hf_weights(model_dir: str | os.PathLike) -> Mapping[str, np.ndarray]:
  """All tensors of a HF model directory: name -> array (safetensors read on access)."""
  model_dir = pathlib.Path(model_dir)
  for _, index_name, read in _LAYOUTS:
    if (model_dir / index_name).exists():
      return _read_shards(model_dir / index_name, read)
  for file_name, _, read in _LAYOUTS:
    if (model_dir / file_name).exists():
      return read(model_dir / file_name)
  raise CheckpointError(f"no weights in {model_dir}: expected model.safetensors, "
                        "model.safetensors.index.json or pytorch_model.bin")


def _read_shards(index_path: pathlib.Path, read: Reader) -> Mapping[str, np.ndarray]:
  try:
    weight_map = json.loads(index_path.read_text())["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise CheckpointError(f"{index_path} is not a shard index (a JSON object with a "
                          f"'weight_map'): {e!r}") from e
  shards = []
  for shard in sorted(set(weight_map.values())):
    shard_path = index_path.parent / shard
    if not shard_path.exists():
      raise CheckpointError(f"{index_path} names shard {shard!r}, which is missing")
    shards.append(read(shard_path))
  tensors = collections.ChainMap(*shards)  # looks a name up shard by shard, reading nothing else
  missing = set(weight_map) - set(tensors)
  if missing:
    raise CheckpointError(f"shards of {index_path.parent} lack tensors named in the index: "
                          f"{sorted(missing)[:5]}")
  return tensors
