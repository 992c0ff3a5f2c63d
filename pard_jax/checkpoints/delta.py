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
import hashlib
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from pard_jax import files as files_lib
from pard_jax.checkpoints import assets
from pard_jax.errors import CheckpointError

DELTA_FIELD = "pard_jax_delta"
# HF names of tensors only a drafter has (`model.FeatureInput`): stored whole.
DRAFTER_ONLY = "model.features."

Fetch = Callable[[str], np.ndarray]


_WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin")


def fingerprint(base: pathlib.Path) -> str:
  """sha256 of a base checkpoint's weights: the file, or a directory's weight files in order
  ("" for a directory without any: its reader names what is missing)."""
  files = [base] if base.is_file() else sorted(
      p for p in base.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
  if not files:
    return ""
  hashes = [files_lib.sha256(p) for p in files]
  return hashes[0] if base.is_file() else hashlib.sha256("".join(hashes).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Delta:
  """A delta's `DELTA_FIELD`: its base checkpoint, the layers of it the drafter kept and the
  base's `fingerprint`, so that a replaced or other base is refused rather than patched."""
  # `package:<dir>/<file>` inside an installed package or `asset:<file>` (portable), else a
  # path: relative to the delta directory, or absolute.
  base: str
  keep_layers: tuple[int, ...] = ()
  base_sha256: str = ""  # "" in deltas written before it was recorded: not checked

  @classmethod
  def over(cls, base: pathlib.Path, keep_layers: Sequence[int] = ()) -> Delta:
    """The delta over `base`, referenced through its package when it lies in one."""
    return cls(assets.reference(base), tuple(keep_layers), fingerprint(pathlib.Path(base)))

  @classmethod
  def from_hf(cls, value: Any, config_file: pathlib.Path) -> Delta:
    if isinstance(value, dict):
      base, keep_layers = value.get("base"), value.get("keep_layers") or []
      sha256 = value.get("base_sha256", "")
      if (isinstance(base, str) and isinstance(keep_layers, list) and isinstance(sha256, str)
          and all(isinstance(i, int) for i in keep_layers)):
        return cls(base, tuple(keep_layers), sha256)
    raise CheckpointError(f"{config_file}: {DELTA_FIELD} must be an object with a 'base' path, "
                          f"a 'keep_layers' list of layer indices and optionally a "
                          f"'base_sha256' string, got {value!r}")

  def to_hf(self) -> dict[str, Any]:
    out = {"base": self.base, "keep_layers": list(self.keep_layers)}
    if self.base_sha256:
      out["base_sha256"] = self.base_sha256
    return out

  def resolve(self, delta_dir: pathlib.Path) -> pathlib.Path:
    """The base checkpoint's path, for the delta in `delta_dir`, checked against the recorded
    fingerprint."""
    if assets.is_reference(self.base):
      try:
        base = assets.resolve(self.base)
      except CheckpointError as e:
        raise CheckpointError(f"{delta_dir} is a delta over {e}") from e
    else:
      base = delta_dir / self.base  # an absolute reference stays absolute
      if not base.exists():
        raise CheckpointError(f"{delta_dir} is a delta over {self.base!r}, which does not "
                              f"exist")
    found = fingerprint(base) if self.base_sha256 else ""
    if found and found != self.base_sha256:
      raise CheckpointError(f"{delta_dir} is a delta over {self.base!r} with sha256 "
                            f"{self.base_sha256}, but {base} has sha256 {found}: another base "
                            f"(replaced or edited); use the base it was trained over")
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


def with_factors(stored: dict[str, np.ndarray],
                 factors: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
  """`stored` plus low-rank adapters (`pard_jax.adapters.factors`): the weight `name` changes
  by `up @ down`, kept as `<name>:lora_down` `[r, in]` and `<name>:lora_up` `[out, r]`."""
  for name, (down, up) in factors.items():
    if name in stored:
      raise CheckpointError(f"{name} is stored whole and as an adapter")
    stored[f"{name}:lora_down"], stored[f"{name}:lora_up"] = down, up
  return stored


def patched(stored: Mapping[str, np.ndarray], fetch_base: Fetch) -> Fetch:
  """The fetch of the drafter a delta stores: its tensors, else the base's with its rows, and
  with its adapter folded in (in float32: no per-token cost at decoding)."""
  def fetch(name: str) -> np.ndarray:
    if name in stored:
      return stored[name]
    array = fetch_base(name)
    if f"{name}:lora_up" in stored:
      up, down = stored[f"{name}:lora_up"], stored[f"{name}:lora_down"]
      if up.shape[0] != array.shape[0] or down.shape[1:] != array.shape[1:]:
        raise CheckpointError(f"the adapter of {name} is {up.shape[0]} x {down.shape[1:]} but "
                              f"the base's tensor is {array.shape}: a delta over another base")
      return (np.asarray(array, np.float32)
              + np.asarray(up, np.float32) @ np.asarray(down, np.float32))
    if f"{name}:rows" in stored:
      row_ids = stored[f"{name}:row_ids"]
      # Appended rows (a grown vocabulary) are always stored; they extend the base's table.
      num_rows = max(len(array), int(row_ids.max()) + 1)
      array = np.concatenate([np.asarray(array, np.float32),
                              np.zeros((num_rows - len(array),) + array.shape[1:], np.float32)])
      array[row_ids] = stored[f"{name}:rows"]
    return array
  return fetch
