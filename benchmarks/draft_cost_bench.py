r"""What one drafting step costs: the drafter's ms per iteration, for each drafter and K.

  python benchmarks/draft_cost_bench.py \
      --drafters=cut=drafters/smollm2_135m_pard,feature=drafters/smollm2_135m_feature

Times `drafting.draft` itself, jitted, as the decoding loop calls it mid-generation: the
catch-up of K+1 committed tokens (the most an iteration can leave) and then the kind's drafting
(PARD / ParallelSpec: one forward over the catch-up and K-1 masks; `sd`: the catch-up forward
and K-1 one-token forwards), with the target's features for a feature drafter, greedy, batch
1, its restricted head when it has one. A target forward is not included: the decode report's
"ms per iteration" is this plus the verify forward plus the loop. Best of `--repeats`; the
first call compiles; a K the drafter cannot draft is "-". Results go to
`benchmarks/results/draft_cost_<device>.{json,md}`.
"""

from __future__ import annotations

import functools
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.drafter_flags import labelled_drafters  # noqa: E402
from benchmarks.timing import best_seconds  # noqa: E402
from pard_jax import checkpoints, drafting, packed_dense, sampling  # noqa: E402
from pard_jax.checkpoints import assets  # noqa: E402
from pard_jax import drafter_kinds as kinds  # noqa: E402
from pard_jax.errors import ConfigError  # noqa: E402
from pard_jax.eval.report import device_slug, environment, write_results  # noqa: E402
from pard_jax.model import init_cache  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_DRAFTERS = flags.DEFINE_list("drafters", ["cut=drafters/smollm2_135m_pard",
                                           "feature=drafters/smollm2_135m_feature"],
                              "LABEL=PATH of each drafter (HF or delta directory)")
_KS = flags.DEFINE_list("num_draft_tokens", ["4", "8"], "K values")
_POSITION = flags.DEFINE_integer("position", 200, "committed tokens before the iteration")
_CACHE = flags.DEFINE_integer("cache_len", 512, "KV cache slots (as the decode job's)")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed calls per measurement")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results"), "results folder")
_TARGET = flags.DEFINE_string("target", "", "also time this target's verify forward over K+1 "
                              "tokens (a checkpoint, or an asset:/package: reference)")
_DENSE = flags.DEFINE_enum("dense_kernel", "xla", ["auto", "xla", "packed"],
                           "dense layers, as decode.py's dense_kernel")
_STEM = flags.DEFINE_string("stem", "", "results file name (default draft_cost_<device>)")


def draft_ms(model, kind, k: int, feature_size: int) -> float:
  """Best-of-repeats ms of one `drafting.draft` call with K+1 tokens to catch up."""
  graphdef, state = nnx.split(model)
  probs_fn = functools.partial(sampling.probs_from_logits, temperature=0.0)
  sample_fn = functools.partial(sampling.sample, greedy=True)

  @jax.jit
  def step(state, cache, tokens_BxT, lengths_B, draft_lengths_B, features_BxTxC, rng):
    drafts = drafting.draft(kind, drafting.DraftInput(
        nnx.merge(graphdef, state), cache, tokens_BxT, lengths_B, draft_lengths_B, probs_fn,
        sample_fn, rng, features_BxTxC), k)
    return drafts.tokens_BxK, drafts.cache

  length = _POSITION.value
  args = (state, init_cache(model.config, 1, _CACHE.value),
          jnp.ones((1, _CACHE.value), jnp.int32), jnp.array([length]),
          jnp.array([length - k - 1]),
          jnp.ones((1, _CACHE.value, feature_size), jnp.float32) if feature_size else None,
          jax.random.key(0))
  return 1000 * best_seconds(step, *args, repeats=_REPEATS.value)


def verify_ms(model, k: int) -> float:
  """Best-of-repeats ms of the target's forward over K+1 tokens at `--position`, cached."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, cache, tokens_1xK1, positions_1xK1):
    logits, cache = nnx.merge(graphdef, state)(tokens_1xK1, positions_1xK1, cache)
    return logits, cache

  positions = _POSITION.value - 1 + jnp.arange(k + 1)[None]
  return 1000 * best_seconds(step, state, init_cache(model.config, 1, _CACHE.value),
                             jnp.ones((1, k + 1), jnp.int32), positions,
                             repeats=_REPEATS.value)


def drafts_at(kind, k: int) -> bool:
  """Whether the drafter drafts K tokens (a ParallelSpec drafter has K-1 distinct masks)."""
  try:
    kind.mask_ids(k)
  except ConfigError:
    return False
  return True


def to_markdown(r) -> str:
  ks = r["num_draft_tokens"]
  lines = ["# Drafter cost per decoding iteration", "", f"- device: {r['device']}",
           f"- date: {r['date']}", f"- command: `{r['command']}`",
           f"- dense layers: {r.get('dense_kernel', 'xla')}",
           f"- batch 1, greedy, {r['position']} committed tokens, cache {r['cache_len']}, "
           f"best of {r['repeats']}; the drafter's forwards only (no target forward)", "",
           "| drafter | kind | forwards per iteration | " + " | ".join(
               f"ms, K = {k}" for k in ks) + " |", "|---|---|---|" + "---|" * len(ks)]
  for row in r["drafters"]:
    lines.append(f"| {row['label']} (`{row['path']}`) | {row['kind']} | {row['forwards']} | "
                 + " | ".join(f"{row['ms'][str(k)]:.1f}" if str(k) in row["ms"] else "-"
                              for k in ks) + " |")
  if r.get("verify_ms"):
    lines += ["", f"The target's verify forward (`{r['target']}`), ms: "
              + ", ".join(f"{int(k) + 1} tokens {v:.1f}" for k, v in r["verify_ms"].items())
              + " (1 token: an `ar` step)."]
  return "\n".join(lines + [""])


def main(argv):
  del argv
  ks = [int(k) for k in _KS.value]
  drafters = labelled_drafters(_DRAFTERS.value, plain_ok=True)
  dense = packed_dense.resolve(packed_dense.DenseKernel.parse(_DENSE.value), "float32")
  rows = []
  for label, path in drafters:
    # A plain AR model drafts as `sd` does: K one-token forwards after the catch-up.
    kind = checkpoints.read_config(path).drafter or kinds.AutoregressiveDrafter()
    model = packed_dense.prepare(checkpoints.load_model(path, dtype="float32"), dense)
    ms = {str(k): draft_ms(model, kind, k, model.config.feature_size) for k in ks
          if drafts_at(kind, k)}
    forwards = "K" if kind.autoregressive else "1"
    rows.append(dict(label=label, path=assets.portable(path), kind=kind.method,
                     forwards=forwards, ms=ms))
    print(f"{label}: " + ", ".join(f"K={k} {v:.1f} ms" for k, v in ms.items()))
  verify = {}
  if _TARGET.value:
    target = packed_dense.prepare(checkpoints.load_model(assets.resolve(_TARGET.value),
                                                         dtype="float32"), dense)
    verify = {str(k): verify_ms(target, k) for k in [0] + ks}
    print("target: " + ", ".join(f"{int(k) + 1} tokens {v:.1f} ms" for k, v in verify.items()))
  env = environment()
  results = dict(device=env["device"], date=env["date"], command=env["command"],
                 position=_POSITION.value, cache_len=_CACHE.value, repeats=_REPEATS.value,
                 dense_kernel=dense.value, num_draft_tokens=ks, drafters=rows,
                 target=_TARGET.value, verify_ms=verify)
  write_results(_OUT.value, _STEM.value or f"draft_cost_{device_slug(results['device'])}",
                results, to_markdown(results))


if __name__ == "__main__":
  app.run(main)
