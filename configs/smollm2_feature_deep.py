r"""The KL-trained feature drafter (`configs/smollm2_feature_kl.py`) grown from one layer to two
and trained on, with the same loss and data.

  python train.py --config=configs/smollm2_feature_deep.py --workdir=/tmp/smollm2_feature_deep

Why: with one layer, a mask slot sees only the inputs of the slots before it (embeddings,
features, stand-ins), never what the layer made of the last real slot, so depths 1-3 learnt
little while depth 0 kept improving. A second layer lets them read it. The new layer is a copy of the trained one with its output projections at zero
(`model.identity_layers`), so the run starts from the shipped drafter's drafts, not below
them. `data.seed=1` packs the rows in another order, so the run reads rows the KL run did
not. 600 steps of 8 rows; `train.num_steps` may grow on resume. What it measured, and why
the 1-layer drafter stays the shipped one: `benchmarks/results/smollm2_feature_cpu/README.md`.
"""

from configs import ROOT, smollm2_feature_kl


def get_config():
  config = smollm2_feature_kl.get_config()
  config.model.init = str(ROOT / "drafters/smollm2_135m_feature_kl")
  config.model.keep_layers = (0, 0)
  config.model.identity_layers = (1,)
  config.data.seed = 1
  config.train.num_steps = 600
  return config
