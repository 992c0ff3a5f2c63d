"""GGUF files (llama.cpp): metadata as a HF config dict, HF tensor names, dequantised weights.

One `gguf.GGUFReader` serves a file's config and its tensors: it parses the whole header when
built and memory-maps the data, so a tensor is read (and dequantised to float32) only when it is
fetched. The `gguf` package is optional (`pip install 'pard_jax[gguf]'`) and imported only
here. No jax: `config_json` reads a GGUF's config through this module.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import numpy as np

from pard_jax.config import SUPPORTED_MODEL_TYPES, ModelConfig
from pard_jax.errors import CheckpointError, ConfigError

# HF name (without "model." and "layers.<i>.") -> GGUF name; a prefix maps what follows it too.
_NAMES = {
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


def _gguf():
  try:
    import gguf
  except ImportError as e:
    raise ImportError("loading .gguf files needs the `gguf` package: "
                      "pip install 'pard_jax[gguf]'") from e
  return gguf


def open_gguf(path: pathlib.Path):
  """The `gguf.GGUFReader` of a file."""
  gguf = _gguf()
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises whatever its parse trips on
    raise CheckpointError(f"{path}: not a readable GGUF file: {e}") from e


_REQUIRED = object()


def _field(reader, key: str, default=_REQUIRED):
  """A metadata value; without a default, one the file must have."""
  field = reader.fields.get(key)
  if field is not None:
    return field.contents()
  if default is _REQUIRED:
    raise CheckpointError(f"GGUF metadata lacks {key}")
  return default


def gguf_config(reader) -> dict[str, Any]:
  """The HF `config.json` dict described by a GGUF file's metadata."""
  arch = _field(reader, "general.architecture")
  if arch not in SUPPORTED_MODEL_TYPES:
    raise ConfigError(f"unsupported GGUF architecture {arch!r} (supported: "
                      f"{', '.join(SUPPORTED_MODEL_TYPES)})")
  get = lambda key, default=_REQUIRED: _field(reader, f"{arch}.{key}", default)
  num_heads = int(get("attention.head_count"))
  hidden_size = int(get("embedding_length"))
  vocab = get("vocab_size", 0) or len(_field(reader, "tokenizer.ggml.tokens"))
  config = {
      "model_type": arch,
      "vocab_size": int(vocab),
      "hidden_size": hidden_size,
      "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": int(get("block_count")),
      "num_attention_heads": num_heads,
      "num_key_value_heads": int(get("attention.head_count_kv", num_heads)),
      "head_dim": int(get("attention.key_length", hidden_size // num_heads)),
      "rope_theta": float(get("rope.freq_base", 10000.0)),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
      "max_position_embeddings": int(get("context_length", 2048)),
      "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
  }
  for key in ("bos_token_id", "eos_token_id"):
    value = _field(reader, f"tokenizer.ggml.{key}", None)
    if value is not None:
      config[key] = int(value)
  return config


def _gguf_name(name: str) -> str:
  name = name.removeprefix("model.")
  if name.startswith("layers."):
    _, layer, rest = name.split(".", 2)
    for hf, gg in _NAMES.items():
      if rest.startswith(hf):
        return f"blk.{layer}.{gg}{rest[len(hf):]}"
  return _NAMES.get(name, name)


def _unpermute_llama_qk(weight_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's interleaving of rotary halves in Llama q/k projections."""
  half = weight_OxI.shape[0] // num_heads // 2
  w = weight_OxI.reshape(num_heads, half, 2, *weight_OxI.shape[1:])
  return w.swapaxes(1, 2).reshape(weight_OxI.shape)


def gguf_fetcher(path: pathlib.Path, reader, config: ModelConfig) -> Callable[[str], np.ndarray]:
  """HF tensor name -> float32 array, dequantised from the file `reader` reads."""
  gguf = _gguf()
  tensors = {t.name: t for t in reader.tensors}

  def fetch(name: str) -> np.ndarray:
    gguf_name = _gguf_name(name)
    if gguf_name not in tensors:
      raise CheckpointError(f"{path} lacks tensor {gguf_name!r} (for {name})")
    t = tensors[gguf_name]
    weight = np.asarray(gguf.dequantize(t.data, t.tensor_type), np.float32)
    if config.model_type == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
      heads = config.num_heads if "attn_q" in gguf_name else config.num_kv_heads
      weight = _unpermute_llama_qk(weight, heads)
    return weight
  return fetch
