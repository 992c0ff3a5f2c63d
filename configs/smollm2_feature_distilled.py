r"""The KL-trained feature drafter (`configs/smollm2_feature_kl.py`) trained on with the same loss,
on the target's own answers only: 4000 ShareGPT prompts answered by the target.

  python distill.py --config=configs/distill.py --config.max_prompts=4000 \
      --config.output=data/distill/smollm2_sharegpt_4k.jsonl                     # the data
  python train.py --config=configs/smollm2_feature_distilled.py \
      --workdir=/tmp/smollm2_feature_distilled

Why: decoding is judged on the target's greedy text, while 99% of the KL run's rows were
ShareGPT answers written by other models. The data's first 1217 lines are
`data/distill/smollm2_sharegpt.jsonl`, the answers the earlier drafters trained on; the other
2800 are new. Everything else is the KL run's: 0.1 CE + 1.0 KL to the
online target, one layer, the restricted head, K = 4. 320 steps of 8 rows of 256 tokens
(about 0.8 epoch); `train.num_steps` may grow on resume. What it measured, and why the KL
drafter stays the shipped one: `benchmarks/results/smollm2_feature_cpu/README.md`.
"""

from configs import smollm2_feature


def get_config():
  # The KL run's loss (configs/smollm2_feature_kl.py) on the target's own answers.
  config = smollm2_feature.on_own_answers("drafters/smollm2_135m_feature_kl")
  config.loss.ce_weight = 0.1
  config.loss.kl_weight = 1.0
  config.train.num_steps = 320
  return config
