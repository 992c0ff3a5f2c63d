"""The drafter's own answers for the Qwen2.5-Coder PARD adaptation: Qwen2.5-Coder-0.5B-Instruct
answers ShareGPT prompts greedily (self-distillation). Training on them keeps the drafter's own
next-token choices, which the 1.5B target accepts most of the time, and teaches the mask
positions to continue them.

  python distill.py --config=configs/distill_qwen_coder.py

Rerunning completes an interrupted run. Prompts of the adaptation's held-out set are kept out.
"""

from configs import DATA
from configs import distill
from pard_jax.checkpoints import assets


def get_config():
  c = distill.get_config()
  c.target = assets.QWEN_CODER_DRAFTER
  c.exclude = str(DATA / "distill/qwen_coder_heldout_prompts.jsonl")
  c.max_prompts = 512
  c.max_prompt_tokens = 96  # with the answer, one 256-token training row
  c.max_new_tokens = 160
  c.batch_size = 16
  c.output = str(DATA / "distill/qwen_coder_0_5b_sharegpt.jsonl")
  return c
