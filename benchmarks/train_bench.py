r"""Training throughput, memory and accuracy of COD against the full K-depth PARD layout.

  python benchmarks/train_bench.py --seconds=60

Both layouts train the same from-scratch model (same init, data and optimizer) on the bundled
tiny chat corpus packed to L tokens, for the same wall time each. Reported per layout: data
tokens/s (B*L real tokens per step, what an epoch consumes), layout slots per row, compiled
memory (XLA's buffer assignment: arguments + outputs + temporaries, the peak the step needs) and
per-depth next-token accuracy on held-out rows, evaluated with the full layout so both are
scored on the same queries. Accuracy at depth k is the proxy for draft acceptance. Results go to
`benchmarks/results/train_<device>.{json,md}`.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from pard_jax import checkpoints, data, sharding  # noqa: E402
from pard_jax import packing  # noqa: E402
from pard_jax.train import losses
from pard_jax.train import optimizer as optimizer_lib
from pard_jax.train import settings as train_settings
from pard_jax.train import step as step_lib  # noqa: E402
from pard_jax.config import ModelConfig  # noqa: E402
from pard_jax.model import create_model  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_SECONDS = flags.DEFINE_float("seconds", 60.0, "Training wall time per layout.")
_LENGTH = flags.DEFINE_integer("length", 512, "Packed row length L.")
_DEPTHS = flags.DEFINE_integer("depths", 8, "K.")
_BATCH = flags.DEFINE_integer("batch", 2, "Rows per step.")
_LAYERS = flags.DEFINE_integer("layers", 4, "Model layers.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Model width.")
_LR = flags.DEFINE_float("lr", 2e-3, "Learning rate (constant after 10 warmup steps).")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results"), "Results folder.")
MASK_TOKEN = 4  # <|mask|> in data/tiny_tokenizer


def compiled_bytes(compiled) -> int:
  analysis = compiled.memory_analysis()
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def run_layout(name, counts, params, graphdef, rows, eval_rows, mesh, seconds):
  optimizer = optimizer_lib.make_optimizer(train_settings.OptimizerConfig(
      learning_rate=_LR.value, warmup_steps=10, total_steps=10**6))
  step_cfg = train_settings.StepConfig(counts, (MASK_TOKEN,) * (len(counts) - 1))
  state, state_sharding = step_lib.create_sharded_state(params, optimizer, mesh)
  step_fn = step_lib.jit_train_step(graphdef, optimizer, step_cfg, mesh, state_sharding)
  batches = packing.BatchIterator(rows, _BATCH.value, seed=0)
  rng = jax.random.key(0)
  compiled = step_fn.lower(state, batches.batch_at(0), rng).compile()
  state, _ = compiled(state, next(batches), rng)  # warm-up step, not timed
  jax.block_until_ready(state)
  steps, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    state, metrics = compiled(state, next(batches), rng)
    jax.block_until_ready(metrics)
    steps += 1
  elapsed = time.perf_counter() - start
  accuracy = evaluate(state["params"], graphdef, eval_rows, len(counts))
  return dict(
      layout=name, counts=list(counts), slots_per_row=sum(counts),
      slots_over_full=None, steps=steps, seconds=elapsed,
      data_tokens_per_s=steps * _BATCH.value * _LENGTH.value / elapsed,
      slot_tokens_per_s=steps * _BATCH.value * sum(counts) / elapsed,
      step_seconds=elapsed / steps, compiled_memory_bytes=compiled_bytes(compiled),
      final_train_loss=float(metrics["loss"]),
      eval_accuracy_per_depth=accuracy)


def evaluate(params, graphdef, eval_rows: packing.PackedRows, num_draft_tokens: int) -> list[float]:
  """Per-depth accuracy over every valid query of the full layout (deterministic)."""
  full = train_settings.StepConfig(train_settings.cod_counts(_LENGTH.value, num_draft_tokens, 1.0, 1.0),
                             (MASK_TOKEN,) * (num_draft_tokens - 1))
  stats_fn = jax.jit(lambda p, b, k: losses.layout_loss(p, graphdef, b, k, full)[1])
  correct = np.zeros(num_draft_tokens)
  count = np.zeros(num_draft_tokens)
  for i in range(eval_rows.num_rows):
    batch = eval_rows.take(np.array([i]))
    stats = jax.device_get(stats_fn(params, batch, jax.random.split(jax.random.key(0), 1)))
    correct += stats["correct"]
    count += stats["count"]
  return (correct / np.maximum(count, 1)).round(4).tolist()


def main(argv):
  del argv
  tokenizer = checkpoints.load_tokenizer(ROOT / "data" / "tiny_tokenizer")
  docs = data.tokenize_records(data.load_records(str(ROOT / "data" / "tiny_chat.jsonl")),
                               tokenizer, assistant_only_loss=False)
  all_rows = packing.pack(docs, _LENGTH.value, seed=0, pad_id=tokenizer.pad_token_id)
  num_eval = max(2, all_rows.num_rows // 10)
  split = lambda sl: packing.PackedRows(**{k: v[sl] for k, v in vars(all_rows).items()})
  rows, eval_rows = split(slice(num_eval, None)), split(slice(0, num_eval))
  config = ModelConfig(vocab_size=len(tokenizer), hidden_size=_HIDDEN.value,
                       intermediate_size=3 * _HIDDEN.value, num_layers=_LAYERS.value,
                       num_heads=4, num_kv_heads=2, head_dim=_HIDDEN.value // 4,
                       max_position_embeddings=max(2048, _LENGTH.value))
  graphdef, params = nnx.split(create_model(config, seed=0))
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  params = jax.device_put(params, NamedSharding(mesh, P()))
  layouts = {
      "cod (r=0.7, r_min=0.2)": train_settings.cod_counts(_LENGTH.value, _DEPTHS.value, 0.7, 0.2),
      "full (r=r_min=1)": train_settings.cod_counts(_LENGTH.value, _DEPTHS.value, 1.0, 1.0),
  }
  results = [run_layout(name, counts, params, graphdef, rows, eval_rows, mesh, _SECONDS.value)
             for name, counts in layouts.items()]
  for result in results:
    result["slots_over_full"] = result["slots_per_row"] / results[1]["slots_per_row"]
  device = jax.devices()[0].device_kind
  summary = dict(
      device=device, platform=jax.devices()[0].platform, jax=jax.__version__,
      command="python " + " ".join(sys.argv),
      model=dict(layers=_LAYERS.value, hidden=_HIDDEN.value, vocab=config.vocab_size,
                 params=int(sum(x.size for x in jax.tree.leaves(params)))),
      length=_LENGTH.value, depths=_DEPTHS.value, batch=_BATCH.value,
      train_rows=rows.num_rows, eval_rows=eval_rows.num_rows, seconds_per_layout=_SECONDS.value,
      speedup_data_tokens_per_s=results[0]["data_tokens_per_s"] / results[1]["data_tokens_per_s"],
      memory_ratio=results[0]["compiled_memory_bytes"] / results[1]["compiled_memory_bytes"],
      results=results)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  stem = "train_" + "".join(c if c.isalnum() else "_" for c in device.lower())
  (out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
  (out / f"{stem}.md").write_text(markdown(summary))
  print(markdown(summary))


def markdown(s) -> str:
  lines = [
      f"# PARD training: COD vs full layout on `{s['device']}`", "",
      f"Command: `{s['command']}`", "",
      f"Model: {s['model']['layers']} layers, hidden {s['model']['hidden']}, vocab "
      f"{s['model']['vocab']} ({s['model']['params'] / 1e6:.2f}M params, float32), from scratch. "
      f"L={s['length']}, K={s['depths']}, batch {s['batch']} rows; {s['train_rows']} train / "
      f"{s['eval_rows']} held-out packed rows of the bundled tiny chat corpus; "
      f"{s['seconds_per_layout']:.0f} s of training per layout; jax {s['jax']}.", "",
      "| layout | slots/row | vs full | step s | data tok/s | compiled memory MiB | steps | "
      "train loss |", "|---|---|---|---|---|---|---|---|"]
  for r in s["results"]:
    lines.append(
        f"| {r['layout']} | {r['slots_per_row']} | {r['slots_over_full']:.2f} | "
        f"{r['step_seconds']:.3f} | {r['data_tokens_per_s']:.0f} | "
        f"{r['compiled_memory_bytes'] / 2**20:.0f} | {r['steps']} | {r['final_train_loss']:.3f} |")
  lines += ["", f"**COD speed-up (data tokens/s): {s['speedup_data_tokens_per_s']:.2f}x**; "
            f"compiled memory ratio {s['memory_ratio']:.2f}.", "",
            "Held-out next-token accuracy per depth after equal wall time (full layout queries; "
            "depth k = the k-th mask token, the acceptance proxy):", "",
            "| layout | " + " | ".join(f"d{k}" for k in range(s["depths"])) + " |",
            "|---|" + "---|" * s["depths"]]
  for r in s["results"]:
    lines.append(f"| {r['layout']} | " + " | ".join(f"{a:.3f}" for a in
                                                     r["eval_accuracy_per_depth"]) + " |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
