"""Speculative decoding / evaluation entry point.

  python decode.py --config=configs/decode.py --config.method=pard --config.drafter=DIR
"""

from absl import app
from ml_collections import config_flags

from pard_jax import decode_job

_CONFIG = config_flags.DEFINE_config_file("config", "configs/decode.py", "decoding settings")


def main(argv):
  del argv
  summaries, records = decode_job.run(_CONFIG.value)
  if not _CONFIG.value.output:
    for i, record in enumerate(records):
      print(f"--- prompt {i}: {record['text'] or record['output_ids']}")
  print(decode_job.format_table(summaries))
  if summaries[0].matches_ar is not None:
    print(f"greedy output identical to ar: {summaries[0].matches_ar}")


if __name__ == "__main__":
  app.run(main)
