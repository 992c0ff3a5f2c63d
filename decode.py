"""Speculative decoding and evaluation entry point.

  python decode.py --config=configs/decode.py --config.method=ar,sd,pard \
      --config.num_draft_tokens=2,4,8 --config.drafter=DIR --config.prompts=mtbench,gsm8k \
      --config.report_dir=/tmp/eval
"""

import pathlib

from ml_collections import config_flags

from pard_jax import cli
from pard_jax.eval import job, report

_DEFAULT = str(pathlib.Path(__file__).resolve().parent / "configs/decode.py")
cli.refuse_unknown_settings(_DEFAULT)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT,
    "decoding settings")


def main():
  config = _CONFIG.value
  result = job.run(config)
  if not config.output and not config.report_dir:
    for record in result.records:
      if record["method"] == "ar":
        print(f"--- {record['prompt']}: {record.get('text') or record['output_ids']}")
  for prompt_set in dict.fromkeys(c.prompt_set for c in result.cells):
    print(f"\n{prompt_set}")
    print(report.format_table([c for c in result.cells if c.prompt_set == prompt_set]))
  if config.report_dir:
    print(f"\nreport: {config.report_dir}/results.md")


if __name__ == "__main__":
  cli.run(main, interrupted=("finished cells are kept in report_dir and output; "
                            "rerun the same command to finish the rest"))
