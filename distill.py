"""Self-distillation data: the target answers training prompts with our decoding loop.

  python distill.py --config=configs/distill.py [--config.max_prompts=2000]

Writes ShareGPT-style .jsonl for train.py; rerunning completes an interrupted run (with the
same settings, recorded in <output>.settings.json).
"""

import pathlib

from ml_collections import config_flags

from pard_jax import cli, distillation

_DEFAULT = str(pathlib.Path(__file__).resolve().parent / "configs/distill.py")
cli.refuse_unknown_settings(_DEFAULT)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT,
    "distillation settings")


def main():
  print(f"wrote {distillation.run(_CONFIG.value)}")


if __name__ == "__main__":
  cli.run(main, interrupted=("the answers written so far are kept; "
                            "rerun the same command to add the rest"))
