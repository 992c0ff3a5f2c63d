r"""Held-out acceptance of trained drafters, read off the training layout: no decoding loop.

  python benchmarks/heldout_bench.py \
      --drafters=cut=drafters/smollm2_135m_pard,feature=drafters/smollm2_135m_feature

For every anchor of the held-out rows (the target's own greedy answers, by default 200 ShareGPT
answers none of the shipped drafters trained on), the K drafts a greedy iteration would make
there, from one forward over the full K-depth layout (`pard_jax.train.heldout`, what a run logs
to heldout.jsonl with `heldout.source`): accepted >= i drafts, per-depth accuracy and τ. On the
target's own greedy text this is greedy decoding's acceptance at every position, so it tells
τ without decoding, over many more positions than a decode sweep affords. Results go to
`benchmarks/results/heldout_<device>.{json,md}`.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from benchmarks.drafter_flags import labelled_drafters  # noqa: E402
from pard_jax import checkpoints, sharding  # noqa: E402
from pard_jax.checkpoints import assets  # noqa: E402
from pard_jax import packing  # noqa: E402
from pard_jax import drafter_kinds as kinds  # noqa: E402
from pard_jax.eval.report import device_slug, environment, write_results  # noqa: E402
from pard_jax.train import heldout  # noqa: E402
from pard_jax.train import settings as train_settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
_DRAFTERS = flags.DEFINE_list("drafters", ["cut=drafters/smollm2_135m_pard",
                                           "feature=drafters/smollm2_135m_feature",
                                           "feature_kl=drafters/smollm2_135m_feature_kl"],
                              "LABEL=PATH of each drafter (HF or delta directory)")
_SOURCE = flags.DEFINE_string("source", str(ROOT / "data/distill/smollm2_sharegpt_heldout.jsonl"),
                              "held-out rows, as train.py's data.source")
_MAX_ROWS = flags.DEFINE_integer("max_rows", 48, "packed rows evaluated (the first); 0 = all")
_LENGTH = flags.DEFINE_integer("length", 256, "packed row length")
_KS = flags.DEFINE_list("num_draft_tokens", ["4"], "K values")
_BATCH = flags.DEFINE_integer("batch_size", 4, "rows per forward")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results"), "results folder")


def evaluate(model, kind: kinds.DrafterKind, k: int, rows, target) -> dict:
  graphdef, params = nnx.split(model)
  step_cfg = train_settings.StepConfig(  # K depths; the evaluator makes them the full layout
      counts=(1,) * k, mask_tokens=kind.layout_masks(k),
      feature_layers=kind.feature_layers,
      autoregressive=kind.autoregressive)
  mesh = sharding.make_mesh((-1, 1, 1))
  replicated = NamedSharding(mesh, P())
  teacher = ()
  teacher_graphdef = teacher_sharding = None
  if kind.feature_layers:
    teacher_graphdef, teacher_params = nnx.split(target)
    teacher, teacher_sharding = (teacher_params,), replicated
  evaluator = heldout.Evaluator(rows, graphdef, step_cfg, _LENGTH.value, mesh, replicated,
                                _BATCH.value, teacher_graphdef, teacher_sharding)
  return evaluator(params, *teacher)


def to_markdown(r) -> str:
  k_max = max(r["num_draft_tokens"])
  lines = ["# Held-out acceptance (greedy, read off the full training layout)", "",
           f"- device: {r['device']}", f"- date: {r['date']}", f"- command: `{r['command']}`",
           f"- rows: {r['rows']} packed rows of {r['length']} tokens from `{r['source']}`; "
           f"anchors: every position whose next token is an answer token", "",
           "| drafter | kind | K | anchors | τ | " + " | ".join(
               f"accepted >= {i}" for i in range(1, k_max + 1)) + " | accuracy per depth |",
           "|---|---|---|---|---|" + "---|" * k_max + "---|"]
  for row in r["cells"]:
    accepted = [f"{x:.3f}" for x in row["accepted"]] + ["-"] * (k_max - len(row["accepted"]))
    lines.append(f"| {row['label']} (`{row['path']}`) | {row['kind']} | {row['k']} | "
                 f"{row['anchors']} | {row['tau']:.3f} | " + " | ".join(accepted) + " | "
                 + " / ".join(f"{x:.3f}" for x in row["accuracy"]) + " |")
  return "\n".join(lines + [""])


def main(argv):
  del argv
  ks = [int(k) for k in _KS.value]
  drafters = labelled_drafters(_DRAFTERS.value)
  target_path = checkpoints.smollm2_gguf_path()
  tokenizer = checkpoints.load_tokenizer(target_path)
  rows = heldout.first_rows(packing.load_rows(_SOURCE.value, tokenizer, _LENGTH.value),
                            _MAX_ROWS.value)
  target = checkpoints.load_model(target_path, dtype="float32")
  cells = []
  for label, path in drafters:
    kind = checkpoints.read_config(path).drafter
    model = checkpoints.load_model(path, dtype="float32")
    for k in ks:
      result = evaluate(model, kind, k, rows, target)
      cells.append(dict(label=label, path=path, kind=kind.method, k=k, **result))
      print(f"{label} K={k}: tau {result['tau']:.3f}, accepted >= i "
            + " ".join(f"{x:.3f}" for x in result["accepted"]), flush=True)
  env = environment()
  results = dict(device=env["device"], date=env["date"], command=env["command"],
                 source=assets.portable(_SOURCE.value), rows=rows.num_rows,
                 length=_LENGTH.value, num_draft_tokens=ks, cells=cells)
  write_results(_OUT.value, f"heldout_{device_slug(results['device'])}", results,
                to_markdown(results))


if __name__ == "__main__":
  app.run(main)
