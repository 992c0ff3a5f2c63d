"""One evaluation cell: a decoder over one prompt set, timed without compilation or warm-up.

A cell's numbers are the sums over its prompts: tokens, iterations, seconds. From them come τ
(tokens committed per iteration), tokens/s and the per-depth acceptance rate (the share of
iterations whose verification accepted at least i drafts, i = 1..K). Speedup and the
identical-to-`ar` count compare a cell with the `ar` cell of the same prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from tqdm import tqdm

from pard_jax.decoding import SpeculativeDecoder
from pard_jax.prompting import padded_batches, prompt_width

OURS = "pard_jax"


@dataclasses.dataclass
class CellResult:
  """The measured numbers of one (prompt set, engine, method, drafter, K) cell."""
  prompt_set: str
  method: str
  num_draft_tokens: int  # 0 for ar
  num_prompts: int
  num_tokens: int
  seconds: float  # decoding wall time, compilation and warm-up excluded
  engine: str = OURS  # or a peer: "transformers"
  drafter: str = ""  # the drafter's label when a sweep compares several; "" otherwise
  num_iterations: int | None = None  # None where the engine does not report it
  # Share of iterations that accepted >= i drafts, i = 1..K (empty for ar and peers).
  acceptance_by_depth: list[float] = dataclasses.field(default_factory=list)
  speedup_vs_ar: float | None = None  # over this engine's own ar on the same prompts
  identical_to_ar: int | None = None  # greedy only: prompts whose ids equal ar's
  ours_vs_peer: float | None = None  # peers only: our tokens/s for this cell over theirs

  @property
  def key(self) -> tuple[str, str, str, str, int]:
    return (self.prompt_set, self.engine, self.method, self.drafter, self.num_draft_tokens)

  @property
  def name(self) -> str:
    return display_name(self.method, self.drafter)

  @property
  def tau(self) -> float | None:
    return self.num_tokens / self.num_iterations if self.num_iterations else None

  @property
  def tokens_per_second(self) -> float:
    return self.num_tokens / self.seconds if self.seconds else float("nan")

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "tau": self.tau,
            "tokens_per_second": self.tokens_per_second}

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> "CellResult":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


def display_name(method: str, drafter: str = "") -> str:
  """The method, and its drafter's label where a sweep compares several: `pard [cut]`."""
  return f"{method} [{drafter}]" if drafter else method


def acceptance_by_depth(accepted_drafts: Sequence[Sequence[int]], k: int) -> list[float]:
  """Per depth i = 1..k, the share of iterations that accepted at least i drafts."""
  counts = [a for row in accepted_drafts for a in row]
  if not counts:
    return [0.0] * k
  return [sum(a >= i for a in counts) / len(counts) for i in range(1, k + 1)]


def count_identical(rows: Sequence[dict], ar_rows: Sequence[dict]) -> int:
  """Prompts whose generated ids equal `ar`'s token for token."""
  return sum(r["output_ids"] == a["output_ids"] for r, a in zip(rows, ar_rows, strict=True))


def run_cell(decoder: SpeculativeDecoder, prompts: Sequence[Sequence[int]], batch_size: int,
             seed: int, cache_len: int = 0, desc: str = "") -> list[dict]:
  """Decodes prompts in input order and returns one row per prompt.

  One untimed warm-up batch runs first: compilation is already outside the timing, but the
  first call of an executable also pays one-off allocation costs that skewed short runs.
  """
  width = prompt_width(decoder, max(map(len, prompts)), cache_len)
  batches = list(padded_batches(prompts, batch_size))
  decoder.generate(batches[0][2], seed=seed, prompt_len=width, cache_len=cache_len or None)
  rows = []
  with tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False) as bar:
    for start, batch, padded in batches:
      result = decoder.generate(padded, seed=seed + start, prompt_len=width,
                                cache_len=cache_len or None)
      for i in range(len(batch)):
        rows.append(dict(output_ids=result.output_ids[i],
                         accept_lengths=result.accept_lengths[i],
                         accepted_drafts=result.accepted_drafts[i],
                         verified_drafts=result.verified_drafts[i],
                         num_iterations=result.num_iterations[i],
                         num_drafted=result.num_drafted[i],
                         seconds=result.seconds / len(batch)))
      bar.update(len(batch))
  return rows


def summarise(prompt_set: str, method: str, k: int, rows: Sequence[dict],
              ar: tuple[CellResult, Sequence[dict]] | None = None,
              greedy: bool = True, drafter: str = "") -> CellResult:
  """A cell's numbers from its rows; `ar` (its cell and rows) adds speedup and identity."""
  cell = CellResult(prompt_set=prompt_set, method=method, num_draft_tokens=k, drafter=drafter,
                    num_prompts=len(rows), num_tokens=sum(len(r["output_ids"]) for r in rows),
                    seconds=sum(r["seconds"] for r in rows),
                    num_iterations=sum(r["num_iterations"] for r in rows),
                    acceptance_by_depth=acceptance_by_depth(
                        [r["accepted_drafts"] for r in rows], k) if k else [])
  if ar is not None:
    ar_cell, ar_rows = ar
    cell.speedup_vs_ar = cell.tokens_per_second / ar_cell.tokens_per_second
    if greedy:
      cell.identical_to_ar = count_identical(rows, ar_rows)
  return cell
