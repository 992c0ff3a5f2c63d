r"""Decoding over a mesh of host CPU devices, against one device: bytes per device, collectives
per iteration, wall time, and the peak RSS of loading a checkpoint straight into its shards.

  python benchmarks/mesh_bench.py
  python benchmarks/mesh_bench.py --load_only \
      --target=asset:qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --meshes=1x1x1,1x1x8

Each mesh runs in its own process (`--xla_force_host_platform_device_count`), so its peak RSS
is its own: the model is read tensor by tensor into its shards, and the figure is that process's
`ru_maxrss` after loading. `ar` and `pard` (the shipped SmolLM2 PARD drafter) decode the same
prompts greedily on each mesh; the outputs must equal one device's. Devices here are threads of
one CPU sharing its cores and memory bandwidth: the wall-time ratio measures the cost of the
collectives and partitioning, not what an accelerator mesh gains. Results go to
`benchmarks/results/mesh_<device>.{json,md}`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pard_jax import drafter_kinds as kinds  # noqa: E402  (no jax: device flags come first)

PARD = kinds.PardDrafter.method

_TARGET = flags.DEFINE_string("target", "", "HF dir, .gguf or asset:; \"\" = SmolLM2-135M")
_DRAFTER = flags.DEFINE_string("drafter", "drafters/smollm2_135m_pard", "a PARD drafter")
_MESHES = flags.DEFINE_list("meshes", ["1x1x1", "8x1x1", "2x1x4", "1x1x8"],
                            "data x fsdp x tensor per run")
_NEW = flags.DEFINE_integer("max_new_tokens", 32, "tokens per prompt")
_BATCH = flags.DEFINE_integer("batch", 8, "prompts decoded together")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per method (best kept)")
_LOAD_ONLY = flags.DEFINE_bool("load_only", False, "only load (RSS and bytes per device)")
_ONE = flags.DEFINE_string("one", "", "internal: run this mesh in this process")
_OUT = flags.DEFINE_string("out_dir", str(ROOT / "benchmarks/results"), "output directory")


def run_one(shape: tuple[int, int, int]) -> dict:
  """This process's measurements on `shape` (its device count set by the parent)."""
  import resource  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from pard_jax import checkpoints, hlo, sharding  # pylint: disable=g-import-not-at-top
  from pard_jax.checkpoints import assets  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from pard_jax.decoding import DecodeConfig, SpeculativeDecoder

  mesh = sharding.make_mesh(shape) if jax.device_count() > 1 else None
  path = assets.resolve_setting(_TARGET.value or assets.SMOLLM2_GGUF, "target")

  def load(p):
    kv_heads = checkpoints.read_config(p).model.num_kv_heads
    return checkpoints.load_model(p, mesh=mesh, rules=mesh and sharding.decode_rules(
        kv_heads, mesh))

  target = load(path)
  rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  leaves = jax.tree.leaves(target)
  total = sum(x.nbytes for x in leaves)
  per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
  result = dict(mesh=list(shape), devices=jax.device_count(), load_peak_rss_gb=round(rss_gb, 2),
                target_bytes=total, target_bytes_per_device=per_device)
  if _LOAD_ONLY.value:
    return result
  drafter_path = ROOT / _DRAFTER.value
  drafter = load(drafter_path)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(100, 20000, n).tolist() for n in rng.integers(8, 24, _BATCH.value)]
  for method, model, kind in ((kinds.AR, None, None),
                              (PARD, drafter, checkpoints.read_config(drafter_path).drafter)):
    cfg = DecodeConfig(max_new_tokens=_NEW.value, num_draft_tokens=4,
                       **({"drafter_kind": kind} if kind else {}))
    decoder = SpeculativeDecoder(target, model, cfg, mesh=mesh)
    decoder.generate(prompts, prompt_len=24)  # compiles and warms up
    runs = [decoder.generate(prompts, prompt_len=24) for _ in range(_REPEATS.value)]
    best = min(runs, key=lambda r: r.seconds)
    if mesh is not None:
      counts = hlo.collectives_per_iteration(decoder.lower(len(prompts), 24).compile().as_text())
    else:
      counts = {}
    result[method] = dict(seconds=round(best.seconds, 3), tau=round(best.mean_accept_length, 3),
                          tokens_per_s=round(best.tokens_per_second, 1),
                          collectives_per_iteration=counts, output_ids=best.output_ids)
  return result


def to_markdown(rows: list[dict], env: dict) -> str:
  gb = lambda b: f"{b / 1e9:.3f}"
  lines = [f"# Decoding over a mesh of CPU devices ({env['device']})", "",
           f"- command: `{env['command']}`", f"- date: {env['date']}", "",
           "| mesh (data, fsdp, tensor) | target GB / device | load peak RSS GB | ar s | "
           "pard s | pard τ | all-reduces / iteration (ar, pard) | outputs = 1 device |",
           "|---|---|---|---|---|---|---|---|"]
  base = rows[0]
  for r in rows:
    if kinds.AR not in r:
      lines.append(f"| {tuple(r['mesh'])} | {gb(r['target_bytes_per_device'])} | "
                   f"{r['load_peak_rss_gb']} | - | - | - | - | - |")
      continue
    same = all(r[m]["output_ids"] == base[m]["output_ids"] for m in (kinds.AR, PARD))
    reduces = ", ".join(str(r[m]["collectives_per_iteration"].get("all-reduce", "-"))
                        for m in (kinds.AR, PARD))
    lines.append(f"| {tuple(r['mesh'])} | {gb(r['target_bytes_per_device'])} | "
                 f"{r['load_peak_rss_gb']} | {r[kinds.AR]['seconds']} | {r[PARD]['seconds']} | "
                 f"{r[PARD]['tau']} | {reduces} | {same} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if _ONE.value:
    print("RESULT " + json.dumps(run_one(tuple(int(n) for n in _ONE.value.split("x")))))
    return
  # pylint: disable-next=g-import-not-at-top
  from pard_jax.eval.report import device_slug, environment, write_results
  rows = []
  for mesh in _MESHES.value:
    shape = [int(n) for n in mesh.split("x")]
    devices = shape[0] * shape[1] * shape[2]
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    flags_ = [f"--{name}={flags.FLAGS[name].value}" for name in
              ("target", "drafter", "max_new_tokens", "batch", "repeats", "load_only")]
    done = subprocess.run([sys.executable, __file__, f"--one={mesh}", *flags_], env=env,
                          capture_output=True, text=True, check=False)
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode or not line:
      sys.exit(f"mesh {mesh} failed:\n{done.stderr[-3000:]}")
    rows.append(json.loads(line[0][len("RESULT "):]))
    print(f"mesh {mesh}: {rows[-1].get(kinds.AR, {}).get('seconds', '-')} s ar", flush=True)
  env = environment()
  stem = "mesh_" + ("load_" if _LOAD_ONLY.value else "") + device_slug(env["device"])
  if _TARGET.value:
    stem += "_" + pathlib.Path(_TARGET.value).stem.split(":")[-1].split("-instruct")[0]
  write_results(_OUT.value, stem, dict(environment=env, rows=rows), to_markdown(rows, env))


if __name__ == "__main__":
  app.run(main)
