"""Self-distillation data for a SmolLM2-135M drafter: the target answers ShareGPT prompts.

  python distill.py --config=configs/distill.py

Rerunning the same command completes an interrupted run.
"""

import pathlib

from pard_jax import distill

ROOT = pathlib.Path(__file__).resolve().parents[1]


def get_config():
  config = distill.default_config()
  config.source = "sharegpt"
  config.max_prompts = 1200
  config.max_prompt_tokens = 192
  config.max_new_tokens = 192
  config.batch_size = 16
  config.output = str(ROOT / "data/distill/smollm2_sharegpt.jsonl")
  return config
