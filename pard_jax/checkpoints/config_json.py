"""A checkpoint's config: the one reader and writer of `config.json` (and of a GGUF's config).

A `config.json` holds the architecture (`ModelConfig`) and, beside it, what the checkpoint is:
its drafter kind (`drafter_kinds.HF_FIELDS`) and, for a delta, its base (`delta.DELTA_FIELD`).
`read_config` parses each once, separately, into a `CheckpointConfig`; `write_config` joins them
again. A directory's `generation_config.json` is read here too (`load_generation_config`).
No jax: tools read a checkpoint's metadata without an accelerator runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
from typing import Any

from pard_jax import drafter_kinds
from pard_jax.checkpoints import gguf_io
from pard_jax.checkpoints.delta import DELTA_FIELD, Delta
from pard_jax.config import ModelConfig
from pard_jax.drafter_kinds import DrafterKind
from pard_jax.errors import CheckpointError, ConfigError

_METADATA_FIELDS = frozenset(drafter_kinds.HF_FIELDS) | {DELTA_FIELD}


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """What a checkpoint declares: its architecture, drafter kind and delta base, parsed once."""
  path: pathlib.Path  # the HF directory or .gguf file
  model: ModelConfig
  drafter: DrafterKind | None  # None: a plain AR model
  delta: Delta | None  # None: the weights are all in the checkpoint
  hf: dict[str, Any] = dataclasses.field(repr=False)  # the raw dict, metadata fields included


def checked_path(path: str | os.PathLike) -> pathlib.Path:
  """`path` if it can be a checkpoint: a `.gguf` file or a directory with a `config.json`."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.is_dir():
    if not (path / "config.json").exists():
      raise CheckpointError(f"{path} is not a HF model directory: config.json is missing")
  elif path.suffix != ".gguf":
    raise CheckpointError(f"{path} is neither a HF model directory nor a .gguf file")
  return path


def load_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  """The raw HF config dict of a model directory or `.gguf` file."""
  path = checked_path(path)
  if path.is_dir():
    return _read_json(path / "config.json")
  return _gguf_hf(path, gguf_io.open_gguf(path))


def read_config(path: str | os.PathLike) -> CheckpointConfig:
  """What the checkpoint at `path` (a HF directory or `.gguf` file) declares."""
  path = pathlib.Path(path)
  return parse_config(path, load_hf_config(path))


def load_config(path: str | os.PathLike, **overrides) -> ModelConfig:
  """The architecture of a checkpoint, with `overrides` replacing fields (e.g. dtype)."""
  return read_config(path).model.replace(**overrides)


def load_generation_config(path: str | os.PathLike) -> dict[str, Any] | None:
  """A HF directory's `generation_config.json` (EOS ids, sampling defaults); None without one."""
  generation_file = pathlib.Path(path) / "generation_config.json"
  if not generation_file.is_file():
    return None
  generation = _read_json(generation_file)
  if not isinstance(generation, dict):
    raise CheckpointError(f"{generation_file} must hold a JSON object, got "
                          f"{type(generation).__name__}")
  return generation


def gguf_checkpoint_config(path: pathlib.Path, reader) -> CheckpointConfig:
  """The config of the `.gguf` file `reader` has open, so a loader parses the file once."""
  return parse_config(path, _gguf_hf(path, reader))


def parse_config(path: pathlib.Path, hf: dict[str, Any]) -> CheckpointConfig:
  """A checkpoint's raw config dict, parsed: its errors name `path`."""
  if not isinstance(hf, dict):
    raise CheckpointError(f"{path}: config.json must hold a JSON object, "
                          f"got {type(hf).__name__}")
  with _naming(path):
    model = ModelConfig.from_hf({k: v for k, v in hf.items() if k not in _METADATA_FIELDS})
  try:
    drafter = drafter_kinds.from_hf(hf)
    if drafter is not None:
      drafter.check_vocab(model.vocab_size)
    if model.feature_size or (drafter is not None and drafter.feature_layers):
      if drafter is None:
        raise CheckpointError("config.json: the model reads target features "
                              "(target_feature_size) but declares no target_feature_layers")
      drafter.check_features(model.num_feature_layers, "config.json")
  except (TypeError, ValueError) as e:  # ValueError: every error of the package, and int()'s
    raise CheckpointError(f"{path}: {e}") from e
  delta = Delta.from_hf(hf[DELTA_FIELD], path / "config.json") if DELTA_FIELD in hf else None
  return CheckpointConfig(path, model, drafter, delta, hf)


def write_config(out_dir: pathlib.Path, model_config: ModelConfig,
                 drafter: DrafterKind | None = None, delta: Delta | None = None,
                 **extra) -> pathlib.Path:
  """Writes `out_dir/config.json`: the architecture, the drafter kind, the delta base, then
  `extra` fields (which win)."""
  hf = model_config.to_hf()
  if drafter is not None:
    hf.update(drafter.to_hf())
  if delta is not None:
    hf[DELTA_FIELD] = delta.to_hf()
  hf.update(extra)
  config_file = out_dir / "config.json"
  config_file.write_text(json.dumps(hf, indent=2, sort_keys=True))
  return config_file


def _gguf_hf(path: pathlib.Path, reader) -> dict[str, Any]:
  with _naming(path):
    return gguf_io.gguf_config(reader)


def _read_json(config_file: pathlib.Path) -> Any:
  try:
    return json.loads(config_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{config_file} is not valid JSON: {e}") from e


@contextlib.contextmanager
def _naming(path: pathlib.Path):
  """Prefixes `path` to the config and checkpoint errors raised inside, keeping their type."""
  try:
    yield
  except (ConfigError, CheckpointError) as e:
    raise type(e)(f"{path}: {e}") from e
