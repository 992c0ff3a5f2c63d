"""Self-distillation data: the target answers training prompts with our decoding loop.

  python distill.py --config=configs/distill.py [--config.max_prompts=2000]

Writes ShareGPT-style .jsonl for train.py; rerunning completes an interrupted run.
"""

import pathlib

from absl import app, logging
from ml_collections import config_flags

from pard_jax import distill

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parent / "configs/distill.py"),
    "distillation settings")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  print(f"wrote {distill.run(_CONFIG.value)}")


if __name__ == "__main__":
  app.run(main)
