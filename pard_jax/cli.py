"""What the three entry points (`decode.py`, `train.py`, `distill.py`) share.

They print progress bars and tables, not logs: absl logs at WARNING unless `--verbosity=0`
(or `-v 0`) asks for INFO. A user error (`errors.PardJaxError`) prints as one line,
`decode.py: config.method: unknown method 'bogus'; ...`, and exits with status 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Callable, Sequence

from absl import app, flags, logging

from pard_jax.errors import PardJaxError


def run(main: Callable[[], None], argv: Sequence[str] | None = None) -> None:
  """`app.run` for an entry point whose `main()` takes no arguments; `argv` (program name
  first) defaults to `sys.argv`."""

  def absl_main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      main()
    except PardJaxError as e:
      print(f"{pathlib.Path(argv[0]).name}: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(absl_main, argv=None if argv is None else list(argv))
