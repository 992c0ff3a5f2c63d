"""Legacy `pytorch_model.bin` weights, through `torch.load(weights_only=True)`.

Nothing is ever unpickled: `weights_only` refuses any file that would need to run code. torch
is imported only here, when such a file is read.
"""

from __future__ import annotations

import pathlib

import ml_dtypes
import numpy as np

from pard_jax.errors import CheckpointError


def read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A `.bin` state dict as numpy arrays (bfloat16 kept as `ml_dtypes.bfloat16`, no copy)."""
  import torch
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # weights_only raises many types, all meaning "not plain tensors"
    raise CheckpointError(f"{path}: refusing to load (not a plain tensor checkpoint): {e}") from e
  # numpy has no bfloat16: reinterpret its bits as ml_dtypes' instead of widening to float32.
  return {name: tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
          if tensor.dtype == torch.bfloat16 else tensor.numpy()
          for name, tensor in state.items()}
