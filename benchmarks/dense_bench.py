"""Why a K+1-token target forward costs more than a 1-token one on this device.

Measures, on SmolLM2-135M-Instruct (float32):
  1. one dense op by its number of rows (1, 2, 5, 9) for the model's three weight shapes, over
     30 distinct weights so that none stays cache-resident, as stored ([in, out]) and
     transposed ([out, in]);
  2. the cached forward by its number of tokens: wall and CPU time (how many cores it keeps busy);
  3. the same forward with fused projections (one QKV and one gate+up matmul per layer);
  4. the forward under XLA CPU options, each in a fresh process (XLA_FLAGS is read at start-up);
  5. where it runs, the packed-dense kernel (`pard_jax.packed_dense`): the dense op on its
     prepacked weights and the forward of the packed model, beside parts 1 and 2.

  python benchmarks/dense_bench.py [--repeats=15] [--xla_options=false]

Writes benchmarks/results/decode_<device>_dense.{json,md}.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.timing import best_seconds  # noqa: E402
from pard_jax import checkpoints, packed_dense  # noqa: E402
from pard_jax import model as model_lib  # noqa: E402
from pard_jax.eval.report import device_name, device_slug, write_results  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 15, "timed repeats (best is kept)")
_FORWARD_ONLY = flags.DEFINE_bool("forward_only", False, "print part 2 as JSON and exit (part 4)")
_XLA_OPTIONS = flags.DEFINE_bool("xla_options", True, "run part 4 (a process per option)")
_OUT = flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "results"), "output dir")

ROWS = (1, 2, 5, 9)
WIDTHS = (1, 2, 5, 9)
XLA_OPTIONS = ("--xla_cpu_use_xnnpack=true "
               "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
               "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
               "--xla_cpu_use_onednn=true "
               "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
               "--xla_cpu_multi_thread_eigen=false", "--xla_cpu_enable_fast_math=true")


def best_ms(fn, *args) -> float:
  return 1000 * best_seconds(fn, *args, repeats=_REPEATS.value)


def dense_us(shape: tuple[int, int], layers: int = 30) -> dict[str, dict[int, float]]:
  rng = np.random.default_rng(0)
  weights = [jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(layers)]
  transposed = [w.T.copy() for w in weights]
  stored = jax.jit(lambda x, ws: [x @ w for w in ws])
  flipped = jax.jit(lambda x, ws: [jnp.einsum("mi,oi->mo", x, w) for w in ws])
  out = {"[in, out]": {}, "[out, in]": {}}
  packed = None
  if not packed_dense.unavailable_reason("float32"):
    packed = [packed_dense.pack_weight(w) for w in weights]
    kernel = jax.jit(lambda x, ps: [packed_dense.matmul(x, p, shape[1]) for p in ps])
    out["packed kernel"] = {}
  for m in ROWS:
    x = jnp.asarray(rng.standard_normal((m, shape[0]), np.float32))
    out["[in, out]"][m] = 1000 * best_ms(stored, x, weights) / layers
    out["[out, in]"][m] = 1000 * best_ms(flipped, x, transposed) / layers
    if packed is not None:
      out["packed kernel"][m] = 1000 * best_ms(kernel, x, packed) / layers
  return out


def forward_ms(model) -> dict[int, dict[str, float]]:
  """Wall and CPU ms of a cached forward over n tokens at position 100 of a 512-slot cache."""
  graphdef, state = nnx.split(model)
  step = jax.jit(lambda st, t, p, c: nnx.merge(graphdef, st)(t, p, c)[0])
  out = {}
  for width in WIDTHS:
    cache = model_lib.init_cache(model.config, 1, 512)
    tokens, positions = jnp.ones((1, width), jnp.int32), 100 + jnp.arange(width)[None]
    wall = best_ms(step, state, tokens, positions, cache)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(_REPEATS.value):
      jax.block_until_ready(step(state, tokens, positions, cache))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    out[width] = dict(wall=wall, cpu=1000 * cpu / _REPEATS.value)
  return out


def fused(model):
  """`model` with one QKV and one gate+up kernel per layer (what load-time fusion would do)."""

  def attention(self, x, positions, inv_freq, kv_cache, mask):
    b, s, _ = x.shape
    hq, hk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    qkv = x @ self.qkv[...]
    q = qkv[..., :hq].reshape(b, s, self.num_heads, self.head_dim)
    k = qkv[..., hq:hq + hk].reshape(b, s, self.num_kv_heads, self.head_dim)
    v = qkv[..., hq + hk:].reshape(b, s, self.num_kv_heads, self.head_dim)
    q = model_lib.apply_rope(q, positions, inv_freq)
    k = model_lib.apply_rope(k, positions, inv_freq)
    k_cache = model_lib._write_cache(kv_cache[0], k, positions)  # pylint: disable=protected-access
    v_cache = model_lib._write_cache(kv_cache[1], v, positions)  # pylint: disable=protected-access
    groups = self.num_heads // self.num_kv_heads
    scores = jnp.einsum("bsgeh,btgh->bgest",
                        q.reshape(b, s, self.num_kv_heads, groups, self.head_dim),
                        k_cache) * self.head_dim ** -0.5
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bgest,btgh->bsgeh", jax.nn.softmax(scores, axis=-1), v_cache)
    return self.o_proj(out.reshape(b, s, hq)), (k_cache, v_cache)

  def mlp(self, x):
    gate_up = x @ self.gate_up[...]
    half = gate_up.shape[-1] // 2
    return self.down_proj(jax.nn.silu(gate_up[..., :half]) * gate_up[..., half:])

  for layer in model.layers:
    a, m = layer.self_attn, layer.mlp
    a.qkv = nnx.Param(jnp.concatenate([a.q_proj.kernel[...], a.k_proj.kernel[...],
                                       a.v_proj.kernel[...]], axis=1))
    m.gate_up = nnx.Param(jnp.concatenate([m.gate_proj.kernel[...], m.up_proj.kernel[...]],
                                          axis=1))
    del a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj
  model_lib.Attention.__call__ = attention
  model_lib.MLP.__call__ = mlp
  return model


def main(argv):
  del argv
  target = checkpoints.load_model(checkpoints.smollm2_gguf_path(), dtype="float32")
  if _FORWARD_ONLY.value:
    print(json.dumps(forward_ms(target)))
    return
  config = target.config
  d, f = config.hidden_size, config.intermediate_size
  results = dict(device=device_name(), command=" ".join(["python"] + sys.argv),
                 dense_us={f"{i}x{o}": dense_us((i, o)) for i, o in ((d, f), (f, d), (d, d))},
                 forward_ms=forward_ms(target))
  options = {}
  for option in XLA_OPTIONS if _XLA_OPTIONS.value else ():
    env = dict(os.environ, XLA_FLAGS=option)
    run = subprocess.run([sys.executable, __file__, "--forward_only",
                          f"--repeats={_REPEATS.value}"], env=env, capture_output=True,
                         text=True, check=True)
    options[option] = {int(w): t for w, t in json.loads(run.stdout.splitlines()[-1]).items()}
  results["xla_options_forward_ms"] = options
  if not packed_dense.unavailable_reason("float32"):
    results["packed_forward_ms"] = forward_ms(packed_dense.pack(target))
  results["fused_forward_ms"] = forward_ms(fused(target))

  write_results(_OUT.value, f"decode_{device_slug(results['device'])}_dense", results,
                to_markdown(results))


def to_markdown(r: dict) -> str:
  cols = lambda xs: " | ".join(map(str, xs))
  lines = ["# Dense ops and the cached forward by row count: SmolLM2-135M, float32", "",
           f"- device: {r['device']}", f"- command: `{r['command']}`", "",
           "## One dense op (µs; mean over 30 distinct weights, best of repeats)", "",
           f"| weight | layout | {cols(f'{m} rows' for m in ROWS)} |",
           "|---|---|" + "---|" * len(ROWS)]
  for shape, layouts in r["dense_us"].items():
    for name, times in layouts.items():
      lines.append(f"| {shape} | {name} | {cols(f'{t:.0f}' for t in times.values())} |")
  lines += ["", "## Cached forward over n tokens (ms)", "",
            f"| | {cols(f'{w} tokens' for w in WIDTHS)} |", "|---|" + "---|" * len(WIDTHS),
            "| wall | " + cols(f"{t['wall']:.1f}" for t in r["forward_ms"].values()) + " |",
            "| CPU (all threads) | " + cols(f"{t['cpu']:.1f}" for t in r["forward_ms"].values())
            + " |"]
  if "packed_forward_ms" in r:
    lines += ["| packed kernel, wall | "
              + cols(f"{t['wall']:.1f}" for t in r["packed_forward_ms"].values()) + " |",
              "| packed kernel, CPU | "
              + cols(f"{t['cpu']:.1f}" for t in r["packed_forward_ms"].values()) + " |"]
  lines.append("| fused QKV and gate+up, wall | "
               + cols(f"{t['wall']:.1f}" for t in r["fused_forward_ms"].values()) + " |")
  for option, times in r["xla_options_forward_ms"].items():
    lines.append(f"| `XLA_FLAGS={option}`, wall | "
                 + cols(f"{t['wall']:.1f}" for t in times.values()) + " |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
