r"""Trains a PARD or ParallelSpec parallel drafter from an ordinary AR model.

  python train.py --config=configs/llama3_8b.py:/models/Llama-3.2-1B-Instruct \
      --config.data.source=/data/chat.jsonl --workdir=/tmp/pard_llama

`--workdir` receives checkpoints/, run_spec.json, metrics.jsonl and the exported drafter hf/;
rerunning the same command resumes from the latest checkpoint (other settings than the run's
are refused, but for its length, logging, checkpointing and step size).
"""

from absl import flags
from ml_collections import config_flags

from pard_jax import cli
from pard_jax.train import checkpointing, loop

cli.refuse_unknown_settings()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and the exported drafter.")
flags.mark_flags_as_required(["config", "workdir"])


def main():
  checkpointing.quiet_orbax_logs()
  loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main, interrupted=("the checkpoints written so far are kept; "
                            "rerun the same command to resume from the latest"))
