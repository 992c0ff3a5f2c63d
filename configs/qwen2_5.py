r"""PARD drafter for Qwen2.5 targets, initialised from Qwen2.5-0.5B (published settings).

  python train.py --config=configs/qwen2_5.py:/models/Qwen2.5-0.5B-Instruct \
      --config.data.source=/data/chat.jsonl --workdir=/tmp/pard_qwen

Mask 151665 is the first id past Qwen2.5's added tokens (the embedding matrix is padded to
151936 rows); it collides with Qwen3's added tokens, so pick another id for Qwen3 drafters.
"""

from pard_jax.train import defaults


def get_config(init: str = ""):
  config = defaults.default_config()
  config.model.init = init
  config.model.dtype = "bfloat16"
  config.data.length = 512
  config.drafter.num_draft_tokens = 8
  config.drafter.mask_token_ids = (151665,)
  config.drafter.r = 0.7
  config.drafter.r_min = 0.2
  config.train.learning_rate = 3e-5
  config.train.schedule = "constant"
  config.train.num_epochs = 4
  config.train.batch_size = 16
  return config
