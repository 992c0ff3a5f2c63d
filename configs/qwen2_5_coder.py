r"""PARD drafter for Qwen2.5-Coder-1.5B-Instruct, adapted from Qwen2.5-Coder-0.5B-Instruct on a
2-core CPU: low-rank adapters plus the mask row (`train.trainable="lora"`), COD at K = 4 over
the 0.5B's own greedy answers to 512 ShareGPT prompts (`configs/distill_qwen_coder.py`; one
epoch is 112 steps), float32. The exported `workdir/delta` (the adapters' factors over the
installed 0.5B GGUF) is what `configs/decode.py` decodes with.

  python train.py --config=configs/qwen2_5_coder.py --workdir=/tmp/pard_qwen_coder

Resumes from its latest checkpoint when rerun on the same workdir (a checkpoint every 10 steps).
PARD's published Qwen recipe trains everything at K = 8 for 4 epochs (`configs/qwen2_5.py`);
this one fits 24 GB and a few CPU-hours: the base stays frozen (no optimizer moments for it),
K = 4 (the main job's), rows of 256 tokens and the head restricted to the data's 32768 most
frequent tokens (cheaper steps and drafts, still exact).
"""

from configs import DATA
from pard_jax.checkpoints import assets
from pard_jax.train import defaults


def get_config():
  config = defaults.default_config()
  config.model.init = assets.QWEN_CODER_DRAFTER
  config.model.dtype = "float32"  # bfloat16 brings nothing on CPUs
  config.model.draft_vocab_size = 32768
  # The drafter's own answers keep its next-token choices (which the 1.5B mostly accepts) as
  # the depth-0 labels; `"sharegpt"` (the conversations themselves) trails on code and math.
  config.data.source = str(DATA / "distill/qwen_coder_0_5b_sharegpt.jsonl")
  config.data.length = 256
  config.drafter.num_draft_tokens = 4
  # The first id past Qwen2.5's added tokens: a padding row of the embedding (PARD's choice).
  config.drafter.mask_token_ids = (151665,)
  config.train.trainable = "lora"
  config.train.lora_rank = 32
  config.train.batch_size = 4
  config.train.grad_accum_steps = 4  # one row a forward: peak RSS
  config.train.num_steps = 112  # one epoch of the answers: the shipped drafter
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 10
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  config.train.max_checkpoints = 2
  # Greedy acceptance on the target's own answers to 16 ShareGPT prompts (`distill.py`, 128
  # tokens each): decoding's acceptance at every answer position, logged as the run goes.
  config.heldout.source = str(DATA / "distill/qwen_coder_1_5b_heldout.jsonl")
  config.heldout.max_rows = 8
  config.heldout.every = 20
  return config
