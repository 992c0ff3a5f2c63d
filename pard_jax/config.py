"""Model configuration: one frozen dataclass for every supported Llama-family architecture.

`ModelConfig.from_hf` reads the architecture fields of a Hugging Face `config.json` dict
(Llama 2/3/3.1/3.2, SmolLM2, Qwen2/2.5, Qwen3) and `to_hf` writes them back, so configs
round-trip through HF directories. What a checkpoint declares beyond its architecture (its
drafter kind, a delta's base) is read by `pard_jax.checkpoints` before this. This is the lowest
layer: it imports no jax and nothing of the package but its error vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from pard_jax.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
DTYPES = ("float32", "bfloat16", "float16")  # parameter and compute dtypes, everywhere


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Llama-family decoder.

  `rope_scaling` is None or a tuple of (key, value) pairs (hashable, so the config can be a
  static jit argument); only the `llama3` type is supported.
  """

  model_type: str = "llama"
  vocab_size: int = 256
  hidden_size: int = 64
  intermediate_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False  # q/k/v projection bias (Qwen2)
  qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
  max_position_embeddings: int = 2048
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype
  # A drafter's head restricted to these token ids (ascending): its logits are -inf elsewhere,
  # so it never proposes another token and verification stays exact (`config.json`
  # "draft_vocab"). None: the whole vocabulary.
  draft_vocab: tuple[int, ...] | None = dataclasses.field(default=None, repr=False)
  # A feature drafter reads the target's hidden states after `num_feature_layers` of its
  # layers, concatenated: `feature_size` = that count x the target's hidden size
  # (`config.json` "target_feature_size", "num_target_feature_layers"). 0: tokens only.
  feature_size: int = 0
  num_feature_layers: int = 0
  # Remaining HF fields (bos/eos ids, ...) carried through to the exported config.json.
  extra_hf_fields: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ConfigError(
          f"unsupported model_type {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ConfigError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
    if self.rope_scaling is not None:
      rope_type = dict(self.rope_scaling).get("rope_type")
      if rope_type not in ("llama3", "default"):
        raise ConfigError(f"unsupported rope scaling type {rope_type!r} (supported: llama3)")
    if (self.feature_size < 0 or self.num_feature_layers < 0
        or bool(self.feature_size) != bool(self.num_feature_layers)
        or (self.feature_size and self.feature_size % self.num_feature_layers)):
      raise ConfigError(f"feature_size ({self.feature_size}) must be a multiple of "
                        f"num_feature_layers ({self.num_feature_layers}), both 0 or both > 0")
    if self.draft_vocab is not None:
      ids = np.asarray(self.draft_vocab)
      if (ids.ndim != 1 or not len(ids) or not np.issubdtype(ids.dtype, np.integer)
          or np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= self.vocab_size):
        raise ConfigError(f"draft_vocab must be ascending distinct token ids in "
                          f"[0, {self.vocab_size}), got {len(ids)} values")

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    eos = _thaw(dict(self.extra_hf_fields).get("eos_token_id"))
    if eos is None:
      return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)

  def rope_inv_freq(self) -> np.ndarray:
    """Inverse rotary frequencies `[head_dim // 2]` (float64), with llama3 scaling applied."""
    inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, self.head_dim, 2) / self.head_dim))
    scaling = dict(self.rope_scaling or {})
    if scaling.get("rope_type") != "llama3":
      return inv_freq
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
    """Builds a config from a HF `config.json` dict; `overrides` replace fields (e.g. dtype).

    Fields it does not know are kept (`extra_hf_fields`) and written back by `to_hf`.
    """
    if not isinstance(hf, dict):
      raise ConfigError(f"a config.json must hold a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ConfigError(
          f"unsupported architecture: model_type={model_type!r} "
          f"(architectures={hf.get('architectures')}); supported: {SUPPORTED_MODEL_TYPES}")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size",
                           "num_hidden_layers", "num_attention_heads") if k not in hf]
    if missing:
      raise ConfigError(f"config.json lacks required field(s) {', '.join(missing)}")
    if hf.get("hidden_act", "silu") != "silu":
      raise ConfigError(f"unsupported hidden_act {hf['hidden_act']!r} (only silu)")
    if hf.get("use_sliding_window"):
      raise ConfigError("sliding-window attention is not supported")
    if hf.get("mlp_bias"):
      raise ConfigError("mlp_bias=True is not supported")
    rope_params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = rope_params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
    if rope_type not in ("default", "llama3"):
      raise ConfigError(f"unsupported rope scaling type {rope_type!r} (supported: llama3)")
    rope_scaling = None
    if rope_type == "llama3":
      rope_scaling = tuple(sorted(
          (k, rope_params[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                         "original_max_position_embeddings")))
      rope_scaling += (("rope_type", "llama3"),)
    num_heads = hf["num_attention_heads"]
    known = {
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_scaling",
        "rope_parameters", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
        "max_position_embeddings", "torch_dtype", "dtype",
        "hidden_act", "architectures", "transformers_version", "use_sliding_window",
        "mlp_bias", "layer_types", "use_cache", "_name_or_path", "draft_vocab",
        "target_feature_size", "num_target_feature_layers",
    }
    extra = tuple(sorted((k, _freeze(v)) for k, v in hf.items() if k not in known))
    fields = dict(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=(model_type == "qwen2") or bool(hf.get("attention_bias", False)),
        qk_norm=model_type == "qwen3",
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        draft_vocab=tuple(hf["draft_vocab"]) if hf.get("draft_vocab") else None,
        feature_size=hf.get("target_feature_size", 0),
        num_feature_layers=hf.get("num_target_feature_layers", 0),
        extra_hf_fields=extra,
    )
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` dict that transformers loads as the same architecture."""
    architectures = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                     "qwen3": "Qwen3ForCausalLM"}
    rope_scaling = dict(self.rope_scaling) if self.rope_scaling else None
    hf = dict(_thaw(dict(self.extra_hf_fields)))
    hf.update(
        architectures=[architectures[self.model_type]],
        model_type=self.model_type,
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads,
        head_dim=self.head_dim,
        hidden_act="silu",
        rope_theta=self.rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=self.rms_norm_eps,
        tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings,
        torch_dtype=self.param_dtype,
    )
    if self.model_type == "llama":
      hf["attention_bias"] = self.attention_bias
    if self.draft_vocab is not None:
      hf["draft_vocab"] = list(self.draft_vocab)
    if self.feature_size:
      hf.update(target_feature_size=self.feature_size,
                num_target_feature_layers=self.num_feature_layers)
    return hf


def _freeze(value):
  """Makes JSON values hashable so the config stays usable as a static jit argument."""
  if isinstance(value, dict):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return ("__list__",) + tuple(_freeze(v) for v in value)
  return value


def _thaw(value):
  if isinstance(value, dict):
    return {k: _thaw(v) for k, v in value.items()}
  if isinstance(value, tuple):
    if value[:1] == ("__list__",):
      return [_thaw(v) for v in value[1:]]
    if all(isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
           for item in value):
      return {k: _thaw(v) for k, v in value}
    return [_thaw(v) for v in value]
  return value
