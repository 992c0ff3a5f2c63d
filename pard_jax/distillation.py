"""Self-distillation data: the target answers training prompts through our own decoding loop.

The settings are `configs/distill.py`'s fields.

The output is ShareGPT-style `.jsonl` that train.py reads as is: one line per prompt,
`{"id", "conversations": [{"from": "human", ...}, {"from": "gpt", ...}], "finished"}` where
`finished` says the answer ended at a stop token rather than at `max_new_tokens`. Lines are
appended batch by batch; a rerun skips the ids already written (a torn last line from a kill is
dropped first), so an interrupted run loses at most one batch. `<output>.settings.json` records
what the answers depend on (target, source, prompt and generation settings); a rerun with other
values is refused rather than mixed in, while `max_prompts` and `batch_size` may change.

Train and evaluation prompts stay apart: sources come from `TRAINING_PROMPT_SETS` or a local
file, never the evaluation registry, and any prompt whose text equals an MT-Bench, HumanEval or
GSM8K prompt is dropped, as is any prompt of the `.jsonl` files `exclude` lists (a training
run's held-out prompts).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

from absl import logging
from tqdm import tqdm

from pard_jax import checkpoints, files, prompting
from pard_jax.checkpoints import assets
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
from pard_jax.errors import ConfigError, DataError, require, require_writable
from pard_jax.eval import prompts as prompts_lib
from pard_jax.files import write_atomically


def _validate(c) -> pathlib.Path:
  for field in ("max_new_tokens", "batch_size", "max_prompt_tokens"):
    require(c[field] >= 1, field, f"must be >= 1, got {c[field]}")
  require(c.max_prompts >= 0, "max_prompts", f"must be >= 0 (0 = all), got {c.max_prompts}")
  require(math.isfinite(c.temperature) and c.temperature >= 0, "temperature",
          f"must be a finite number >= 0, got {c.temperature}")
  require(0 < c.top_p <= 1, "top_p", f"must be in (0, 1], got {c.top_p}")
  require(c.top_k >= 0, "top_k", f"must be >= 0 (0 disables it), got {c.top_k}")
  require(c.source in prompts_lib.TRAINING_PROMPT_SETS or c.source.endswith(".jsonl"),
           "source", f"unknown source {c.source!r}; known: "
           f"{', '.join(prompts_lib.TRAINING_PROMPT_SETS)}, or a .jsonl file of prompts")
  for name in _excluded_files(c):
    require(name.endswith(".jsonl") and pathlib.Path(name).expanduser().is_file(), "exclude",
            f"{name!r} is not a .jsonl file of prompts")
  require(bool(c.output), "output", "is required (the .jsonl to write)")
  output = pathlib.Path(c.output).expanduser()
  require_writable(output, "output")
  return output


def _excluded_files(c) -> list[str]:
  return [name.strip() for name in c.get("exclude", "").split(",") if name.strip()]


def _evaluation_texts(c) -> set[str]:
  texts = set()
  for name in _excluded_files(c):
    texts.update(" ".join(p.text.split()) for p in
                 prompts_lib.JsonlFile(pathlib.Path(name).expanduser()).load() if p.text)
  for prompt_set in prompts_lib.PROMPT_SETS.values():
    try:
      texts.update(" ".join(p.text.split()) for p in prompt_set.load())
    except DataError as e:  # a set that is not installed cannot leak either
      logging.warning("cannot check overlap with %s: %s", prompt_set.name, e)
  return texts


SOURCE_SHA256 = "source_sha256"  # absent from records written before it was kept


def settings(c, target_path: pathlib.Path) -> dict[str, Any]:
  """What the answers depend on, portably: a rerun must match it to append."""
  named = c.source in prompts_lib.TRAINING_PROMPT_SETS
  path = pathlib.Path(c.source).expanduser()
  out = dict(target=assets.portable(target_path),
             source=c.source if named else assets.portable(path),
             max_prompt_tokens=c.max_prompt_tokens, max_new_tokens=c.max_new_tokens,
             temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, seed=c.seed,
             dtype=c.dtype)
  if not named and path.is_file():
    # Answers are keyed by `file:line`: an edited file would point them at other prompts.
    out[SOURCE_SHA256] = files.sha256(path)
  return out



def _settings_record(output: pathlib.Path) -> pathlib.Path:
  return output.with_name(output.name + ".settings.json")


def check_settings(output: pathlib.Path, current: dict[str, Any]) -> None:
  """Refuses to append to answers made with other settings (or with unrecorded ones)."""
  record = _settings_record(output)
  if not output.exists() or not output.stat().st_size:
    return
  if not record.exists():
    raise ConfigError(
        f"config.output: {output} holds answers but no {record.name} saying which settings "
        "made them; use a new output, or write the settings it was made with there")
  try:
    stored = json.loads(record.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{record}:{e.lineno}: not valid JSON ({e.msg})") from e
  changed = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in current.items()
             if stored.get(k) != v and (k in stored or k != SOURCE_SHA256)]
  if changed:
    edited = (" (the prompts file was edited since: its answers are keyed by file:line)"
              if any(c.startswith(SOURCE_SHA256) for c in changed) else "")
    raise ConfigError(
        f"config.output: {output} holds answers made with other settings "
        f"({'; '.join(changed)}){edited}; use a new output (--config.output=...) or the same "
        "settings")


def _record_settings(output: pathlib.Path, current: dict[str, Any]) -> None:
  write_atomically(_settings_record(output), json.dumps(current, indent=2) + "\n")


def finished_ids(output: pathlib.Path) -> set[str]:
  """Ids already written; a torn last line (a kill mid-write) is cut off first, any other bad
  line is a `DataError` naming it."""
  if not output.exists():
    return set()
  data = output.read_bytes()
  if data and not data.endswith(b"\n"):
    output.write_bytes(data[:data.rfind(b"\n") + 1])
  ids = set()
  for number, line in enumerate(output.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{output}:{number}: not valid JSON ({e.msg} at column {e.colno}); "
                      "fix or delete the line") from e
    if not isinstance(record, dict) or "id" not in record:
      raise DataError(f"{output}:{number}: no \"id\" (a line is {{\"id\", \"conversations\", "
                      f"\"finished\"}}); fix or delete the line")
    ids.add(record["id"])
  return ids


def select_prompts(c, tokenizer) -> list[tuple[prompts_lib.Prompt, list[int]]]:
  """Distinct source prompts that fit and are no evaluation prompt, ordered by length (rows of
  a batch then finish at similar times)."""
  source = (prompts_lib.TRAINING_PROMPT_SETS.get(c.source)
            or prompts_lib.JsonlFile(pathlib.Path(c.source).expanduser()))
  held_out, seen = _evaluation_texts(c), set()
  chosen, overlap, shortest_skipped = [], 0, None
  for prompt in source.load():
    if prompt.text is None:
      raise DataError(f"{prompt.origin}: distillation needs \"prompt\" text")
    text = " ".join(prompt.text.split())
    if text in held_out:
      overlap += 1
      continue
    if text.lower() in seen:  # ShareGPT repeats "hi" and the like: one answer is enough
      continue
    seen.add(text.lower())
    ids = prompt.token_ids(tokenizer, chat_template=True)
    if len(ids) <= c.max_prompt_tokens:
      chosen.append((prompt, ids))
    else:
      shortest_skipped = min(len(ids), shortest_skipped or len(ids))
    if c.max_prompts and len(chosen) == c.max_prompts:
      break
  require(bool(chosen) or shortest_skipped is None, "max_prompt_tokens",
          f"no prompt of {c.source} fits in {c.max_prompt_tokens} tokens; the shortest has "
          f"{shortest_skipped} (chat template included)")
  if not chosen:
    raise DataError(f"{c.source}: no prompt left once the {overlap} evaluation (or excluded) "
                    "prompts and the repeats are dropped")
  logging.info("%d prompts chosen; %d dropped as evaluation or excluded prompts", len(chosen),
               overlap)
  return sorted(chosen, key=lambda pair: len(pair[1]))


def run(c) -> pathlib.Path:
  """Writes (or completes) the distilled `.jsonl`; returns its path."""
  output = _validate(c)
  target_path = assets.resolve_setting(c.target or assets.SMOLLM2_GGUF, "target")
  done = finished_ids(output)
  current = settings(c, target_path)
  check_settings(output, current)
  tokenizer = checkpoints.load_tokenizer(target_path)
  chosen = select_prompts(c, tokenizer)
  todo = [(p, ids) for p, ids in chosen if p.origin not in done]
  logging.info("%d of %d prompts already in %s", len(chosen) - len(todo), len(chosen), output)
  if not todo:
    return output
  stops = prompting.stop_ids(checkpoints.read_config(target_path).hf,
                             checkpoints.load_generation_config(target_path), tokenizer)
  decoder = SpeculativeDecoder(
      checkpoints.load_model(target_path, dtype=c.dtype), None,
      DecodeConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                   top_k=c.top_k, top_p=c.top_p, stop_token_ids=stops))
  # One prompt width for the whole run: one compilation.
  width = prompting.prompt_width(decoder, max(len(ids) for _, ids in chosen))
  _record_settings(output, current)
  tokens, seconds = 0, 0.0
  with tqdm(total=len(chosen), initial=len(chosen) - len(todo), desc="distill",
            unit="prompt") as bar, open(output, "a") as f:
    for start, batch, padded in prompting.padded_batches(todo, c.batch_size):
      began = time.perf_counter()
      result = decoder.generate([ids for _, ids in padded], seed=c.seed + len(done) + start,
                                prompt_len=width)
      lines = []
      for (prompt, _), answer in zip(batch, result.output_ids):
        finished = bool(answer) and answer[-1] in stops
        lines.append(json.dumps({
            "id": prompt.origin, "finished": finished,
            "conversations": [{"from": "human", "value": prompt.text},
                              {"from": "gpt", "value": tokenizer.decode(
                                  answer, skip_special_tokens=True)}]}))
        tokens += len(answer)
      f.write("".join(line + "\n" for line in lines))
      f.flush()
      seconds += time.perf_counter() - began
      bar.update(len(batch))
      bar.set_postfix(tok_s=f"{tokens / seconds:.0f}")
  return output

