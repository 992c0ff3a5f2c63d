"""The evaluation report: `results.json`, `results.md`, plots and per-cell outputs in one folder.

`Report` owns the folder's format, reading and writing it. It is rewritten after every cell, so
an interrupted sweep loses nothing: a rerun with the same settings skips the finished cells
(their per-prompt outputs are kept in `outputs/`, for the identical-to-`ar` count). A folder
holds one sweep's settings and, per prompt set, the path and content hash of its prompts; a
rerun may ask for any subset of its cells or add cells, but other settings or other prompts
under a set's name are refused. One sweep at a time writes a folder (`locked`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import sys
from typing import Any, Sequence

import jax

from pard_jax.errors import ConfigError, DataError
from pard_jax.eval import prompts as prompts_lib
from pard_jax.eval.cells import OURS, CellResult
from pard_jax.eval.spec import EvalSpec
from pard_jax import files
from pard_jax import drafter_kinds as kinds
from pard_jax.files import write_atomically

LOCK = files.LOCK  # one of spec.REPORT_FILES, which no input or output may be
_RESTORE = "restore it from a copy, or use a new report_dir"


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


def device_slug(device: str) -> str:
  """A device's first words for file names ("cpu (Intel(R) Xeon(R) ..." -> cpu_intel_xeon), so
  that results of different machines do not overwrite each other."""
  words = device.lower().replace("(r)", "").split(",")[0]
  return "_".join("".join(c for c in w if c.isalnum()) for w in words.split()[:3])


def write_results(out_dir: str | os.PathLike, stem: str, results: dict[str, Any],
                  markdown: str) -> None:
  """A benchmark's results as `out_dir/stem.json` and `stem.md`, and the markdown printed."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
  (out_dir / f"{stem}.md").write_text(markdown)
  print(markdown)


def environment() -> dict[str, Any]:
  versions = {}
  for package in ("jax", "jaxlib", "flax", "transformers", "torch"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  return dict(device=device_name(), num_devices=jax.device_count(), versions=versions,
              python=platform.python_version(),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              command=" ".join(["python"] + sys.argv))


def read_results(directory: pathlib.Path
                 ) -> tuple[dict[str, Any], dict[str, Any], list[CellResult]]:
  """(config, environment, cells) of a report folder's `results.json`."""
  path = pathlib.Path(directory) / "results.json"
  damaged = f"the report is damaged: {_RESTORE}"
  try:
    stored = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    line = e.lineno if isinstance(e, json.JSONDecodeError) else 1
    raise DataError(f"{path}:{line}: not valid JSON ({e}); {damaged}") from e
  try:
    config, env = dict(stored["config"]), dict(stored["environment"])
    return config, env, [CellResult.from_json(record) for record in stored["cells"]]
  except (KeyError, TypeError, ValueError) as e:
    raise DataError(f"{path}: not a report's results.json ({type(e).__name__}: {e}); "
                    f"{damaged}") from e


def prompts_key(prompt_set: prompts_lib.PromptSet, token_ids: Sequence[Sequence[int]]
                ) -> dict[str, Any]:
  """What a report keys a set's cells by: where its prompts come from and the ids decoded."""
  digest = hashlib.sha256(json.dumps([list(ids) for ids in token_ids]).encode()).hexdigest()
  return dict(source=prompt_set.source, prompts=len(token_ids), sha256=digest)


def _describe(key: dict[str, Any]) -> str:
  return f"{key['prompts']} prompts of {key['source']}, sha256 {key['sha256'][:12]}"


def locked(directory: pathlib.Path | None):
  """Holds a report folder's lock (none without a folder): one sweep at a time writes it
  (`files.locked`)."""
  if directory is None:
    return contextlib.nullcontext()
  return files.locked(directory, "config.report_dir", "sweep", "report_dir")


def _cell_name(key: tuple[str, str, str, str, int]) -> str:
  prompt_set, engine, method, drafter, k = key
  return f"{prompt_set}/{engine}_{method}{f'_{drafter}' if drafter else ''}_k{k}.jsonl"


class Report:
  """Cells measured so far, optionally mirrored in a report folder (call under `locked`).

  `prompts` holds each set's `prompts_key`. The folder's config lists every method, K, set and
  peer it holds cells for: those stored first, then the ones this sweep adds.
  """

  def __init__(self, spec: EvalSpec, prompts: dict[str, dict[str, Any]]):
    self.spec, self.directory = spec, spec.report_dir
    self.cells: dict[tuple, CellResult] = {}
    self.config = dict(spec.identity(), methods=list(spec.methods),
                       num_draft_tokens=list(spec.draft_tokens),
                       drafter_labels=list(spec.drafter_labels),
                       prompt_sets=[s.name for s in spec.prompt_sets], prompts=prompts,
                       peers=list(spec.peers), mesh=list(spec.mesh_shape))
    self.env = environment()
    if self.directory is not None and (self.directory / "results.json").exists():
      stored_config, _, cells = read_results(self.directory)
      self._resume(stored_config, cells)

  def _resume(self, stored_config: dict[str, Any], cells: list[CellResult]) -> None:
    refuse = lambda what: ConfigError(f"config.report_dir: {self.directory} holds results "
                                      f"{what}; use a new report_dir or the same settings")
    identity = self.spec.identity()
    changed = {k: (stored_config.get(k), v) for k, v in identity.items()
               if stored_config.get(k) != v}
    if changed:
      field, (old, new) = next(iter(changed.items()))
      raise refuse(f"measured with other settings ({field}: {old!r} there, {new!r} now)")
    stored_prompts = stored_config.get("prompts")
    if not isinstance(stored_prompts, dict):
      raise refuse("that do not record their prompts' path and content (an older report)")
    for name, key in self.config["prompts"].items():
      if name in stored_prompts and stored_prompts[name] != key:
        raise refuse(f"for prompt set {name!r} of other prompts ({_describe(stored_prompts[name])}"
                     f" there, {_describe(key)} now)")
    union = lambda field: stored_config[field] + [v for v in self.config[field]
                                                  if v not in stored_config[field]]
    try:
      self.config.update({field: union(field) for field in
                          ("methods", "num_draft_tokens", "prompt_sets", "peers")},
                         prompts={**stored_prompts, **self.config["prompts"]})
    except (KeyError, TypeError) as e:
      raise DataError(f"{self.directory / 'results.json'}: not a report's results.json "
                      f"({type(e).__name__}: {e}); the report is damaged: {_RESTORE}") from e
    self.cells.update((cell.key, cell) for cell in cells)

  def done(self, key) -> bool:
    return key in self.cells

  def rows(self, key) -> list[dict]:
    """Per-prompt outputs of a finished cell, read back from the report folder."""
    path = self.directory / "outputs" / _cell_name(key)
    if not path.is_file():
      raise DataError(f"{path}: missing: the per-prompt outputs of a finished cell; {_RESTORE}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number}: not valid JSON ({e}); {_RESTORE}") from e
      if not isinstance(row, dict) or "output_ids" not in row:
        raise DataError(f"{path}:{number}: not a row of per-prompt outputs; {_RESTORE}")
      rows.append(row)
    if len(rows) != self.cells[key].num_prompts:
      raise DataError(f"{path}: {len(rows)} rows for the cell's {self.cells[key].num_prompts} "
                      f"prompts; {_RESTORE}")
    return rows

  def add(self, cell: CellResult, rows: Sequence[dict] = ()) -> None:
    self.cells[cell.key] = cell
    if self.directory is None:
      return
    if rows:
      path = self.directory / "outputs" / _cell_name(cell.key)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_atomically(self.directory / "results.json", json.dumps(self.to_json(), indent=2))
    write_atomically(self.directory / "results.md", self.to_markdown())

  def ordered(self) -> list[CellResult]:
    """Every cell the folder holds: per set, ours (ar first), then the peers."""
    sets = {name: i for i, name in enumerate(self.config["prompt_sets"])}
    methods = {m: i for i, m in enumerate(self.config["methods"])}
    drafters = {label: i for i, label in enumerate(self.config["drafter_labels"])}
    return sorted(self.cells.values(), key=lambda c: (sets[c.prompt_set], c.engine != OURS,
                                                      methods[c.method], drafters[c.drafter],
                                                      c.num_draft_tokens))

  def to_json(self) -> dict[str, Any]:
    return dict(config=self.config, environment=self.env,
                cells=[c.to_json() for c in self.ordered()])

  def to_markdown(self) -> str:
    env = self.env
    lines = ["# Evaluation", "", f"- device: {env['device']}",
             f"- mesh (data, fsdp, tensor): {tuple(self.config.get('mesh', (1, 1, 1)))} of "
             f"{env.get('num_devices', 1)} device(s)",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
             f"- date: {env['date']}", f"- command: `{env['command']}`",
             "- settings: " + ", ".join(f"{k}={v}" for k, v in self.config.items()), ""]
    for prompt_set in dict.fromkeys(c.prompt_set for c in self.ordered()):
      lines += [f"## {prompt_set}", "", format_table(
          [c for c in self.ordered() if c.prompt_set == prompt_set], markdown=True), ""]
    return "\n".join(lines)

  def plot(self) -> list[pathlib.Path]:
    """Speedup and τ against K per method (and drafter), and acceptance per depth, one figure
    each per set."""
    if self.directory is None:
      return []
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.ticker  # pylint: disable=g-import-not-at-top
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    written = []
    for prompt_set in dict.fromkeys(c.prompt_set for c in self.ordered()):
      ours = [c for c in self.ordered() if c.prompt_set == prompt_set and c.engine == OURS
              and c.method != kinds.AR]
      if not ours:
        continue
      fig, (speed_ax, tau_ax, depth_ax) = plt.subplots(1, 3, figsize=(15, 4))
      for name in dict.fromkeys(c.name for c in ours):
        cells = sorted((c for c in ours if c.name == name), key=lambda c: c.num_draft_tokens)
        ks = [c.num_draft_tokens for c in cells]
        speed_ax.plot(ks, [c.speedup_vs_ar for c in cells], "o-", label=name)
        tau_ax.plot(ks, [c.tau for c in cells], "o-", label=name)
        for c in cells:
          depth_ax.plot(range(1, c.num_draft_tokens + 1), c.acceptance_by_depth, "o-",
                        label=f"{name} K={c.num_draft_tokens}")
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
  """One line per cell: engine, method, K, tokens, τ, tok/s, speedup, identity, acceptance;
  with `sd` cells among `cells` (one prompt set), also each drafted cell's speed over `sd`'s at
  its K."""
  sd = {(c.engine, c.num_draft_tokens): c.tokens_per_second for c in cells
        if c.method == kinds.SD}
  header = ["engine", "method", "K", "prompts", "tokens", "tau", "tok/s", "speedup vs ar",
            "ours/peer", "identical to ar", "accepted >= i drafts (i = 1..K)"]
  if sd:
    header.insert(8, "vs sd")
  body = []
  for c in cells:
    row = [
        c.engine, c.name, str(c.num_draft_tokens), str(c.num_prompts), str(c.num_tokens),
        f"{c.tau:.2f}" if c.tau is not None else "-", f"{c.tokens_per_second:.1f}",
        f"{c.speedup_vs_ar:.2f}x" if c.speedup_vs_ar is not None else "-",
        f"{c.ours_vs_peer:.2f}x" if c.ours_vs_peer is not None else "-",
        f"{c.identical_to_ar}/{c.num_prompts}" if c.identical_to_ar is not None else "-",
        " ".join(f"{a:.2f}" for a in c.acceptance_by_depth) or "-"]
    if sd:
      over = sd.get((c.engine, c.num_draft_tokens))
      row.insert(8, f"{c.tokens_per_second / over:.2f}x"
                 if over and c.method not in (kinds.AR, kinds.SD) else "-")
    body.append(row)
  if markdown:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in body])
  widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
  fmt = lambda row: "  ".join(v.ljust(w) if i < 2 or i == len(row) - 1 else v.rjust(w)
                              for i, (v, w) in enumerate(zip(row, widths)))
  return "\n".join([fmt(header), "-" * len(fmt(header))] + [fmt(row) for row in body])
