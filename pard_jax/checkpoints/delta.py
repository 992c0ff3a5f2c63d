"""Drafter deltas: a drafter stored as what it changes over the checkpoint it was cut from.

A drafter cut from its target and trained with the shared tensors frozen differs from the
target only in its kept layers and its mask rows. A delta directory stores just that:
`config.json` (the drafter's own, plus `DELTA_FIELD` naming the base checkpoint and the layers
it was cut to) and `model.safetensors` holding every tensor that differs from the base or, for
a tensor where few rows differ, those rows (`<name>:rows`, `<name>:row_ids`). Loading fills the
rest from the base, so the drafter is the same model in a fraction of the bytes.

This module is the format: the `DELTA_FIELD` object (`Delta`), what is stored (`changes`) and
how it is applied over the base (`patched`). Opening a base is `Checkpoint.open`'s, and writing
one is `export.save_delta`. No jax: `config_json` parses the field through this module.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from pard_jax.checkpoints import assets
from pard_jax.errors import CheckpointError

DELTA_FIELD = "pard_jax_delta"
# HF names of tensors only a drafter has (`model.FeatureInput`): stored whole.
DRAFTER_ONLY = "model.features."

Fetch = Callable[[str], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Delta:
  """A delta's `DELTA_FIELD`: its base checkpoint and the layers of it the drafter kept."""
  # `package:<dir>/<file>` inside an installed package (portable), else a path: relative to
  # the delta directory, or absolute.
  base: str
  keep_layers: tuple[int, ...] = ()

  @classmethod
  def over(cls, base: pathlib.Path, keep_layers: Sequence[int] = ()) -> Delta:
    """The delta over `base`, referenced through its package when it lies in one."""
    return cls(assets.reference(base), tuple(keep_layers))

  @classmethod
  def from_hf(cls, value: Any, config_file: pathlib.Path) -> Delta:
    if isinstance(value, dict):
      base, keep_layers = value.get("base"), value.get("keep_layers") or []
      if (isinstance(base, str) and isinstance(keep_layers, list)
          and all(isinstance(i, int) for i in keep_layers)):
        return cls(base, tuple(keep_layers))
    raise CheckpointError(f"{config_file}: {DELTA_FIELD} must be an object with a 'base' path "
                          f"and a 'keep_layers' list of layer indices, got {value!r}")

  def to_hf(self) -> dict[str, Any]:
    return {"base": self.base, "keep_layers": list(self.keep_layers)}

  def resolve(self, delta_dir: pathlib.Path) -> pathlib.Path:
    """The base checkpoint's path, for the delta in `delta_dir`."""
    if assets.is_reference(self.base):
      try:
        return assets.resolve(self.base)
      except CheckpointError as e:
        raise CheckpointError(f"{delta_dir} is a delta over {e}") from e
    base = delta_dir / self.base  # an absolute reference stays absolute
    if not base.exists():
      raise CheckpointError(f"{delta_dir} is a delta over {self.base!r}, which does not exist")
    return base


def changes(tensors: Iterable[tuple[str, np.ndarray]], fetch_base: Fetch, base: pathlib.Path,
            max_changed_rows: float) -> dict[str, np.ndarray]:
  """What a delta stores of `tensors` over the base's: whole tensors, or their changed rows
  when at most `max_changed_rows` of a matrix's rows changed."""
  stored = {}
  for name, array in tensors:
    if name.startswith(DRAFTER_ONLY):  # no base holds a feature drafter's input
      stored[name] = array
      continue
    original = np.asarray(fetch_base(name), array.dtype)
    grown = len(array) - len(original)
    if original.shape[1:] != array.shape[1:] or grown < 0:
      raise CheckpointError(f"{name} is {array.shape} in the model but {original.shape} in the "
                            f"base {base}: a delta stores changes to the base's tensors only")
    if grown:  # rows appended past the base's vocabulary (ParallelSpec masks) are all new
      original = np.concatenate([original, np.full((grown,) + array.shape[1:], np.nan,
                                                    array.dtype)])
    changed_rows = np.any(array != original, axis=tuple(range(1, array.ndim)))
    if not changed_rows.any():
      continue
    if array.ndim == 2 and changed_rows.mean() <= max_changed_rows:
      stored[f"{name}:row_ids"] = np.flatnonzero(changed_rows).astype(np.int32)
      stored[f"{name}:rows"] = array[changed_rows]
    else:
      stored[name] = array
  return stored


def patched(stored: Mapping[str, np.ndarray], fetch_base: Fetch) -> Fetch:
  """The fetch of the drafter a delta stores: its tensors, else the base's with its rows."""
  def fetch(name: str) -> np.ndarray:
    if name in stored:
      return stored[name]
    array = fetch_base(name)
    if f"{name}:rows" in stored:
      row_ids = stored[f"{name}:row_ids"]
      # Appended rows (a grown vocabulary) are always stored; they extend the base's table.
      num_rows = max(len(array), int(row_ids.max()) + 1)
      array = np.concatenate([np.asarray(array, np.float32),
                              np.zeros((num_rows - len(array),) + array.shape[1:], np.float32)])
      array[row_ids] = stored[f"{name}:rows"]
    return array
  return fetch
