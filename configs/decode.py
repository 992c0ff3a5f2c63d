"""Decoding / evaluation settings for decode.py.

  python decode.py --config=configs/decode.py --config.method=pard \
      --config.target=/models/Llama-3.1-8B-Instruct --config.drafter=/models/PARD-Llama-3.2-1B

The field names are a contract other tools rely on; see README.md.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  config.target = ""  # HF directory or .gguf file; "" = the SmolLM2-135M-Instruct GGUF
  config.drafter = ""  # same formats; unused for method=ar
  config.method = "ar"  # ar | sd | pard | parallelspec
  config.num_draft_tokens = 4  # K
  config.mask_token_ids = ()  # override: (id,) for pard, K-1 ids for parallelspec
  config.max_new_tokens = 64
  config.temperature = 0.0  # 0 = greedy
  config.top_k = 0  # 0 = off
  config.top_p = 1.0
  config.seed = 0
  config.batch_size = 1
  config.prompts = "data/prompts/chat.jsonl"  # lines with "prompt" text or "input_ids"
  config.chat_template = True  # apply the tokenizer's chat template to "prompt" lines
  config.max_prompts = 0  # 0 = all
  config.output = ""  # .jsonl, one line per prompt in input order; "" = none
  config.dtype = "float32"  # float32 | bfloat16
  # None = the EOS ids of config.json, generation_config.json and the tokenizer; () = none.
  config.stop_token_ids = config_dict.placeholder(tuple)
  config.cache_len = 0  # 0 = prompt + max_new_tokens
  config.compare_ar = False  # also run ar on the same prompts and report the speedup
  return config
