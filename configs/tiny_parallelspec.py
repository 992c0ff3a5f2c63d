"""configs/tiny.py as a ParallelSpec drafter: K-1 = 3 distinct trainable mask tokens, appended
as embedding rows 512-514 past the tokenizer's vocabulary.

  python train.py --config=configs/tiny_parallelspec.py --workdir=/tmp/ps_tiny
  python decode.py --config.target=/tmp/ps_tiny/hf --config.drafter=/tmp/ps_tiny/hf \
      --config.method=parallelspec --config.prompts=data/prompts/chat.jsonl
"""

from configs import tiny


def get_config():
  config = tiny.get_config()
  config.drafter.method = "parallelspec"
  config.drafter.mask_token_ids = ()  # empty: new rows past the vocabulary, one per depth
  return config
