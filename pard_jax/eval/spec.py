"""The evaluation request: `configs/decode.py` fields, checked and typed before anything loads.

Strings stop here: `EvalSpec.from_config` turns `method="ar,sd,pard"`, `num_draft_tokens=(2, 4)`,
`prompts="mtbench,gsm8k"` and `peers="transformers"` into typed values, and every bad value
raises a `ConfigError` naming its field, in seconds, before a model is read.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from pard_jax.checkpoints import assets
from pard_jax.config import DTYPES
from pard_jax.drafter_kinds import MAX_DRAFT_TOKENS, METHODS
from pard_jax.errors import ConfigError, DataError, require, require_writable
from pard_jax.eval import prompts as prompts_lib

PEERS = ("transformers",)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _names(value, field: str) -> tuple[str, ...]:
  require(isinstance(value, str), field, f"must be comma-separated names, got {value!r}")
  return tuple(n.strip() for n in value.split(",") if n.strip())


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """What to decode and measure: every (prompt set, method, K) cell, plus `ar` and peers."""
  target: pathlib.Path
  drafter: pathlib.Path | None
  sd_drafter: pathlib.Path | None  # the AR drafter for `sd` and assisted generation
  methods: tuple[str, ...]  # `ar` first: it is every cell's baseline
  draft_tokens: tuple[int, ...]  # the K values, for every method but `ar`
  prompt_sets: tuple[prompts_lib.PromptSet, ...]
  max_prompts: int  # per set; 0 = all
  chat_template: bool
  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  seed: int
  batch_size: int
  dtype: str
  mask_token_ids: tuple[int, ...]
  stop_token_ids: tuple[int, ...] | None  # None: the target's EOS ids
  cache_len: int
  peers: tuple[str, ...]
  output: pathlib.Path | None
  report_dir: pathlib.Path | None

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  def cells(self) -> list[tuple[str, int]]:
    """(method, K) per cell of one prompt set; `ar` has K = 0 and comes first."""
    return [("ar", 0)] + [(m, k) for m in self.methods if m != "ar" for k in self.draft_tokens]

  def drafter_for(self, method: str) -> pathlib.Path | None:
    return self.sd_drafter if method == "sd" else self.drafter

  def identity(self) -> dict[str, Any]:
    """The settings every stored cell result depends on (a resumed report must match them)."""
    return dict(target=str(self.target), drafter=str(self.drafter or ""),
                sd_drafter=str(self.sd_drafter or ""),
                max_prompts=self.max_prompts, chat_template=self.chat_template,
                max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                top_k=self.top_k, top_p=self.top_p, seed=self.seed,
                batch_size=self.batch_size, dtype=self.dtype,
                mask_token_ids=list(self.mask_token_ids),
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
    ks = (c.num_draft_tokens,) if _is_int(c.num_draft_tokens) else tuple(c.num_draft_tokens)
    require(bool(ks) and all(_is_int(k) and 1 <= k <= MAX_DRAFT_TOKENS for k in ks),
             "num_draft_tokens", f"must be integers in [1, {MAX_DRAFT_TOKENS}] (e.g. 4 or "
             f"2,4,8), got {c.num_draft_tokens!r}")
    require(len(set(ks)) == len(ks), "num_draft_tokens", f"lists a value twice: {ks}")
    for field in ("max_new_tokens", "batch_size"):
      require(_is_int(c[field]) and c[field] >= 1, field, f"must be an integer >= 1, got "
               f"{c[field]!r}")
    for field in ("max_prompts", "cache_len", "top_k"):
      require(_is_int(c[field]) and c[field] >= 0, field, f"must be an integer >= 0 (0 = off), "
               f"got {c[field]!r}")
    require(c.temperature >= 0, "temperature", f"must be >= 0 (0 = greedy), got {c.temperature}")
    require(0 < c.top_p <= 1, "top_p", f"must be in (0, 1], got {c.top_p}")
    require(c.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {c.dtype!r}")
    mask_ids, stop_ids = tuple(c.mask_token_ids), c.stop_token_ids
    for field, ids in (("mask_token_ids", mask_ids), ("stop_token_ids", stop_ids or ())):
      require(all(_is_int(i) and i >= 0 for i in ids), field,
               f"must be token ids (integers >= 0), got {ids!r}")
    peers = _names(c.peers, "peers")
    for peer in peers:
      require(peer in PEERS, "peers", f"unknown peer {peer!r}; known: {', '.join(PEERS)}")

    target = assets.resolve_setting(c.target or assets.SMOLLM2_GGUF, "target")
    require(target.exists(), "target", f"{target} does not exist (a HF directory or .gguf)")
    drafter = assets.resolve_setting(c.drafter, "drafter")
    sd_drafter = assets.resolve_setting(c.sd_drafter, "sd_drafter") or drafter
    for field, path, needs in (("sd_drafter", sd_drafter, [m for m in methods if m == "sd"]),
                               ("drafter", drafter, [m for m in methods if m not in ("ar", "sd")])):
      if needs:
        require(path is not None, "drafter", f"method(s) {needs} need a drafter (HF directory, "
                ".gguf or delta directory)")
        require(path.exists(), field, f"{path} does not exist")
    try:
      sets = tuple(prompts_lib.resolve(c.prompts))
    except DataError as e:
      raise ConfigError(f"config.prompts: {e}") from e

    output = pathlib.Path(c.output).expanduser() if c.output else None
    if output is not None:
      require_writable(output, "output")
    report_dir = pathlib.Path(c.report_dir).expanduser() if c.report_dir else None
    if report_dir is not None:
      require_writable(report_dir / "results.json", "report_dir")
    return cls(target=target, drafter=drafter, sd_drafter=sd_drafter,
               methods=("ar",) + tuple(m for m in methods if m != "ar"), draft_tokens=ks,
               prompt_sets=sets, max_prompts=c.max_prompts, chat_template=bool(c.chat_template),
               max_new_tokens=c.max_new_tokens, temperature=float(c.temperature),
               top_k=c.top_k, top_p=float(c.top_p), seed=c.seed, batch_size=c.batch_size,
               dtype=c.dtype, mask_token_ids=mask_ids,
               stop_token_ids=None if stop_ids is None else tuple(stop_ids),
               cache_len=c.cache_len, peers=peers, output=output, report_dir=report_dir)
