"""An opened checkpoint: its config parsed once and a reader of its tensors by HF name.

`Checkpoint.open` reads a checkpoint's metadata once and opens its weights once, whatever the
format: a `.gguf` file (one `GGUFReader` for both), a HF directory, or a delta (its base opened
once, under it). Tensors are read when fetched, so a cut model reads only its kept layers.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Mapping, Sequence

import numpy as np

from pard_jax.checkpoints import delta, gguf_io
from pard_jax.checkpoints.config_json import (
    CheckpointConfig, checked_path, gguf_checkpoint_config, read_config)
from pard_jax.checkpoints.hf_dir import read_hf_weights
from pard_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A checkpoint's config, and `fetch(hf_name) -> array` in HF layout for its tensors."""
  config: CheckpointConfig
  fetch: Callable[[str], np.ndarray]

  @classmethod
  def open(cls, path: str | os.PathLike) -> Checkpoint:
    path = checked_path(path)
    if path.suffix == ".gguf":
      reader = gguf_io.open_gguf(path)
      config = gguf_checkpoint_config(path, reader)
      return cls(config, gguf_io.gguf_fetcher(path, reader, config.model))
    config = read_config(path)
    weights = read_hf_weights(path)
    if config.delta is None:
      return cls(config, _lookup(path, weights))
    base = cls.open(config.delta.resolve(path)).cut(config.delta.keep_layers)
    return cls(config, delta.patched(weights, base.fetch))

  def cut(self, keep_layers: Sequence[int]) -> Checkpoint:
    """This checkpoint with only the decoder layers `keep_layers`, renumbered 0.. in that
    order (a drafter initialised from its target); embeddings, norm and head stay whole.
    `config.model` has the kept layers; `config.hf` stays the file's."""
    keep_layers = tuple(keep_layers)
    if not keep_layers:
      return self
    total = self.config.model.num_layers
    if not all(isinstance(i, int) and 0 <= i < total for i in keep_layers):
      raise CheckpointError(f"keep_layers {keep_layers} must be layer indices in [0, {total}) "
                            f"of {self.config.path}")

    def fetch(name: str) -> np.ndarray:
      if name.startswith("model.layers."):
        _, _, layer, rest = name.split(".", 3)
        name = f"model.layers.{keep_layers[int(layer)]}.{rest}"
      return self.fetch(name)
    model = self.config.model.replace(num_layers=len(keep_layers))
    return Checkpoint(dataclasses.replace(self.config, model=model), fetch)


def _lookup(path: pathlib.Path, tensors: Mapping[str, np.ndarray]) -> Callable[[str], np.ndarray]:
  def fetch(name: str) -> np.ndarray:
    if name not in tensors:
      raise CheckpointError(f"{path} lacks tensor {name!r}")
    return tensors[name]
  return fetch
