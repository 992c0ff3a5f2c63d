r"""What an offline feature cache would save a feature drafter's training, on this machine.

  python benchmarks/feature_cache_bench.py --config=configs/smollm2_feature.py --repeats=5

On batches of the recipe's own packed rows it times the online train step (the frozen target
runs inside it) and the target's forward alone (`step.teacher_outputs`, the part a cache of its
features would replace by a read). A cached step costs about the difference, but the cache must
first be written by one target pass over every row, and it holds rows x L x C values: over E
epochs, online costs E x N steps and cached N target passes + E x N (step - target). Results
go to `benchmarks/results/feature_cache_<device>.{json,md}`.
"""

from __future__ import annotations

import functools
import pathlib
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from pard_jax import checkpoints  # noqa: E402
from pard_jax import packing  # noqa: E402
from pard_jax import sharding as sharding_lib  # noqa: E402
from pard_jax.eval.report import device_slug, environment, write_results  # noqa: E402
from pard_jax.train import loop  # noqa: E402
from pard_jax.train import losses
from pard_jax.train import optimizer as optimizer_lib
from pard_jax.train import step as step_lib  # noqa: E402
from pard_jax.train.spec import TrainSpec  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs/smollm2_feature.py"),
                                          "a feature drafter's training config")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed batches per measurement (after one warm-up)")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results"), "results folder")
CACHE_BYTES_PER_VALUE = 2  # features stored in 16 bits


def seconds(fn, batches) -> list[float]:
  times = []
  for batch in batches:
    start = time.perf_counter()
    jax.block_until_ready(fn(batch))
    times.append(time.perf_counter() - start)
  return times


def to_markdown(r) -> str:
  return "\n".join([
      "# Online target vs an offline feature cache: one train step", "",
      f"- device: {r['device']}", f"- date: {r['date']}", f"- command: `{r['command']}`",
      f"- recipe: batch {r['batch_size']} x L {r['length']}, K {r['num_draft_tokens']}, "
      f"features of target layers {r['feature_layers']} ({r['feature_size']} values per token), "
      f"{r['num_rows']} packed rows, {r['num_epochs']} epochs of {r['steps_per_epoch']} steps",
      "", "| | seconds (median of " + str(r["repeats"]) + ") |", "|---|---|",
      f"| online train step (target inside) | {r['online_step_s']:.2f} |",
      f"| the target's forward alone | {r['target_forward_s']:.2f} |",
      f"| a cached step (the difference) | {r['cached_step_s']:.2f} |", "",
      f"The target's forward is {r['target_share']:.0%} of an online step. Over the run, online "
      f"costs {r['online_run_min']:.0f} min and a cache {r['cached_run_min']:.0f} min (one "
      f"target pass to write it included) and {r['cache_gb']:.1f} GB of disk.", ""])


def main(argv):
  del argv
  spec = TrainSpec.from_config(_CONFIG.value)
  if not spec.drafter.feature_layers:
    raise app.UsageError("--config: not a feature drafter (drafter.feature_layers is empty)")
  mesh = sharding_lib.make_mesh(spec.mesh_shape)
  rows = loop.load_rows(spec, checkpoints.load_tokenizer(spec.tokenizer))
  steps = spec.num_steps(rows.num_rows)
  setup = loop.prepare(spec, mesh, rows)
  optimizer = optimizer_lib.make_optimizer(spec.optimizer(steps), spec.train.trainable, setup.masks)
  state, state_sharding = step_lib.create_sharded_state(setup.params, optimizer, mesh)
  teacher_sharding = jax.tree.map(lambda x: x.sharding, setup.teacher_params)
  step_fn = step_lib.jit_train_step(setup.graphdef, optimizer, setup.step_cfg, mesh,
                                    state_sharding, spec.train.grad_accum_steps,
                                    setup.teacher_graphdef, teacher_sharding)
  target_fn = jax.jit(functools.partial(losses.teacher_outputs,
                                        teacher_graphdef=setup.teacher_graphdef,
                                        step_cfg=setup.step_cfg))
  iterator = packing.BatchIterator(rows, spec.train.batch_size, spec.data.seed)
  batches = [next(iterator) for _ in range(_REPEATS.value + 1)]
  rng = jax.random.key(0)

  def online(batch):
    nonlocal state
    state, metrics = step_fn(state, batch, rng, setup.teacher_params)
    return metrics
  online_s = seconds(online, batches)[1:]  # the first compiles
  target_s = seconds(lambda b: target_fn(setup.teacher_params, batch=b), batches)[1:]

  step_s, forward_s = statistics.median(online_s), statistics.median(target_s)
  per_epoch = max(rows.num_rows // spec.train.batch_size, 1)
  epochs = steps / per_epoch
  env = environment()
  results = dict(
      device=env["device"], date=env["date"], command=env["command"], repeats=_REPEATS.value,
      batch_size=spec.train.batch_size, length=spec.data.length,
      num_draft_tokens=spec.drafter.num_draft_tokens,
      feature_layers=list(spec.drafter.feature_layers),
      feature_size=len(spec.drafter.feature_layers) * checkpoints.read_config(
          spec.loss.teacher).model.hidden_size,
      num_rows=rows.num_rows, steps_per_epoch=per_epoch, num_epochs=round(epochs, 2),
      online_steps_s=online_s, target_forwards_s=target_s, online_step_s=step_s,
      target_forward_s=forward_s, cached_step_s=step_s - forward_s,
      target_share=forward_s / step_s, online_run_min=steps * step_s / 60,
      cached_run_min=(per_epoch * forward_s + steps * (step_s - forward_s)) / 60)
  results["cache_gb"] = (rows.num_rows * spec.data.length * results["feature_size"]
                         * CACHE_BYTES_PER_VALUE / 1e9)
  write_results(_OUT.value, f"feature_cache_{device_slug(results['device'])}", results,
                to_markdown(results))


if __name__ == "__main__":
  app.run(main)
