r"""The shipped PARD-1 cut (`configs/smollm2_drafter.py`: four of the target's layers, tokens
only) given the target's features and trained on: PARD-2's own recipe shape, a PARD drafter of
the family with the target's hidden states added to its input embeddings.

  python train.py --config=configs/smollm2_feature_cut.py --workdir=/tmp/smollm2_feature_cut

Why: every feature drafter so far had a 1-layer body (or one grown to 2), whose mask slots
learnt little (training accuracy 0.12-0.15 at depths 1-3), while the cut's four layers reach
0.23 at depth 1 from tokens alone. This run asks whether four trained layers plus the features
get the later drafts right. The features enter through a projection that starts at zero, so
the run starts from the cut's own drafts: a random projection would swamp the cut's trained
input. Data: the target's 4000 self-distilled answers, of which the cut read only the
first 1217, so most rows are new to it; cross-entropy only (the answers are the target's own
greedy text), the restricted head, K = 4. 600 steps of 8 rows (about one epoch);
`train.num_steps` may grow on resume.

Measured (`benchmarks/results/smollm2_feature_cpu/README.md`): τ 1.31 / 1.28 / 1.35 against the
cut's 1.21 / 1.17 / 1.24 and the 1-layer KL drafter's 1.26 / 1.31 / 1.35 in the same run (52
min, 5.2 s a step), for 1.9x the KL drafter's drafter ms, so the KL drafter stays the shipped
one.
"""

from configs import smollm2_feature


def get_config():
  config = smollm2_feature.on_own_answers("drafters/smollm2_135m_pard")
  config.train.num_steps = 600
  return config
