"""The evaluation report: `results.json`, `results.md`, plots and per-cell outputs in one folder.

`Report` owns the folder's format, reading and writing it. It is rewritten after every cell, so
an interrupted sweep loses nothing: a rerun with the same settings skips the finished cells
(their per-prompt outputs are kept in `outputs/`, for the identical-to-`ar` count).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
import platform
import sys
from typing import Any, Sequence

import jax

from pard_jax.eval.cells import OURS, CellResult
from pard_jax.errors import ConfigError
from pard_jax.eval.spec import EvalSpec


def device_name() -> str:
  """The accelerator's kind, or the CPU model on a CPU-only machine."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines
                if line.startswith("model name")), platform.processor())
    return f"cpu ({cpu}, {jax.local_device_count()} jax device(s))"
  return device.device_kind


def environment() -> dict[str, Any]:
  versions = {}
  for package in ("jax", "jaxlib", "flax", "transformers", "torch"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  return dict(device=device_name(), versions=versions, python=platform.python_version(),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              command=" ".join(["python"] + sys.argv))


def read_results(directory: pathlib.Path
                 ) -> tuple[dict[str, Any], dict[str, Any], list[CellResult]]:
  """(config, environment, cells) of a report folder's `results.json`."""
  stored = json.loads((pathlib.Path(directory) / "results.json").read_text())
  return (stored["config"], stored["environment"],
          [CellResult.from_json(record) for record in stored["cells"]])


def _cell_name(key: tuple[str, str, str, int]) -> str:
  prompt_set, engine, method, k = key
  return f"{prompt_set}/{engine}_{method}_k{k}.jsonl"


class Report:
  """Cells measured so far, optionally mirrored in a report folder."""

  def __init__(self, spec: EvalSpec):
    self.spec, self.directory = spec, spec.report_dir
    self.cells: dict[tuple, CellResult] = {}
    self.config = dict(spec.identity(), methods=list(spec.methods),
                       num_draft_tokens=list(spec.draft_tokens),
                       prompt_sets=[s.name for s in spec.prompt_sets], peers=list(spec.peers))
    self.env = environment()
    if self.directory is not None and (self.directory / "results.json").exists():
      stored_config, _, cells = read_results(self.directory)
      self._resume(stored_config, cells)

  def _resume(self, stored_config: dict[str, Any], cells: list[CellResult]) -> None:
    identity = self.spec.identity()
    changed = {k: (stored_config.get(k), v) for k, v in identity.items()
               if stored_config.get(k) != v}
    if changed:
      field, (old, new) = next(iter(changed.items()))
      raise ConfigError(
          f"config.report_dir: {self.directory} holds results measured with other settings "
          f"({field}: {old!r} there, {new!r} now); use a new report_dir or the same settings")
    self.cells.update((cell.key, cell) for cell in cells)

  def done(self, key) -> bool:
    return key in self.cells

  def rows(self, key) -> list[dict]:
    """Per-prompt outputs of a finished cell, read back from the report folder."""
    path = self.directory / "outputs" / _cell_name(key)
    return [json.loads(line) for line in path.read_text().splitlines()]

  def add(self, cell: CellResult, rows: Sequence[dict] = ()) -> None:
    self.cells[cell.key] = cell
    if self.directory is None:
      return
    if rows:
      path = self.directory / "outputs" / _cell_name(cell.key)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    self._write("results.json", json.dumps(self.to_json(), indent=2))
    self._write("results.md", self.to_markdown())

  def _write(self, name: str, text: str) -> None:
    # Written aside and renamed: a kill mid-write never leaves a half results.json.
    tmp = self.directory / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(self.directory / name)

  def ordered(self) -> list[CellResult]:
    sets = {s.name: i for i, s in enumerate(self.spec.prompt_sets)}
    methods = {m: i for i, m in enumerate(self.spec.methods)}
    return sorted(self.cells.values(), key=lambda c: (sets[c.prompt_set], c.engine != OURS,
                                                      methods[c.method], c.num_draft_tokens))

  def to_json(self) -> dict[str, Any]:
    return dict(config=self.config, environment=self.env,
                cells=[c.to_json() for c in self.ordered()])

  def to_markdown(self) -> str:
    env = self.env
    lines = ["# Evaluation", "", f"- device: {env['device']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
             f"- date: {env['date']}", f"- command: `{env['command']}`",
             "- settings: " + ", ".join(f"{k}={v}" for k, v in self.config.items()), ""]
    for prompt_set in dict.fromkeys(c.prompt_set for c in self.ordered()):
      lines += [f"## {prompt_set}", "", format_table(
          [c for c in self.ordered() if c.prompt_set == prompt_set], markdown=True), ""]
    return "\n".join(lines)

  def plot(self) -> list[pathlib.Path]:
    """Speedup and τ against K per method, and acceptance per depth, one figure each per set."""
    if self.directory is None:
      return []
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.ticker  # pylint: disable=g-import-not-at-top
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    written = []
    for prompt_set in dict.fromkeys(c.prompt_set for c in self.ordered()):
      ours = [c for c in self.ordered() if c.prompt_set == prompt_set and c.engine == OURS
              and c.method != "ar"]
      if not ours:
        continue
      fig, (speed_ax, tau_ax, depth_ax) = plt.subplots(1, 3, figsize=(15, 4))
      for method in dict.fromkeys(c.method for c in ours):
        cells = sorted((c for c in ours if c.method == method), key=lambda c: c.num_draft_tokens)
        ks = [c.num_draft_tokens for c in cells]
        speed_ax.plot(ks, [c.speedup_vs_ar for c in cells], "o-", label=method)
        tau_ax.plot(ks, [c.tau for c in cells], "o-", label=method)
        for c in cells:
          depth_ax.plot(range(1, c.num_draft_tokens + 1), c.acceptance_by_depth, "o-",
                        label=f"{method} K={c.num_draft_tokens}")
      speed_ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
      depth_ax.set_ylim(0, 1.05)
      for ax, title, ylabel in ((speed_ax, "speedup over ar", "x"),
                                (tau_ax, "tau (tokens per iteration)", "tokens"),
                                (depth_ax, "accepted at least i drafts", "share of iterations")):
        ax.set_title(f"{prompt_set}: {title}")
        ax.set_xlabel("depth i" if ax is depth_ax else "K (draft tokens)")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
      fig.tight_layout()
      path = self.directory / f"{prompt_set}.png"
      fig.savefig(path, dpi=100)
      plt.close(fig)
      written.append(path)
    return written


def format_table(cells: Sequence[CellResult], markdown: bool = False) -> str:
  """One line per cell: engine, method, K, tokens, τ, tok/s, speedup, identity, acceptance."""
  header = ["engine", "method", "K", "prompts", "tokens", "tau", "tok/s", "speedup vs ar",
            "ours/peer", "identical to ar", "accepted >= i drafts (i = 1..K)"]
  body = []
  for c in cells:
    body.append([
        c.engine, c.method, str(c.num_draft_tokens), str(c.num_prompts), str(c.num_tokens),
        f"{c.tau:.2f}" if c.tau is not None else "-", f"{c.tokens_per_second:.1f}",
        f"{c.speedup_vs_ar:.2f}x" if c.speedup_vs_ar is not None else "-",
        f"{c.ours_vs_peer:.2f}x" if c.ours_vs_peer is not None else "-",
        f"{c.identical_to_ar}/{c.num_prompts}" if c.identical_to_ar is not None else "-",
        " ".join(f"{a:.2f}" for a in c.acceptance_by_depth) or "-"])
  if markdown:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in body])
  widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
  fmt = lambda row: "  ".join(v.ljust(w) if i < 2 or i == len(row) - 1 else v.rjust(w)
                              for i, (v, w) in enumerate(zip(row, widths)))
  return "\n".join([fmt(header), "-" * len(fmt(header))] + [fmt(row) for row in body])
