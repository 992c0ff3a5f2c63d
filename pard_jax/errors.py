"""The errors a user can cause, in one flat vocabulary.

Each is a `PardJaxError`: the entry points print it as one line and exit with status 2, with no
traceback; any other exception is a bug and keeps its traceback.

- `ConfigError`: a setting is invalid; the message starts with `config.<field>:` (`require`).
- `DataError`: a data or prompt file cannot be used; the message names `file:line`.
- `CheckpointError`: a checkpoint is missing, corrupt, or does not fit the model.
- `DecodeError`: a decoding request through the Python API (prompts, models, settings).
"""

import pathlib
import tempfile


class PardJaxError(ValueError):
  """Bad input: a setting, a file, a checkpoint or a request."""


class ConfigError(PardJaxError):
  """A setting is invalid; the message names its field."""


class DataError(PardJaxError):
  """A data or prompt source cannot be used; the message names the file and line."""


class CheckpointError(PardJaxError):
  """A checkpoint is missing, corrupt, or does not match the model."""


class DecodeError(PardJaxError):
  """A decoding request cannot be served: prompts, settings or the target/drafter pairing."""


def require(ok: bool, field: str, message: str) -> None:
  """Raises a `ConfigError` naming `config.<field>` unless `ok`."""
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def require_writable(path: pathlib.Path, field: str) -> None:
  """Fails now, not after hours of work, when the file `path` (from `config.<field>`) cannot be
  written."""
  require(not path.is_dir(), field, f"{path} is a directory; give a file path")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write_check_"):
      pass
  except OSError as e:
    raise ConfigError(f"config.{field}: cannot write {path}: {e.strerror or e}") from e
