r"""A target-feature drafter for SmolLM2-135M-Instruct (PARD-2 style), trained with the target
online, on the same distilled answers as the token-only cut (`configs/smollm2_drafter.py`).

  python distill.py --config=configs/distill.py                                    # the data
  python train.py --config=configs/smollm2_feature.py --workdir=/tmp/smollm2_feature
  python train.py --config=configs/smollm2_feature.py --workdir=/tmp/smollm2_feature_ps \
      --config.drafter.method=parallelspec --config.drafter.mask_token_ids='()'  # K-1 masks
  python train.py --config=configs/smollm2_feature.py --workdir=/tmp/smollm2_feature_sd \
      --config.drafter.method=sd --config.drafter.mask_token_ids='()'            # AR peer
  python train.py --config=configs/smollm2_feature.py --workdir=/tmp/smollm2_feature_k8 \
      --config.drafter.num_draft_tokens=8                                         # K = 8

The drafter keeps one of the target's 30 layers (layer 0) and shares its embedding, final norm
and head, frozen. It reads the target's residual stream after layers 6, 14 and 22 and its last
layer (`drafter.feature_layers`), normalised per layer and projected, from zero, onto its token
embeddings; mask slots get a learned stand-in. Each train step runs the frozen target over the
packed rows for those features. One row in ten trains without features, so the same drafter
also drafts from tokens alone (decode it with the PARD-1 kind). Cross-entropy only: the answers
are the target's own greedy outputs, and the teacher's 49k-way head would make each step
dearer (`loss.kl_weight`: PARD-2 uses ce 0.1, kl 1.0).

`drafter.method=parallelspec` gives each depth its own new mask row instead of one shared id.
`drafter.method=sd` trains the autoregressive peer on the same data and budget: the same body
drafting one token per forward, each drafted token reading the drafter's own last hidden state
in the target's place (EAGLE; trained with K - 1 extra forward passes over the layout). The
target runs online; what an offline cache of its features would save is measured by
`benchmarks/feature_cache_bench.py`; no cache is built yet.
"""

from configs import DATA, ROOT, SMOLLM2_GGUF, smollm2_drafter


def get_config():
  # The token-only cut's recipe (init, data, restricted head, K, mask id, frozen shared tensors,
  # batch, schedule); what differs is below.
  config = smollm2_drafter.get_config()
  config.model.keep_layers = (0,)
  config.drafter.feature_layers = (6, 14, 22, -1)
  config.drafter.feature_dropout = 0.1
  config.train.num_epochs = 3
  config.train.learning_rate = 5e-4
  config.train.checkpoint_every = 25
  return config


def on_own_answers(drafter: str):
  """This recipe, continuing a shipped drafter (`drafters/...`, all its layers) on the target's
  4000 self-distilled answers, with the target online for its features (and as the teacher
  where a recipe sets `loss.kl_weight`)."""
  config = get_config()
  config.model.init = str(ROOT / drafter)
  config.model.keep_layers = ()
  config.loss.teacher = SMOLLM2_GGUF
  config.data.source = str(DATA / "distill/smollm2_sharegpt_4k.jsonl")
  config.heldout.source = ""  # the 4k answers hold the held-out ones
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 10
  return config
