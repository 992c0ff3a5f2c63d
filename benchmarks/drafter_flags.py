"""What the benchmarks share to name drafters and reports: `--drafters=LABEL=PATH,...` and
`LABEL=REPORT_DIR,...`, read and checked."""

from __future__ import annotations

import pathlib

from absl import app

from pard_jax import checkpoints
from pard_jax.checkpoints import assets
from pard_jax.errors import CheckpointError


def labelled_drafters(items: list[str], plain_ok: bool = False) -> list[tuple[str, str]]:
  """`(label, path)` of each `LABEL=PATH` (`asset:` and `package:` references resolved), every
  one checked before any model loads: a checkpoint whose config.json declares a drafter kind
  (or, with `plain_ok`, a plain AR model: an `sd` drafter)."""
  drafters = []
  for label, path in (item.partition("=")[::2] for item in items):
    try:
      path = str(assets.resolve(path))
    except CheckpointError as e:
      raise app.UsageError(f"--drafters: {e}") from None
    if not label or not pathlib.Path(path).exists():
      raise app.UsageError(f"--drafters: {label}={path} is not LABEL=PATH of a checkpoint")
    if checkpoints.read_config(path).drafter is None and not plain_ok:
      raise app.UsageError(f"--drafters: {path} declares no drafter kind")
    drafters.append((label, path))
  return drafters


def labelled_reports(entries: list[str], flag: str) -> list[tuple[str, pathlib.Path]]:
  """`(label, folder)` of each `LABEL=REPORT_DIR`: a decode.py report folder with results.json."""
  runs = []
  for entry in entries:
    label, sep, directory = entry.partition("=")
    if not sep or not label or not (pathlib.Path(directory) / "results.json").exists():
      raise app.UsageError(f"{flag}: {entry!r} is not LABEL=REPORT_DIR with a results.json")
    runs.append((label, pathlib.Path(directory)))
  return runs
