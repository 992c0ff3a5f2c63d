"""What the three entry points (`decode.py`, `train.py`, `distill.py`) share.

They print progress bars and tables, not logs: absl logs at WARNING unless `--verbosity=0`
(or `-v 0`) asks for INFO. A user error (`errors.PardJaxError`) prints as one line,
`decode.py: config.method: unknown method 'bogus'; ...`, and exits with status 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import pathlib
import sys
from typing import Callable, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections.config_flags import config_flags

from pard_jax.errors import PardJaxError


def unknown_setting(argv: Sequence[str], default_config: str | None = None) -> str | None:
  """For the first `--config.KEY` of `argv` that the config file (`--config=`, else
  `default_config`) lacks: one line naming it and the closest known settings; else None."""
  path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")),
              default_config)
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  if not path or not overrides:
    return None
  try:  # the file as the flag loads it, without its overrides
    config = config_flags.ConfigFileFlagParser("config", lock_config=False).parse(path)
  except Exception:  # pylint: disable=broad-except  # the flag reports a bad file itself
    return None
  for arg in overrides:
    parts = arg[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for i, part in enumerate(parts):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
        continue
      keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      known = [".".join(parts[:i] + [k]) for k in keys]
      close = difflib.get_close_matches(".".join(parts[:i + 1]), known, n=3, cutoff=0.6)
      hint = (f"; did you mean {' or '.join('config.' + c for c in close)}?" if close
              else f"; known: {', '.join('config.' + k for k in known)}" if known else "")
      return f"config.{'.'.join(parts)}: unknown setting{hint}"
  return None


def refuse_unknown_settings(default_config: str | None = None,
                            argv: Sequence[str] | None = None) -> None:
  """Exits with status 2 and one line when a `--config.KEY` names no setting (the commonest
  mistake). Called before the config flag is defined: a flag with a default file parses the
  overrides as it is defined, with a traceback for an unknown one."""
  argv = sys.argv if argv is None else argv
  message = unknown_setting(argv, default_config)
  if message is not None:
    print(f"{pathlib.Path(argv[0]).name}: {message}", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[], None], argv: Sequence[str] | None = None,
        interrupted: str = "") -> None:
  """`app.run` for an entry point whose `main()` takes no arguments; `argv` (program name
  first) defaults to `sys.argv`. Ctrl-C prints `interrupted` (what was kept, how to resume) as
  one line and exits with status 130."""

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
    except KeyboardInterrupt:
      print(f"\n{pathlib.Path(argv[0]).name}: interrupted{'; ' if interrupted else ''}"
            f"{interrupted}", file=sys.stderr)
      sys.exit(130)

  app.run(absl_main, argv=None if argv is None else list(argv))
