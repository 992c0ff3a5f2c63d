r"""One target/drafter pair's table: `ar`, `sd` and the parallel drafter per prompt set, each
iteration split into its drafter and verify forwards, greedy and sampled, the peers beside.

  python benchmarks/pair_table.py \
      --reports="greedy=benchmarks/results/qwen_coder_cpu/table/greedy,temperature 1=benchmarks/results/qwen_coder_cpu/table/t1" \
      --draft_cost=benchmarks/results/qwen_coder_cpu/table/draft_cost.json \
      --out=benchmarks/results/qwen_coder_cpu/table/table.md

Every ratio compares cells of one report (one run, one machine): the speedup over that run's
`ar`, and a drafter's over `sd` at the same K. "ms per iteration" is measured end to end
(decoding seconds over iterations, the prompts' prefill included); drafter ms and verify ms
come from `draft_cost_bench.py --target=` (a drafter row is matched by its label, `sd` or
`pard`), the forwards timed alone: the drafter's catch-up and drafting, and the target's
forward over all K + 1 tokens (with `verify_threshold` set, the loop verifies fewer when the
drafter is unsure).
What is left of the measured ms is the prefill's share, the loop's own work and the narrower
verifies' savings.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.drafter_flags import labelled_reports  # noqa: E402
from pard_jax import drafter_kinds as kinds  # noqa: E402
from pard_jax.eval import cells as cells_lib  # noqa: E402
from pard_jax.eval import report  # noqa: E402

_REPORTS = flags.DEFINE_list("reports", None, "LABEL=REPORT_DIR entries (decode.py report "
                             "folders), in table order", required=True)
_DRAFT_COST = flags.DEFINE_string("draft_cost", "", "draft_cost_bench.py's .json (optional)")
_OUT = flags.DEFINE_string("out", None, "markdown file to write", required=True)

HEADER = ("| engine | method | K | prompts | tokens | tau | accepted >= i drafts (i = 1..K) "
          "| ms per iteration | drafter ms | verify ms | tok/s | speedup vs ar | vs sd "
          "| identical to ar |")


def _ms(value: float | None) -> str:
  return f"{value:.0f}" if value is not None else "-"


def _ratio(value: float | None) -> str:
  return f"{value:.2f}x" if value is not None else "-"


def cost_lookup(draft_cost: dict | None):
  """(drafter ms, verify ms) of a cell from draft_cost_bench.py's results, or (None, None)."""
  drafter_ms = {row["label"]: row["ms"] for row in (draft_cost or {}).get("drafters", [])}
  verify_ms = (draft_cost or {}).get("verify_ms") or {}

  def lookup(cell: cells_lib.CellResult) -> tuple[float | None, float | None]:
    k = str(cell.num_draft_tokens)
    if cell.engine != cells_lib.OURS:
      return None, None
    return drafter_ms.get(cell.name, {}).get(k), verify_ms.get(k)
  return lookup


def rows(cells: list[cells_lib.CellResult], lookup) -> dict[str, list[str]]:
  """Markdown rows per prompt set, in the report's order."""
  by_key = {c.key: c for c in cells}
  table: dict[str, list[str]] = {}
  for c in cells:
    sd = by_key.get((c.prompt_set, c.engine, kinds.SD, "", c.num_draft_tokens))
    over_sd = (c.tokens_per_second / sd.tokens_per_second
               if sd is not None and c.method not in (kinds.AR, kinds.SD) else None)
    per_iteration = 1000 * c.seconds / c.num_iterations if c.num_iterations else None
    drafter_ms, verify_ms = lookup(c)
    table.setdefault(c.prompt_set, []).append("| " + " | ".join([
        c.engine, c.name, str(c.num_draft_tokens), str(c.num_prompts), str(c.num_tokens),
        f"{c.tau:.2f}" if c.tau else "-",
        " ".join(f"{a:.2f}" for a in c.acceptance_by_depth) or "-",
        _ms(per_iteration), _ms(drafter_ms), _ms(verify_ms), f"{c.tokens_per_second:.1f}",
        _ratio(c.speedup_vs_ar), _ratio(over_sd),
        f"{c.identical_to_ar}/{c.num_prompts}" if c.identical_to_ar is not None else "-"]) + " |")
  return table


def pair_table(runs: list[tuple[str, pathlib.Path]], draft_cost: dict | None = None) -> str:
  """Markdown: a section per report, a table per prompt set."""
  lookup = cost_lookup(draft_cost)
  lines = ["# A target/drafter pair side by side", ""]
  if draft_cost:
    lines.append(f"- drafter and verify ms: {draft_cost['device']}, {draft_cost['date']}; "
                 f"command `{draft_cost['command']}`")
  sections = []
  for label, directory in runs:
    config, env, cells = report.read_results(directory)
    lines.append(f"- {label}: `{directory}`, {env['device']}, {env['date']}; target "
                 f"`{config['target']}`, drafter `{config['drafter']}`, temperature "
                 f"{config['temperature']}, max_new_tokens {config['max_new_tokens']}; command "
                 f"`{env['command']}`")
    sections += ["", f"## {label}"]
    for prompt_set, set_rows in rows(cells, lookup).items():
      sections += ["", f"### {prompt_set}", "", HEADER, "|" + "---|" * 14, *set_rows]
  return "\n".join(lines + sections) + "\n"


def main(argv):
  del argv
  runs = labelled_reports(_REPORTS.value, "--reports")
  draft_cost = None
  if _DRAFT_COST.value:
    path = pathlib.Path(_DRAFT_COST.value)
    if not path.is_file():
      raise app.UsageError(f"--draft_cost: {path} is not a file (draft_cost_bench.py's .json)")
    draft_cost = json.loads(path.read_text())
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(pair_table(runs, draft_cost))
  print(out.read_text())


if __name__ == "__main__":
  app.run(main)
