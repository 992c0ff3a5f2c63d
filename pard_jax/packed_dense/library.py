"""Builds, loads and registers the packed-dense kernel (`packed_dense.cc`) with XLA:CPU.

The shared library is compiled on first use (`load`, called when a model is packed, never
when a config is checked) with the system C++ compiler against the installed jaxlib's FFI
headers, warnings on, and cached under `~/.cache/pard_jax` (`$XDG_CACHE_HOME`), keyed by the
source, the jaxlib version and the compiler, so a rebuild happens only when one changes.
`unavailable_reason` answers from what is cheap to know (the machine, its CPU flags, a compiler).
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
from absl import logging

TARGET = "pard_packed_dense"
_SOURCE = pathlib.Path(__file__).with_name("packed_dense.cc")
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra")


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
    # -isystem: warnings are about our source, not jaxlib's headers.
    result = subprocess.run([compiler, *_FLAGS, "-isystem", jax.ffi.include_dir(), str(_SOURCE),
                             "-o", str(built)], capture_output=True, text=True)
    if result.returncode != 0:
      raise OSError(f"{compiler} failed on {_SOURCE.name}: {result.stderr.strip()[-800:]}")
    if result.stderr.strip():
      logging.warning("%s warns on %s:\n%s", compiler, _SOURCE.name, result.stderr.strip()[-2000:])
    os.replace(built, path)
  return path


def _cpu_has_avx2_fma() -> bool:
  try:
    flags = next((line.split() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
  except OSError:
    return True  # no /proc (not Linux): the built library asks the CPU itself
  return "avx2" in flags and "fma" in flags


def unavailable_reason() -> str:
  """Why the kernel cannot run here ("" when it can, as far as it can be known unbuilt)."""
  if platform.machine().lower() not in ("x86_64", "amd64"):
    return f"the kernel is written for x86-64 CPUs, this is {platform.machine()}"
  if _compiler() is None:
    return "no C++ compiler found (install g++ or set CXX)"
  if not _cpu_has_avx2_fma():
    return "this CPU lacks AVX2 and FMA"
  return ""


@functools.cache
def load() -> None:
  """Builds (once) and registers the kernel with XLA:CPU; OSError when that fails."""
  reason = unavailable_reason()
  if reason:
    raise OSError(reason)
  lib = ctypes.cdll.LoadLibrary(str(_build(_compiler())))
  if not lib.PardPackedDenseSupported():
    raise OSError("this CPU lacks AVX2 and FMA")
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.PardPackedDense), platform="cpu")
