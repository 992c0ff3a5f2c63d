"""The decode.py job: a sweep over (prompt set, method, K) cells with `ar` as the baseline.

Order of work, so that mistakes surface before anything slow: the config is checked
(`EvalSpec`), the report folder's earlier settings compared, prompts read and tokenized, the
drafter's mask ids resolved and every `DecodeConfig` built; only then are models loaded. Per
prompt set, `ar` runs first, then every (method, K), then the peers.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from absl import logging

from pard_jax import checkpoints, prompting
from pard_jax import drafter_kinds as kinds
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
from pard_jax.errors import DataError, DecodeError
from pard_jax.eval import cells as cells_lib
from pard_jax.eval import peers as peers_lib
from pard_jax.eval import prompts as prompts_lib
from pard_jax.eval.report import Report
from pard_jax.eval.spec import EvalSpec


def _load_tokenizer(path):
  try:
    return checkpoints.load_tokenizer(path)
  except (OSError, ValueError) as e:
    logging.warning("no tokenizer at %s (%s): outputs carry ids only", path, e)
    return None


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


def tokenize_set(prompt_set: prompts_lib.PromptSet, spec: EvalSpec, tokenizer,
                 vocab_size: int) -> tuple[list[str], list[list[int]]]:
  """(origins, token ids) of a set's first `max_prompts` prompts, ids checked against the vocab."""
  prompts = prompt_set.load()[:spec.max_prompts or None]
  ids = []
  for prompt in prompts:
    tokens = prompt.token_ids(tokenizer, spec.chat_template)
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
      raise DataError(f"{prompt.origin}: token id {bad[0]} is outside the "
                                    f"target's vocabulary [0, {vocab_size})")
    ids.append(tokens)
  return [p.origin for p in prompts], ids


@dataclasses.dataclass
class EvalResult:
  cells: list[cells_lib.CellResult]  # in report order: per set, ours (ar first), then peers
  records: list[dict[str, Any]]  # one per (cell, prompt) run by our engine, as in `output`
  report: Report

  def cell(self, prompt_set: str, method: str, k: int = 0,
           engine: str = cells_lib.OURS) -> cells_lib.CellResult:
    return self.report.cells[(prompt_set, engine, method, k)]


def run(config) -> EvalResult:
  """Runs the sweep described by a `configs/decode.py` config (or an `EvalSpec`)."""
  spec = config if isinstance(config, EvalSpec) else EvalSpec.from_config(config)
  report = Report(spec)
  tokenizer = _load_tokenizer(spec.target)
  target_hf = checkpoints.read_config(spec.target).hf
  sets = {s.name: tokenize_set(s, spec, tokenizer, target_hf["vocab_size"])
          for s in spec.prompt_sets}
  stops = (spec.stop_token_ids if spec.stop_token_ids is not None
           else prompting.stop_ids(target_hf, checkpoints.load_generation_config(spec.target),
                                   tokenizer))

  declared, shared_vocab = {}, {}  # per drafter path: its config.json's kind, shared vocab
  for method in spec.methods[1:]:
    path = spec.drafter_for(method)
    if path not in declared:
      drafter = checkpoints.read_config(path)
      declared[path] = drafter.drafter
      shared_vocab[path] = shared_vocab_size(target_hf, drafter.hf, tokenizer, path)
  configs = {}
  for method, k in spec.cells():
    path = spec.drafter_for(method)
    configs[method, k] = DecodeConfig(
        drafter=kinds.for_method(method, declared.get(path), spec.mask_token_ids),
        num_draft_tokens=k or 1, max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p,
        stop_token_ids=stops, shared_vocab_size=shared_vocab[path] if k else 0)

  todo = [(name, method, k) for name in sets for method, k in spec.cells()
          if not report.done((name, cells_lib.OURS, method, k))]
  target = checkpoints.load_model(spec.target, dtype=spec.dtype) if todo else None
  drafters = {path: checkpoints.load_model(path, dtype=spec.dtype)
              for path in {spec.drafter_for(method) for _, method, k in todo if k}}
  decoders: dict[tuple[str, int], SpeculativeDecoder] = {}
  peer = None  # loaded when a peer cell is left to measure

  records = []
  for name, (origins, prompts) in sets.items():
    ar = None
    for method, k in spec.cells():
      key = (name, cells_lib.OURS, method, k)
      if report.done(key):
        rows = report.rows(key)
      else:
        if (method, k) not in decoders:
          decoders[method, k] = SpeculativeDecoder(
              target, drafters[spec.drafter_for(method)] if k else None, configs[method, k])
        rows = cells_lib.run_cell(decoders[method, k], prompts, spec.batch_size, spec.seed,
                                  spec.cache_len, desc=f"{name} {method} K={k}")
        cell = cells_lib.summarise(name, method, k, rows, ar, spec.greedy)
        if method == "ar":
          cell.speedup_vs_ar = 1.0
        report.add(cell, rows)
        logging.info("%s %s K=%d: tau %s, %.1f tok/s", name, method, k,
                     f"{cell.tau:.2f}" if cell.tau else "-", cell.tokens_per_second)
      if method == "ar":
        ar = (report.cells[key], rows)
      records += [dict(set=name, prompt=origin, method=method, num_draft_tokens=k, **row)
                  for origin, row in zip(origins, rows)]
    for method, k in peers_lib.TransformersPeer.cells(spec):
      if not report.done((name, peers_lib.TRANSFORMERS, method, k)):
        peer = peer or peers_lib.TransformersPeer(spec, stops)
        cell = peer.run(name, method, k, prompts)
        ours = report.cells[(name, cells_lib.OURS, method, k)]
        peer_ar = report.cells.get((name, peers_lib.TRANSFORMERS, "ar", 0), cell)
        cell.ours_vs_peer = ours.tokens_per_second / cell.tokens_per_second
        cell.speedup_vs_ar = cell.tokens_per_second / peer_ar.tokens_per_second
        report.add(cell)

  if tokenizer is not None:
    for record in records:
      record["text"] = tokenizer.decode(record["output_ids"])
  if spec.output is not None:
    spec.output.write_text("".join(json.dumps(record) + "\n" for record in records))
  report.plot()
  return EvalResult(cells=report.ordered(), records=records, report=report)
