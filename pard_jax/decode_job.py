"""The decode.py job: load models and prompts, decode in batches, write outputs, summarise."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Sequence

from absl import logging
from tqdm import tqdm

from pard_jax import checkpoints, drafting
from pard_jax.decoding import DecodeConfig, DecodeError, SpeculativeDecoder

PROMPT_BUCKET = 16  # prompt widths round up to this, so a file compiles once


def read_prompts(path: str | pathlib.Path, tokenizer, chat_template: bool,
                 limit: int = 0) -> list[list[int]]:
  """Token ids of each line of a prompts `.jsonl` ("prompt" text or "input_ids")."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"prompts file not found: {path}")
  prompts = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DecodeError(f"{path}:{number}: not valid JSON: {e}") from e
    if "input_ids" in record:
      ids = [int(t) for t in record["input_ids"]]
    elif "prompt" in record:
      if tokenizer is None:
        raise DecodeError(f"{path}:{number}: text prompts need a tokenizer next to the target")
      if chat_template:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}],
                                            add_generation_prompt=True, return_dict=False)
      else:
        ids = tokenizer.encode(record["prompt"])
    else:
      raise DecodeError(f"{path}:{number}: a line needs \"prompt\" or \"input_ids\"")
    if not ids:
      raise DecodeError(f"{path}:{number}: empty prompt")
    prompts.append(list(ids))
    if limit and len(prompts) == limit:
      break
  if not prompts:
    raise DecodeError(f"{path}: no prompts")
  return prompts


def _load_tokenizer(path):
  try:
    return checkpoints.load_tokenizer(path)
  except (OSError, ValueError) as e:
    logging.warning("no tokenizer at %s (%s): outputs carry ids only", path, e)
    return None


def stop_ids(model_path, hf_config: dict[str, Any], tokenizer) -> tuple[int, ...]:
  """EOS ids from config.json, generation_config.json and the tokenizer."""
  ids = set()
  sources = [hf_config.get("eos_token_id")]
  generation_config = pathlib.Path(model_path) / "generation_config.json"
  if generation_config.exists():
    sources.append(json.loads(generation_config.read_text()).get("eos_token_id"))
  if tokenizer is not None:
    sources.append(tokenizer.eos_token_id)
  for source in sources:
    if source is not None:
      ids.update(source if isinstance(source, list) else [source])
  return tuple(sorted(int(i) for i in ids))


def shared_vocab_size(target_hf: dict[str, Any], drafter_hf: dict[str, Any], target_tokenizer,
                      drafter_path) -> int:
  """0 when the embedding tables match; else the tokenizer size, if the tokenizers agree."""
  if target_hf["vocab_size"] == drafter_hf["vocab_size"]:
    return 0
  drafter_tokenizer = _load_tokenizer(drafter_path)
  if (target_tokenizer is None or drafter_tokenizer is None
      or target_tokenizer.get_vocab() != drafter_tokenizer.get_vocab()):
    raise DecodeError(
        f"target and drafter vocabularies differ (target {target_hf['vocab_size']} rows, "
        f"drafter {drafter_hf['vocab_size']}) and their tokenizers are missing or not the same: "
        "a drafter must share the target's tokenizer")
  return len(target_tokenizer)


def run_batches(decoder: SpeculativeDecoder, prompts: Sequence[Sequence[int]],
                batch_size: int, seed: int, cache_len: int = 0, desc: str = "") -> list[dict]:
  """Decodes prompts in input order; one compilation serves every batch."""
  prompt_len = PROMPT_BUCKET * math.ceil(max(map(len, prompts)) / PROMPT_BUCKET)
  decoder.check_fits(prompt_len, cache_len or None)
  rows = []
  with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
    for start in range(0, len(prompts), batch_size):
      batch = list(prompts[start:start + batch_size])
      # A short last batch is padded with copies so its shape matches the compiled one.
      padded = batch + [batch[0]] * (batch_size - len(batch))
      result = decoder.generate(padded, seed=seed + start, prompt_len=prompt_len,
                                cache_len=cache_len or None)
      for i in range(len(batch)):
        rows.append(dict(output_ids=result.output_ids[i],
                         accept_lengths=result.accept_lengths[i],
                         num_iterations=result.num_iterations[i],
                         num_drafted=result.num_drafted[i],
                         seconds=result.seconds / len(batch),
                         batch_seconds=result.seconds))
      bar.update(len(batch))
  return rows


@dataclasses.dataclass
class Summary:
  method: str
  num_draft_tokens: int
  num_prompts: int
  num_tokens: int
  seconds: float
  tau: float
  speedup_vs_ar: float | None = None
  matches_ar: bool | None = None

  @property
  def tokens_per_second(self) -> float:
    return self.num_tokens / self.seconds if self.seconds else float("nan")


def summarise(method: str, k: int, rows: list[dict]) -> Summary:
  tokens = sum(len(r["output_ids"]) for r in rows)
  iterations = sum(r["num_iterations"] for r in rows)
  return Summary(method=method, num_draft_tokens=0 if method == "ar" else k,
                 num_prompts=len(rows), num_tokens=tokens,
                 seconds=sum(r["seconds"] for r in rows), tau=tokens / max(iterations, 1))


def format_table(summaries: Sequence[Summary]) -> str:
  header = f"{'method':<13}{'K':>3}{'prompts':>9}{'tokens':>8}{'tau':>7}{'tok/s':>10}{'speedup':>9}"
  lines = [header, "-" * len(header)]
  for s in summaries:
    speedup = f"{s.speedup_vs_ar:.2f}x" if s.speedup_vs_ar is not None else "-"
    lines.append(f"{s.method:<13}{s.num_draft_tokens:>3}{s.num_prompts:>9}{s.num_tokens:>8}"
                 f"{s.tau:>7.2f}{s.tokens_per_second:>10.1f}{speedup:>9}")
  return "\n".join(lines)


def run(config) -> tuple[list[Summary], list[dict[str, Any]]]:
  """Runs the job described by a `configs/decode.py` config.

  Returns the summaries (the method's first, then `ar` with `compare_ar`) and one output record
  per prompt, in input order, as written to `config.output`.
  """
  if config.batch_size < 1:
    raise DecodeError(f"batch_size must be >= 1, got {config.batch_size}")
  if config.dtype not in ("float32", "bfloat16"):
    raise DecodeError(f"dtype must be float32 or bfloat16, got {config.dtype!r}")
  target_path = pathlib.Path(config.target or checkpoints.smollm2_gguf_path())
  target_hf = checkpoints.load_hf_config(target_path)
  tokenizer = _load_tokenizer(target_path)
  prompts = read_prompts(config.prompts, tokenizer, config.chat_template, config.max_prompts)
  stops = (tuple(config.stop_token_ids) if config.stop_token_ids is not None
           else stop_ids(target_path, target_hf, tokenizer))

  target = checkpoints.load_model(target_path, dtype=config.dtype)
  drafter, mask_ids, shared_vocab = None, (), 0
  if config.method != "ar":
    if not config.drafter:
      raise DecodeError(f"method {config.method!r} needs --config.drafter")
    drafter_hf = checkpoints.load_hf_config(config.drafter)
    mask_ids = drafting.mask_token_ids(config.method, config.num_draft_tokens, drafter_hf,
                                       tuple(config.mask_token_ids))
    shared_vocab = shared_vocab_size(target_hf, drafter_hf, tokenizer, config.drafter)
    drafter = checkpoints.load_model(config.drafter, dtype=config.dtype)

  def decode_config(method):
    return DecodeConfig(method=method, num_draft_tokens=config.num_draft_tokens,
                        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                        top_k=config.top_k, top_p=config.top_p, stop_token_ids=stops,
                        mask_token_ids=mask_ids if method == config.method else (),
                        shared_vocab_size=shared_vocab if method == config.method else 0)

  rows = run_batches(SpeculativeDecoder(target, drafter, decode_config(config.method)),
                     prompts, config.batch_size, config.seed, config.cache_len, config.method)
  summaries = [summarise(config.method, config.num_draft_tokens, rows)]
  if config.compare_ar and config.method != "ar":
    ar_rows = run_batches(SpeculativeDecoder(target, None, decode_config("ar")), prompts,
                          config.batch_size, config.seed, config.cache_len, "ar")
    ar = summarise("ar", 0, ar_rows)
    summaries[0].speedup_vs_ar = summaries[0].tokens_per_second / ar.tokens_per_second
    if config.temperature == 0:
      summaries[0].matches_ar = [r["output_ids"] for r in rows] == [
          r["output_ids"] for r in ar_rows]
    summaries.append(ar)

  records = [{"output_ids": row["output_ids"],
              "text": tokenizer.decode(row["output_ids"]) if tokenizer is not None else None,
              "accept_lengths": row["accept_lengths"], "num_iterations": row["num_iterations"],
              "num_drafted": row["num_drafted"], "seconds": row["seconds"]} for row in rows]
  if config.output:
    output = pathlib.Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(record) + "\n" for record in records))
  return summaries, records
