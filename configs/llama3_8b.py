r"""PARD drafter for the Llama-3.1-8B family, initialised from Llama-3.2-1B (published settings).

  python train.py --config=configs/llama3_8b.py:/models/Llama-3.2-1B-Instruct \
      --config.data.source=/data/chat.jsonl --workdir=/tmp/pard_llama3

The config argument (or --config.model.init) is a local HF directory; the PARD corpus is not
published, so data.source is yours to give (chat-formatted conversations).
"""

from pard_jax.train import defaults


def get_config(init: str = ""):
  config = defaults.default_config()
  config.model.init = init
  config.model.dtype = "bfloat16"
  config.data.length = 512
  config.drafter.num_draft_tokens = 8
  config.drafter.mask_token_ids = (128020,)  # <|reserved_special_token_12|>: never produced by text
  config.drafter.r = 0.7
  config.drafter.r_min = 0.2
  config.train.learning_rate = 1e-5
  config.train.schedule = "constant"
  config.train.num_epochs = 4
  config.train.batch_size = 16
  return config
