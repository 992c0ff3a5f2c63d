"""Builds, loads and registers the packed-dense kernel (`packed_dense.cc`) with XLA:CPU.

The shared library is compiled on first use with the system C++ compiler against the
installed jaxlib's FFI headers and cached under `~/.cache/pard_jax` (`$XDG_CACHE_HOME`), keyed
by the source, the jaxlib version and the compiler, so a rebuild happens only when one changes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

TARGET = "pard_packed_dense"
_SOURCE = pathlib.Path(__file__).with_name("packed_dense.cc")
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")


def _cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "pard_jax"


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _build(compiler: str) -> pathlib.Path:
  source = _SOURCE.read_bytes()
  key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), compiler.encode(),
                                   " ".join(_FLAGS).encode()])).hexdigest()[:16]
  path = _cache_dir() / f"packed_dense-{key}.so"
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  # Compiled beside its final name and renamed, so concurrent first uses never load half a file.
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    built = pathlib.Path(tmp) / path.name
    result = subprocess.run([compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE),
                             "-o", str(built)], capture_output=True, text=True)
    if result.returncode != 0:
      raise OSError(f"{compiler} failed on {_SOURCE.name}: {result.stderr.strip()[-800:]}")
    os.replace(built, path)
  return path


@functools.cache
def _load() -> tuple[bool, str]:
  if platform.machine().lower() not in ("x86_64", "amd64"):
    return False, f"the kernel is written for x86-64 CPUs, this is {platform.machine()}"
  compiler = _compiler()
  if compiler is None:
    return False, "no C++ compiler found (install g++ or set CXX)"
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(compiler)))
  except OSError as error:
    return False, str(error)
  if not lib.PardPackedDenseSupported():
    return False, "this CPU lacks AVX2 and FMA"
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.PardPackedDense), platform="cpu")
  return True, ""


def unavailable_reason() -> str:
  """Why the kernel cannot run here ("" when it can); builds and registers it on first call."""
  ok, reason = _load()
  return "" if ok else reason
