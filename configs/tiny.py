"""A from-scratch PARD run on the bundled tiny chat corpus: about a minute on 2 CPU cores.

  python train.py --config=configs/tiny.py --workdir=/tmp/pard_tiny
"""

from configs import DATA
from pard_jax.train import defaults


def get_config():
  config = defaults.default_config()
  config.model.arch.update(dict(
      vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=32, max_position_embeddings=512, tie_word_embeddings=True))
  config.model.dtype = "float32"  # bfloat16 matmuls are emulated, hence slow, on CPUs
  config.tokenizer = str(DATA / "tiny_tokenizer")
  config.data.source = str(DATA / "tiny_chat.jsonl")
  config.data.length = 128
  config.drafter.num_draft_tokens = 4
  config.drafter.mask_token_ids = (4,)  # <|mask|>, reserved in data/tiny_tokenizer
  config.train.batch_size = 8
  config.train.num_epochs = 6
  config.train.learning_rate = 3e-3
  config.train.schedule = "cosine"
  config.train.warmup_steps = 10
  config.train.weight_decay = 0.01
  config.train.log_every = 10
  config.train.checkpoint_every = 50
  return config
