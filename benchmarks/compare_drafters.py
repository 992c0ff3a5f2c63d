r"""Side-by-side table of drafters evaluated by decode.py, one report folder each.

  python benchmarks/compare_drafters.py \
      --runs="PARD (CE)=benchmarks/results/x/pard_ce,ParallelSpec (CE+KL)=benchmarks/results/x/ps_kl" \
      --out=benchmarks/results/x/comparison.md

Each folder's speedups are over the `ar` cell measured in that same run, so every ratio is side
by side; tokens/s across folders compare only when the device (listed per run) is the same.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.drafter_flags import labelled_reports  # noqa: E402
from pard_jax import drafter_kinds as kinds  # noqa: E402
from pard_jax.eval import cells as cells_lib  # noqa: E402
from pard_jax.eval import report  # noqa: E402

_RUNS = flags.DEFINE_list("runs", None, "LABEL=REPORT_DIR entries, in table order",
                          required=True)
_OUT = flags.DEFINE_string("out", None, "markdown file to write", required=True)


def comparison(runs: list[tuple[str, pathlib.Path]]) -> str:
  """Markdown: per prompt set, every drafter cell of every run beside its run's `ar`."""
  lines = ["# Drafters side by side", ""]
  by_set: dict[str, list[str]] = {}
  for label, directory in runs:
    config, env, cells = report.read_results(directory)
    lines.append(f"- {label}: `{directory}`, drafter `{config['drafter']}`, {env['device']}, "
                 f"{env['date']}; command `{env['command']}`")
    ar = {c.prompt_set: c for c in cells
          if c.engine == cells_lib.OURS and c.method == kinds.AR}
    for c in cells:
      if c.engine != cells_lib.OURS or c.method == kinds.AR:
        continue
      by_set.setdefault(c.prompt_set, []).append(" | ".join([
          label, c.name, str(c.num_draft_tokens), f"{c.tau:.2f}",
          " ".join(f"{a:.2f}" for a in c.acceptance_by_depth),
          f"{c.tokens_per_second:.1f}", f"{ar[c.prompt_set].tokens_per_second:.1f}",
          f"{c.speedup_vs_ar:.2f}x",
          f"{c.identical_to_ar}/{c.num_prompts}" if c.identical_to_ar is not None else "-"]))
  header = ("| drafter | method | K | tau | accepted >= i drafts (i = 1..K) | tok/s | ar tok/s "
            "| speedup vs ar | identical to ar |")
  for prompt_set, rows in by_set.items():
    lines += ["", f"## {prompt_set}", "", header, "|" + "---|" * 9]
    lines += [f"| {row} |" for row in rows]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value)
  runs = labelled_reports(_RUNS.value, "--runs")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(comparison(runs))
  print(out.read_text())


if __name__ == "__main__":
  app.run(main)
