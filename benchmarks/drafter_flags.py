"""What the benchmarks share to name drafters: `--drafters=LABEL=PATH,...`, read and checked."""

from __future__ import annotations

import pathlib

from absl import app

from pard_jax import checkpoints


def labelled_drafters(items: list[str]) -> list[tuple[str, str]]:
  """`(label, path)` of each `LABEL=PATH`, every one checked before any model loads: a
  directory whose config.json declares a drafter kind."""
  drafters = [item.partition("=")[::2] for item in items]
  for label, path in drafters:
    if not label or not pathlib.Path(path).exists():
      raise app.UsageError(f"--drafters: {label}={path} is not LABEL=PATH of a directory")
    if checkpoints.read_config(path).drafter is None:
      raise app.UsageError(f"--drafters: {path} declares no drafter kind")
  return drafters
