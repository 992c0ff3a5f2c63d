"""Speculative decoding / evaluation entry point.

  python decode.py --config=configs/decode.py --config.method=pard --config.drafter=DIR
"""

from absl import app, flags
from ml_collections import config_flags

from pard_jax import decode_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/decode.py", "decoding settings")


def main(argv):
  del argv
  summaries = decode_job.run(_CONFIG.value)
  print(decode_job.format_table(summaries))
  if summaries[0].matches_ar is not None:
    print(f"greedy output identical to ar: {summaries[0].matches_ar}")


if __name__ == "__main__":
  flags.mark_flags_as_required([])
  app.run(main)
