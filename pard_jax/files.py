"""Files that a kill mid-write must never leave half written (reports, run settings)."""

from __future__ import annotations

import pathlib


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes `text` beside `path` (as `.<name>.tmp`) and renames it over `path`."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  tmp.replace(path)
