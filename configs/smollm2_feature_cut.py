r"""The shipped PARD-1 cut (`configs/smollm2_drafter.py`: four of the target's layers, tokens
only) given the target's features and trained on: PARD-2's own recipe shape, a PARD drafter of
the family with the target's hidden states added to its input embeddings.

  python train.py --config=configs/smollm2_feature_cut.py --workdir=/tmp/smollm2_feature_cut

Why: every feature drafter so far had a 1-layer body (or one grown to 2), whose mask slots
learnt little at depths 1-3, while the cut's four layers do better at depth 1 from tokens
alone. This run asks whether four trained layers plus the features
get the later drafts right. The features enter through a projection that starts at zero, so
the run starts from the cut's own drafts: a random projection would swamp the cut's trained
input. Data: the target's 4000 self-distilled answers, of which the cut read only the
first 1217, so most rows are new to it; cross-entropy only (the answers are the target's own
greedy text), the restricted head, K = 4. 600 steps of 8 rows (about one epoch);
`train.num_steps` may grow on resume. What it measured, and why the KL drafter stays the
shipped one: `benchmarks/results/smollm2_feature_cpu/README.md`.
"""

from configs import smollm2_feature


def get_config():
  config = smollm2_feature.on_own_answers("drafters/smollm2_135m_pard")
  config.train.num_steps = 600
  return config
