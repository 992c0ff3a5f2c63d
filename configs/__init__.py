"""Configs for decode.py, train.py and distill.py: plain ml_collections data, no jax.

Paths are absolute (from `ROOT`, this checkout), so a config works from any directory. The real
SmolLM2 weights are named by a `package:` reference and the Qwen2.5-Coder pair by `asset:`
references, resolved when a run uses them: importing a config needs neither jax nor the weights.
"""

import pathlib

from pard_jax.checkpoints.assets import SMOLLM2_GGUF  # noqa: F401 (for the configs)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
