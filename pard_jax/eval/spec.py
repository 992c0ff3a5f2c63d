"""The evaluation request: `configs/decode.py` fields, checked and typed before anything loads.

Strings stop here: `EvalSpec.from_config` turns `method="ar,sd,pard"`, `num_draft_tokens=(2, 4)`,
`drafter="feature=DIR,cut=DIR"`, `prompts="mtbench,gsm8k"` and `peers="transformers"` into typed
values, and every bad value
raises a `ConfigError` naming its field, in seconds, before a model is read. The checkpoints'
`config.json` files are read here (no weights), so that lengths, token ids and drafter kinds are
checked against the models too, and no output may overwrite an input.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

from pard_jax import checkpoints, packed_dense, rules
from pard_jax import drafter_kinds as kinds
from pard_jax.checkpoints import assets
from pard_jax.config import DTYPES
from pard_jax.drafter_kinds import METHODS
from pard_jax.errors import ConfigError, DataError, require, require_writable
from pard_jax.eval import prompts as prompts_lib
from pard_jax.packed_dense import DenseKernel

PEERS = ("transformers",)
# With `max_prompts` unset: the first prompts of a named set (a quick look at a benchmark);
# a user's own .jsonl file is decoded whole.
NAMED_SET_PROMPTS = 4
# JAX keys keep a seed's low 32 bits (without x64): a larger seed would repeat a smaller one.
SEED_LIMIT = 2**32
# The files a report folder owns (report.py writes them), besides a plot `<set>.png` per set.
REPORT_FILES = ("results.json", "results.md", ".results.json.tmp", ".results.md.tmp", ".lock",
                "outputs")


# A drafter's label names its cells (and their output files) when a sweep compares several.
DRAFTER_LABEL = re.compile(r"[A-Za-z0-9_.-]+")


def _drafters(value) -> tuple[tuple[str, pathlib.Path], ...]:
  """`drafter`: one path, or comma-separated `LABEL=PATH` entries (several drafters, each
  run by every method but `ar` and `sd`); `(label, path)` each, label "" for one plain path."""
  if value and pathlib.Path(str(value)).expanduser().exists():  # one path, even with = or ,
    return (("", assets.resolve_setting(str(value), "drafter")),)
  entries = _names(value, "drafter")
  if len(entries) <= 1 and "=" not in "".join(entries):
    return (("", assets.resolve_setting("".join(entries), "drafter")),)
  drafters = []
  for entry in entries:
    label, _, path = entry.partition("=")
    require(bool(DRAFTER_LABEL.fullmatch(label)) and bool(path), "drafter",
            f"{entry!r}: several drafters take a label each, LABEL=PATH (letters, digits, "
            "_ . -), e.g. feature=drafters/smollm2_135m_feature,cut=drafters/smollm2_135m_pard")
    drafters.append((label, assets.resolve_setting(path, "drafter")))
  labels = [label for label, _ in drafters]
  require(len(set(labels)) == len(labels), "drafter", f"names a label twice: {labels}")
  return tuple(drafters)


def _labels(method: str, drafters: tuple[tuple[str, pathlib.Path], ...]) -> tuple[str, ...]:
  """The drafter labels of a method's cells: one per drafter but for `ar` and `sd`."""
  if method in ("ar", "sd") or not drafters:
    return ("",)
  return tuple(label for label, _ in drafters)


def _kind(method: str, path: pathlib.Path | None, models: dict, mask_ids: tuple[int, ...],
          use_target_features: bool) -> kinds.DrafterKind:
  """The kind `method` runs with the drafter at `path` (its config.json's declaration)."""
  declared = models[path].drafter if path in models else None
  kind = kinds.for_method(method, declared, mask_ids)
  return kind if use_target_features else kind.without_features()



def _names(value, field: str) -> tuple[str, ...]:
  require(isinstance(value, str), field, f"must be comma-separated names, got {value!r}")
  return tuple(n.strip() for n in value.split(",") if n.strip())


def _overwrites(written: pathlib.Path, read: pathlib.Path) -> bool:
  """Whether writing `written` (a file, or a folder written into) changes the input `read` (a
  file, or a checkpoint folder); both resolved."""
  return (read == written or read.is_relative_to(written)
          or (written.is_relative_to(read) and written.exists()))


def _check_outputs(output: pathlib.Path | None, report_dir: pathlib.Path | None,
                   inputs: list[tuple[str, pathlib.Path]], set_names: list[str]) -> None:
  """No output may overwrite an input, and `output` may not overwrite the report's files."""
  written = [("output", output.resolve())] if output is not None else []
  if report_dir is not None:
    report_dir = report_dir.resolve()
    owned = [report_dir / name for name in REPORT_FILES + tuple(f"{n}.png" for n in set_names)]
    written += [("report_dir", path) for path in owned]
    if output is not None:
      resolved = output.resolve()
      require(resolved != report_dir and not any(resolved.is_relative_to(p) for p in owned),
              "output", f"{output} is one of the report's own files (config.report_dir: "
              f"{report_dir}); write it elsewhere")
  for field, path in written:
    for input_field, input_path in inputs:
      require(not _overwrites(path, input_path), field,
              f"{path} would overwrite {input_path}, an input (config.{input_field}); write "
              "elsewhere")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """What to decode and measure: every (prompt set, method, drafter, K) cell, plus `ar` and
  peers."""
  target: pathlib.Path
  # (label, path) per drafter of the methods but `ar` and `sd`; label "" for one plain path.
  drafters: tuple[tuple[str, pathlib.Path], ...]
  sd_drafter: pathlib.Path | None  # the AR drafter for `sd` and assisted generation
  methods: tuple[str, ...]  # `ar` first: it is every cell's baseline
  draft_tokens: tuple[int, ...]  # the K values, for every method but `ar`
  prompt_sets: tuple[prompts_lib.PromptSet, ...]
  max_prompts: int | None  # per set; 0 = all; None: NAMED_SET_PROMPTS of a named set, a file whole
  chat_template: bool
  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  verify_threshold: float
  use_target_features: bool  # False: a feature drafter drafts from tokens alone
  seed: int
  batch_size: int
  dtype: str
  dense_kernel: DenseKernel  # resolved: XLA or PACKED
  mask_token_ids: tuple[int, ...]
  stop_token_ids: tuple[int, ...] | None  # None: the target's EOS ids
  cache_len: int
  peers: tuple[str, ...]
  output: pathlib.Path | None
  report_dir: pathlib.Path | None
  # The config.json of the target and of every drafter a method uses, by path (no weights).
  models: dict[pathlib.Path, checkpoints.CheckpointConfig]
  drafter_kinds: dict[tuple[str, str], kinds.DrafterKind]  # per (method, label), ids resolved
  mesh_shape: tuple[int, int, int] = (1, 1, 1)  # (data, fsdp, tensor); -1: the other devices
  num_processes: int = 1  # `distributed.num_processes`

  def check_mesh(self, mesh) -> None:
    """The batch against the devices' mesh, before any weight is read."""
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    require(self.batch_size % rows == 0, "mesh.shape",
            f"{tuple(mesh.devices.shape)} splits batch rows over data x fsdp = {rows} devices, "
            f"which does not divide config.batch_size={self.batch_size}")

  @property
  def vocab_size(self) -> int:
    return self.models[self.target].model.vocab_size

  @property
  def positions(self) -> int:
    """Cache positions per row: `cache_len`, or the fewest any model used holds."""
    return self.cache_len or min(m.model.max_position_embeddings for m in self.models.values())

  def prompt_limit(self, prompt_set: prompts_lib.PromptSet) -> int:
    """How many of the set's first prompts to decode; 0 = all."""
    if self.max_prompts is not None:
      return self.max_prompts
    return 0 if isinstance(prompt_set, prompts_lib.JsonlFile) else NAMED_SET_PROMPTS

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  @property
  def drafter(self) -> pathlib.Path | None:
    """The first drafter (the one a single-drafter sweep uses)."""
    return self.drafters[0][1] if self.drafters else None

  @property
  def drafter_labels(self) -> tuple[str, ...]:
    """Every cell's drafter label: "" (ar, sd, a single drafter), then each drafter's."""
    return tuple(dict.fromkeys(("",) + tuple(label for label, _ in self.drafters)))

  def labels_for(self, method: str) -> tuple[str, ...]:
    return _labels(method, self.drafters)

  def cells(self) -> list[tuple[str, str, int]]:
    """(method, drafter label, K) per cell of one prompt set; `ar` has K = 0 and comes first."""
    return [("ar", "", 0)] + [(m, label, k) for m in self.methods if m != "ar"
                              for label in self.labels_for(m) for k in self.draft_tokens]

  def drafter_for(self, method: str, label: str = "") -> pathlib.Path | None:
    if method == "sd":
      return self.sd_drafter
    return dict(self.drafters).get(label, self.drafter)

  def identity(self) -> dict[str, Any]:
    """The settings every stored cell result depends on (a resumed report must match them);
    the prompts themselves are keyed per set by the report (`max_prompts` acts through them)."""
    path = lambda p: assets.portable(p) if p is not None else ""
    # One unlabelled drafter is stored as its path, as before labels existed.
    drafter = (path(self.drafter) if not any(label for label, _ in self.drafters)
               else [f"{label}={path(p)}" for label, p in self.drafters])
    return dict(target=path(self.target), drafter=drafter,
                sd_drafter=path(self.sd_drafter), chat_template=self.chat_template,
                max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                top_k=self.top_k, top_p=self.top_p, verify_threshold=self.verify_threshold,
                use_target_features=self.use_target_features, seed=self.seed,
                batch_size=self.batch_size, dtype=self.dtype,
                dense_kernel=self.dense_kernel.value, mask_token_ids=list(self.mask_token_ids),
                stop_token_ids=None if self.stop_token_ids is None else list(self.stop_token_ids),
                cache_len=self.cache_len)

  @classmethod
  def from_config(cls, config) -> "EvalSpec":
    c = config
    methods = _names(c.method, "method")
    require(bool(methods), "method", f"is empty; choose from {', '.join(METHODS)}")
    for method in methods:
      require(method in METHODS, "method",
               f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    require(len(set(methods)) == len(methods), "method", f"lists a method twice: {c.method!r}")
    methods = ("ar",) + tuple(m for m in methods if m != "ar")
    ks = (c.num_draft_tokens,) if rules.is_int(c.num_draft_tokens) else tuple(c.num_draft_tokens)
    require(bool(ks), "num_draft_tokens", "is empty: give K values, e.g. 4 or 2,4,8")
    for k in ks:
      problem = rules.num_draft_tokens(k)
      require(not problem, "num_draft_tokens", f"{problem} (K values, e.g. 4 or 2,4,8)")
    require(len(set(ks)) == len(ks), "num_draft_tokens", f"lists a value twice: {ks}")
    for field in ("max_new_tokens", "batch_size"):
      require(rules.is_int(c[field]) and c[field] >= 1, field, f"must be an integer >= 1, got "
               f"{c[field]!r}")
    for field in ("cache_len", "top_k"):
      require(rules.is_int(c[field]) and c[field] >= 0, field,
              f"must be an integer >= 0 (0 = off), got {c[field]!r}")
    require(c.max_prompts is None or (rules.is_int(c.max_prompts) and c.max_prompts >= 0),
            "max_prompts", f"must be an integer >= 0 (0 = all) or unset, got {c.max_prompts!r}")
    require(rules.is_int(c.seed) and 0 <= c.seed < SEED_LIMIT, "seed",
            f"must be an integer in [0, 2**32) (JAX keeps a seed's low 32 bits, so a larger one "
            f"would repeat a smaller one), got {c.seed!r}")
    for field, rule in (("temperature", rules.temperature), ("top_p", rules.top_p),
                        ("verify_threshold", rules.verify_threshold)):
      problem = rule(c[field])
      require(not problem, field, problem)
    require(c.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {c.dtype!r}")
    mesh_shape = tuple(c.mesh.shape)
    require(len(mesh_shape) == 3 and mesh_shape.count(-1) <= 1
            and all(rules.is_int(n) and (n >= 1 or n == -1) for n in mesh_shape), "mesh.shape",
            f"must be (data, fsdp, tensor): integers >= 1, at most one -1, got {c.mesh.shape!r}")
    dense_kernel = DenseKernel.parse(c.dense_kernel)
    if mesh_shape != (1, 1, 1):
      require(dense_kernel is not DenseKernel.PACKED, "dense_kernel",
              f"'packed' runs on one CPU device, and config.mesh.shape is {mesh_shape}; use "
              "'auto' or 'xla'")
      dense_kernel = DenseKernel.XLA
    dense_kernel = packed_dense.resolve(dense_kernel, c.dtype)
    mask_ids, stop_ids = tuple(c.mask_token_ids), c.stop_token_ids
    for field, ids in (("mask_token_ids", mask_ids), ("stop_token_ids", stop_ids or ())):
      require(all(rules.is_int(i) and i >= 0 for i in ids), field,
               f"must be token ids (integers >= 0), got {ids!r}")
    peers = _names(c.peers, "peers")
    for peer in peers:
      require(peer in PEERS, "peers", f"unknown peer {peer!r}; known: {', '.join(PEERS)}")

    target = assets.resolve_setting(c.target or assets.SMOLLM2_GGUF, "target")
    require(target.exists(), "target", f"{target} does not exist (a HF directory or .gguf)")
    drafters = _drafters(c.drafter)
    drafter = drafters[0][1]
    sd_drafter = assets.resolve_setting(c.sd_drafter, "sd_drafter")
    require(sd_drafter is None or sd_drafter.exists(), "sd_drafter",
            f"{sd_drafter} does not exist (used by method sd; set it to \"\" when unused)")
    sd_drafter = sd_drafter or drafter
    drafted = [m for m in methods if m not in ("ar", "sd")]
    for field, paths, needs in (("sd_drafter", [sd_drafter], [m for m in methods if m == "sd"]),
                                ("drafter", [p for _, p in drafters], drafted)):
      if needs:
        for path in paths:
          require(path is not None, "drafter", f"method(s) {needs} need a drafter (HF "
                  "directory, .gguf or delta directory)")
          require(path.exists(), field, f"{path} does not exist")
    if drafter is None:
      drafters = ()
    try:
      sets = tuple(prompts_lib.resolve(c.prompts))
    except DataError as e:
      raise ConfigError(f"config.prompts: {e}") from e

    output = pathlib.Path(c.output).expanduser() if c.output else None
    report_dir = pathlib.Path(c.report_dir).expanduser() if c.report_dir else None
    used = [("target", target)]
    if "sd" in methods:
      used.append(("sd_drafter", sd_drafter))
    if drafted:
      used += [("drafter", path) for _, path in drafters]
    inputs = [(field, path.resolve()) for field, path in used]
    inputs += [("prompts", s.path.resolve()) for s in sets if isinstance(s, prompts_lib.JsonlFile)]
    _check_outputs(output, report_dir, inputs, [s.name for s in sets])
    if output is not None:
      require_writable(output, "output")
    if report_dir is not None:
      require_writable(report_dir / "results.json", "report_dir")

    models = {path: checkpoints.read_config(path) for _, path in used}
    max_positions = min(m.model.max_position_embeddings for m in models.values())
    require(c.cache_len <= max_positions, "cache_len",
            f"{c.cache_len} is more than the {max_positions} positions the models hold "
            "(max_position_embeddings); 0 = prompt + max_new_tokens")
    if c.cache_len:
      require(c.max_new_tokens < c.cache_len, "cache_len",
              f"{c.cache_len} positions leave no room for a prompt before max_new_tokens="
              f"{c.max_new_tokens} new tokens; 0 = prompt + max_new_tokens")
    require(c.max_new_tokens < max_positions, "max_new_tokens",
            f"{c.max_new_tokens} leaves no room for a prompt in the {max_positions} positions "
            "the models hold (max_position_embeddings)")
    vocab = models[target].model.vocab_size
    tensor, width = mesh_shape[2], models[target].model.intermediate_size
    require(tensor == -1 or width % tensor == 0, "mesh.shape",
            f"tensor={tensor} does not divide the target's MLP width {width} "
            f"(intermediate_size of {target}): its weights cannot be split as asked")
    num_processes = c.distributed.num_processes if "distributed" in c else 1
    if num_processes > 1:
      for field, value in (("report_dir", c.report_dir), ("peers", c.peers)):
        require(not value, field, f"is not supported with distributed.num_processes="
                f"{num_processes} yet: give each process its own config.output")
    problem = rules.ids_in_vocabulary(stop_ids or (), vocab, "the target's")
    require(not problem, "stop_token_ids", problem)
    drafter_kinds = {}
    labelled = dict(drafters)
    for method in methods:
      for label in _labels(method, drafters):
        path = sd_drafter if method == "sd" else labelled.get(label, drafter)
        drafter_kinds[method, label] = kind = _kind(method, path, models, mask_ids,
                                                    c.use_target_features)
        if not kind.uses_drafter:
          continue
        error = kinds.feature_layout_error(kind, models[path].model, models[target].model)
        require(error is None, "target", f"{error} ({path} over {target})")
        problem = rules.ids_in_vocabulary(sorted({t for k in ks for t in kind.mask_ids(k)}),
                                          models[path].model.vocab_size, "the drafter's")
        require(not problem, "mask_token_ids", f"{problem} ({path})")
    return cls(target=target, drafters=drafters, sd_drafter=sd_drafter,
               methods=methods, draft_tokens=ks,
               prompt_sets=sets, max_prompts=c.max_prompts, chat_template=bool(c.chat_template),
               max_new_tokens=c.max_new_tokens, temperature=float(c.temperature),
               top_k=c.top_k, top_p=float(c.top_p),
               verify_threshold=float(c.verify_threshold),
               use_target_features=bool(c.use_target_features), seed=c.seed,
               batch_size=c.batch_size, dtype=c.dtype, dense_kernel=dense_kernel,
               mask_token_ids=mask_ids,
               stop_token_ids=None if stop_ids is None else tuple(stop_ids),
               cache_len=c.cache_len, peers=peers, output=output, report_dir=report_dir,
               models=models, drafter_kinds=drafter_kinds, mesh_shape=mesh_shape,
               num_processes=num_processes)
