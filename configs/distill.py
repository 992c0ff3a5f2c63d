"""Self-distillation settings for distill.py; the defaults write the SmolLM2-135M drafter's data:
the target answers 1200 ShareGPT prompts.

  python distill.py --config=configs/distill.py

Rerunning the same command completes an interrupted run; `<output>.settings.json` records the
settings the answers depend on, and a rerun with other ones is refused (`max_prompts` and
`batch_size` may change).
"""

import ml_collections

from configs import DATA


def get_config():
  c = ml_collections.ConfigDict()
  c.target = ""  # HF directory, .gguf or package:<file>; "" = the SmolLM2-135M-Instruct GGUF
  c.source = "sharegpt"  # a TRAINING_PROMPT_SETS name or a .jsonl of "prompt" lines
  # .jsonl files of prompts kept out, comma-separated (a training run's held-out prompts).
  c.exclude = ""
  c.max_prompts = 1200  # prompts taken from the source (after filtering); 0 = all
  c.max_prompt_tokens = 192  # longer prompts are skipped
  c.max_new_tokens = 192
  c.temperature = 0.0  # 0 = greedy
  c.top_k = 0
  c.top_p = 1.0
  c.seed = 0
  c.batch_size = 16
  c.dtype = "float32"
  # The .jsonl written (appended on rerun), beside it <output>.settings.json.
  c.output = str(DATA / "distill/smollm2_sharegpt.jsonl")
  return c
