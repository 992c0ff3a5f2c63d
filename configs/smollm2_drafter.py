r"""A drafter for SmolLM2-135M-Instruct cut from the target itself, trained on its own answers.

  python distill.py --config=configs/distill.py                                   # the data
  python train.py --config=configs/smollm2_drafter.py --workdir=/tmp/smollm2_pard  # PARD (COD)
  python train.py --config=configs/smollm2_drafter.py --workdir=/tmp/smollm2_ar \
      --config.drafter.num_draft_tokens=1                                          # AR drafter

SmolLM2 has no smaller sibling offline, so the drafter keeps the target's first four of 30
layers and shares the embedding, final norm and head, which stay frozen: only the kept layers
and the mask token's row learn (the first layers: the last one does not fit an early
residual stream; the untrained cuts compared are in `benchmarks/README.md`).
`drafter.num_draft_tokens=1` is plain next-token training, the AR drafter for `sd` with the same
init, data and budget (350 steps, 2 epochs). The mask token is 16 (`<empty_output>`), see
configs/smollm2.py.

The head is restricted to the data's 8192 most frequent tokens: verification stays exact, and
a step is cheaper (`benchmarks/README.md`). The run writes `workdir/delta`, the drafter as its
difference from the target (the four layers and the mask row in float16): that is what
`drafters/smollm2_135m_pard` ships.
"""

from configs import DATA, SMOLLM2_GGUF
from pard_jax.train import defaults


def get_config():
  config = defaults.default_config()
  config.model.init = SMOLLM2_GGUF
  config.model.keep_layers = (0, 1, 2, 3)
  config.model.draft_vocab_size = 8192
  config.model.dtype = "float32"  # bfloat16 gains nothing on CPUs; use it on accelerators
  config.data.source = str(DATA / "distill/smollm2_sharegpt.jsonl")
  config.data.length = 256
  # The target's answers to 200 later ShareGPT prompts, kept out of every recipe on this data:
  # greedy acceptance there, in workdir/heldout.jsonl, is τ without a decode run.
  config.heldout.source = str(DATA / "distill/smollm2_sharegpt_heldout.jsonl")
  config.heldout.every = 50
  config.drafter.num_draft_tokens = 4
  config.drafter.mask_token_ids = (16,)
  config.train.trainable = "layers"
  config.train.batch_size = 8
  config.train.num_epochs = 2
  config.train.learning_rate = 3e-4
  config.train.schedule = "cosine"
  config.train.warmup_steps = 20
  config.train.log_every = 10
  config.train.checkpoint_every = 50
  return config
