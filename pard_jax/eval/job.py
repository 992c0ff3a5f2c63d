"""The decode.py job: a sweep over (prompt set, method, drafter, K) cells, `ar` the baseline.

Order of work, so that mistakes surface before anything slow: the config is checked against
the checkpoints' config.json (`EvalSpec`), the report folder locked, every prompt of every set
read, tokenized and checked, the report folder's earlier settings and prompts compared, its
finished cells' outputs read back and every `DecodeConfig` built; only then are models loaded.
Per prompt set, `ar` runs first, then every (method, drafter, K), then the peers. `output` is
written cell by cell, like the report, so an interrupted sweep keeps every finished cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from typing import Any

import jax
from absl import logging

from pard_jax import checkpoints, distributed, packed_dense, prompting, rules, sharding
from pard_jax import drafter_kinds as kinds
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
from pard_jax.errors import ConfigError, DataError, DecodeError
from pard_jax.eval import cells as cells_lib
from pard_jax.eval import peers as peers_lib
from pard_jax.checkpoints.tokenizer import same_vocabulary
from pard_jax.eval import prompts as prompts_lib
from pard_jax.eval import report as report_lib
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
  if not same_vocabulary(target_tokenizer, drafter_tokenizer):
    raise DecodeError(
        f"target and drafter vocabularies differ (target {target_hf['vocab_size']} rows, "
        f"drafter {drafter_hf['vocab_size']}) and their tokenizers are missing or not the same: "
        "a drafter must share the target's tokenizer")
  return len(target_tokenizer)


def tokenize_set(prompt_set: prompts_lib.PromptSet, spec: EvalSpec,
                 tokenizer) -> tuple[list[str], list[list[int]]]:
  """(origins, token ids) of the prompts of a set to decode (`spec.prompt_limit`), each
  checked against the target's vocabulary and the cache, so that none fails mid-sweep."""
  prompts = prompt_set.load()[:spec.prompt_limit(prompt_set) or None]
  if (spec.chat_template and tokenizer is not None and not tokenizer.chat_template
      and any(p.text is not None for p in prompts)):
    raise ConfigError(f"config.chat_template: the target's tokenizer ({spec.target}) has no chat "
                      "template to render the text prompts of "
                      f"{prompt_set.source}; set --config.chat_template=False to encode them as "
                      "they are")
  room = spec.positions - spec.max_new_tokens
  ids = []
  for prompt in prompts:
    tokens = prompt.token_ids(tokenizer, spec.chat_template)
    problem = rules.ids_in_vocabulary(tokens, spec.vocab_size, "the target's")
    if problem:
      raise DataError(f"{prompt.origin}: token id {problem}")
    if len(tokens) > room:
      raise DataError(
          f"{prompt.origin}: prompt of {len(tokens)} tokens + max_new_tokens="
          f"{spec.max_new_tokens} needs a cache of {len(tokens) + spec.max_new_tokens} positions, "
          f"more than the {spec.positions} available (config.cache_len / "
          "max_position_embeddings); shorten the prompt or config.max_new_tokens")
    ids.append(tokens)
  return [p.origin for p in prompts], ids


@dataclasses.dataclass
class EvalResult:
  cells: list[cells_lib.CellResult]  # in report order: per set, ours (ar first), then peers
  records: list[dict[str, Any]]  # one per (cell, prompt) run by our engine, as in `output`
  report: report_lib.Report

  def cell(self, prompt_set: str, method: str, k: int = 0,
           engine: str = cells_lib.OURS, drafter: str = "") -> cells_lib.CellResult:
    return self.report.cells[(prompt_set, engine, method, drafter, k)]


def run(config) -> EvalResult:
  """Runs the sweep described by a `configs/decode.py` config (or an `EvalSpec`)."""
  if not isinstance(config, EvalSpec):
    # Before anything touches a device (resolving dense_kernel asks for the backend).
    distributed.initialize(distributed.DistributedSpec.from_config(config.distributed))
  spec = config if isinstance(config, EvalSpec) else EvalSpec.from_config(config)
  size = math.prod(spec.mesh_shape)  # negative with a -1: every device
  try:
    mesh = sharding.make_mesh(spec.mesh_shape, jax.devices()[:size] if size > 0 else None)
  except ValueError as e:
    raise ConfigError(f"config.mesh.shape: {e}") from None
  spec.check_mesh(mesh)
  with report_lib.locked(spec.report_dir):
    return _run(spec, mesh if mesh.devices.size > 1 else None)


def _run(spec: EvalSpec, mesh) -> EvalResult:
  """The sweep; `mesh` None decodes on one device."""
  target_hf = spec.models[spec.target].hf
  generation_config = checkpoints.load_generation_config(spec.target)
  tokenizer = _load_tokenizer(spec.target)
  sets = {s.name: tokenize_set(s, spec, tokenizer) for s in spec.prompt_sets}
  report = report_lib.Report(
      spec, {s.name: report_lib.prompts_key(s, sets[s.name][1]) for s in spec.prompt_sets})
  stops = spec.stop_token_ids
  if stops is None:
    stops = prompting.stop_ids(target_hf, generation_config, tokenizer)
    problem = rules.ids_in_vocabulary(stops, spec.vocab_size, "the target's")
    if problem:
      raise ConfigError(f"config.stop_token_ids: unset, so the target's EOS ids {stops} are "
                        f"used, but {problem}; give the stop ids")

  cells = spec.cells()
  shared_vocab = {path: shared_vocab_size(target_hf, spec.models[path].hf, tokenizer, path)
                  for path in {spec.drafter_for(m, label) for m, label, k in cells if k}}
  configs = {}
  for method, label, k in cells:
    configs[method, label, k] = DecodeConfig(
        drafter_kind=spec.drafter_kinds[method, label], num_draft_tokens=k or 1,
        max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_k=spec.top_k,
        top_p=spec.top_p, verify_threshold=spec.verify_threshold, stop_token_ids=stops,
        shared_vocab_size=shared_vocab[spec.drafter_for(method, label)] if k else 0)

  ours = [(name, cells_lib.OURS, method, label, k) for name in sets
          for method, label, k in cells]
  todo = [key for key in ours if not report.done(key)]
  # Read back now: a damaged outputs/ fails before anything loads.
  stored_rows = {key: report.rows(key) for key in ours if report.done(key)}
  def load(path):
    placement = (sharding.decode_rules(spec.models[path].model.num_kv_heads, mesh)
                 if mesh is not None else None)
    model = checkpoints.load_model(path, dtype=spec.dtype, mesh=mesh, rules=placement)
    return packed_dense.prepare(model, spec.dense_kernel, in_place=True)  # no second copy
  target = load(spec.target) if todo else None
  drafters = {path: load(path) for path in {spec.drafter_for(method, label)
                                            for _, _, method, label, k in todo if k}}
  decoders: dict[tuple[str, str, int], SpeculativeDecoder] = {}
  peer = None  # loaded when a peer cell is left to measure

  wanted, records = [], []
  with contextlib.ExitStack() as stack:
    # Opened only now that every check has passed, and written cell by cell.
    output = stack.enter_context(spec.output.open("w")) if spec.output is not None else None
    for name, (origins, prompts) in sets.items():
      ar = None
      for method, label, k in cells:
        key = (name, cells_lib.OURS, method, label, k)
        if report.done(key):
          rows = stored_rows[key]
        else:
          if (method, label, k) not in decoders:
            decoders[method, label, k] = SpeculativeDecoder(
                target, drafters[spec.drafter_for(method, label)] if k else None,
                configs[method, label, k], mesh=mesh)
          rows = cells_lib.run_cell(decoders[method, label, k], prompts, spec.batch_size,
                                    spec.seed, spec.cache_len,
                                    desc=f"{name} {cells_lib.display_name(method, label)} K={k}")
          cell = cells_lib.summarise(name, method, k, rows, ar, spec.greedy, drafter=label)
          if method == kinds.AR:
            cell.speedup_vs_ar = 1.0
          report.add(cell, rows)
          logging.info("%s %s K=%d: tau %s, %.1f tok/s", name, cell.name, k,
                       f"{cell.tau:.2f}" if cell.tau else "-", cell.tokens_per_second)
        if method == kinds.AR:
          ar = (report.cells[key], rows)
        wanted.append(key)
        cell_records = [dict(set=name, prompt=origin, method=method, num_draft_tokens=k, **row)
                        for origin, row in zip(origins, rows)]
        if label:
          for record in cell_records:
            record["drafter"] = label
        if tokenizer is not None:
          for record in cell_records:
            record["text"] = tokenizer.decode(record["output_ids"])
        if output is not None:
          output.write("".join(json.dumps(record) + "\n" for record in cell_records))
          output.flush()
        records += cell_records
      for method, k in peers_lib.TransformersPeer.cells(spec):
        key = (name, peers_lib.TRANSFORMERS, method, "", k)
        if not report.done(key):
          peer = peer or peers_lib.TransformersPeer(spec, stops)
          cell = peer.run(name, method, k, prompts)
          ours_cell = report.cells[(name, cells_lib.OURS, method, "", k)]
          peer_ar = report.cells.get((name, peers_lib.TRANSFORMERS, kinds.AR, "", 0), cell)
          cell.ours_vs_peer = ours_cell.tokens_per_second / cell.tokens_per_second
          cell.speedup_vs_ar = cell.tokens_per_second / peer_ar.tokens_per_second
          report.add(cell)
        wanted.append(key)

  if todo or peer is not None:  # a subset of a finished sweep rewrites nothing
    report.plot()
  return EvalResult(cells=[report.cells[key] for key in wanted], records=records, report=report)
