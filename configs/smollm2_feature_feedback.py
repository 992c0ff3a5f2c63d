r"""The autoregressive feature peer (EAGLE) with EAGLE-3's gradient through its fed-back states,
against the same run without it.

  python train.py --config=configs/smollm2_feature_feedback.py --workdir=/tmp/peer_feedback
  python train.py --config=configs/smollm2_feature_feedback.py --workdir=/tmp/peer_stopped \
      --config.drafter.feedback_gradient=false                                  # the control

Why: the peer trained from scratch (`configs/smollm2_feature.py` with `drafter.method=sd`)
drafts with its own last hidden state in the target's place, but its training-time test stops
the gradient at the fed-back states, so the body never learns to make its state a good feature:
it accepted a second draft in at most 3% of iterations. Both runs start from the shipped
feature drafter (`drafters/smollm2_135m_feature_kl`: the same one-layer body and projection)
and train as the peer on the target's own answers (`data/distill/smollm2_sharegpt_4k.jsonl`),
cross-entropy only, for the same number of steps, so the feedback gradient is the only
difference. `train.num_steps` may grow on resume.

Measured (AMD EPYC, 2 cores; `benchmarks/results/smollm2_feature_cpu/feedback*`): greedy K=4 τ
MT-Bench / HumanEval / GSM8K 1.30 / 1.32 / 1.38 with the gradient, 1.29 / 1.32 / 1.40 without,
a second draft accepted in 3-6% of iterations either way, at 115 against 159 training tokens/s.
"""

from configs import smollm2_feature


def get_config():
  config = smollm2_feature.on_own_answers("drafters/smollm2_135m_feature_kl")
  config.drafter.method = "sd"
  config.drafter.mask_token_ids = ()
  config.drafter.feedback_gradient = True
  config.train.num_steps = 150
  return config
