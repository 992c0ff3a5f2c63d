"""Test helpers that need torch and transformers: tiny random transformers models of every
supported architecture, saved as HF directories, and their logits."""

import pathlib

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5)

ARCHITECTURES = {
    # Llama 3.1/3.2-style: llama3 rope scaling, untied embeddings.
    "llama3": lambda: transformers.LlamaConfig(
        **TINY, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    # SmolLM2 / Llama-3.2-1B style: tied embeddings, MHA-free GQA.
    "smollm2": lambda: transformers.LlamaConfig(**TINY, rope_theta=100000.0,
                                                tie_word_embeddings=True),
    "llama2": lambda: transformers.LlamaConfig(**{**TINY, "num_key_value_heads": 4},
                                               tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, rope_theta=1000000.0,
                                              tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=16, rope_theta=1000000.0,
                                              tie_word_embeddings=False),
}


def make_hf_model(arch: str, seed: int = 0) -> transformers.PreTrainedModel:
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(ARCHITECTURES[arch](),
                                                        dtype=torch.float32)
  with torch.no_grad():  # HF initialises norms to one and biases to zero: perturb them
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def save_hf_model(arch: str, directory: pathlib.Path, seed: int = 0, **save_kwargs):
  model = make_hf_model(arch, seed)
  model.save_pretrained(directory, **save_kwargs)
  return model


def save_target_and_pard_drafter(root: pathlib.Path) -> None:
  """A tiny SmolLM2-style HF target at `root/target` and, at `root/drafter`, a PARD drafter for
  it (a perturbed copy declaring mask id 95): the decode.py tests' pair."""
  from pard_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from tests.helpers import perturbed  # pylint: disable=g-import-not-at-top
  save_hf_model("smollm2", root / "target")
  target = checkpoints.load_model(root / "target")
  checkpoints.save_hf(perturbed(target, 0.2, 0), root / "drafter",
                      extra_config={"pard_token": 95, "spd_type": "pard"})


def hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
