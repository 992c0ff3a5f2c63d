"""The main job's Qwen2.5-Coder pair as setup.sh installs it: named by portable `asset:`
references, a missing file named with its install step, every quantisation type its GGUFs hold
read exactly, and the 0.5B decoding as transformers does on the same file."""

import os
import subprocess
import sys

import numpy as np
import pytest

from pard_jax import checkpoints
from pard_jax.checkpoints import assets
from pard_jax.errors import CheckpointError
from tests.helpers import ROOT

PAIR = (assets.QWEN_CODER_TARGET, assets.QWEN_CODER_DRAFTER)
installed = pytest.mark.skipif(
    not all((assets.models_dir() / ref[len(assets.ASSET):]).exists() for ref in PAIR),
    reason="needs the Qwen2.5-Coder pair: ./setup.sh")


def test_a_missing_asset_names_its_install_step(tmp_path, monkeypatch):
  monkeypatch.setenv("PARD_JAX_DATA", str(tmp_path))
  with pytest.raises(CheckpointError, match=r"not installed here .*run ./setup.sh"):
    assets.resolve(assets.QWEN_CODER_TARGET)
  env = dict(os.environ, PARD_JAX_DATA=str(tmp_path))
  proc = subprocess.run([sys.executable, str(ROOT / "decode.py"), "--config=configs/decode.py"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "config.target" in lines[0] and "./setup.sh" in lines[0], lines


@installed
def test_installed_files_are_named_portably():
  for ref in PAIR:
    path = assets.resolve(ref)
    assert assets.reference(path) == ref and assets.portable(path) == ref


def _q8_0(raw: np.ndarray) -> np.ndarray:
  """ggml's Q8_0, written out: blocks of a float16 scale and 32 int8 values."""
  blocks = raw.reshape(-1, 34)
  d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
  return (d * blocks[:, 2:].view(np.int8)).reshape(-1)


def _q5_0(raw: np.ndarray) -> np.ndarray:
  """ggml's Q5_0, written out: a float16 scale, 32 high bits, 16 bytes of low nibbles."""
  blocks = raw.reshape(-1, 22)
  d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
  qh = blocks[:, 2:6].copy().view(np.uint32)
  qs = blocks[:, 6:].astype(np.uint32)
  j = np.arange(16, dtype=np.uint32)
  low = (qs & 0xF) | (((qh >> j) << 4) & 0x10)
  high = (qs >> 4) | ((qh >> (j + 12)) & 0x10)
  return (d * (np.concatenate([low, high], axis=1).astype(np.float32) - 16)).reshape(-1)


@installed
@pytest.mark.parametrize("ref", PAIR, ids=["target", "drafter"])
def test_every_quantisation_type_loads_exactly(ref):
  """Per type the file holds, its smallest tensor as our loader reads it against gguf's own
  dequantisation (and, for Q8_0 and Q5_0, the block formats written out here)."""
  import gguf
  from pard_jax.checkpoints import config_json, gguf_io
  path = assets.resolve(ref)
  reader = gguf_io.open_gguf(path)  # parsed once: a GGUF's metadata takes seconds to read
  config = config_json.gguf_checkpoint_config(path, reader).model
  fetch = gguf_io.gguf_fetcher(path, reader, config)
  hf_names = {checkpoints.hf_name(p)[0] for p in _param_paths(config)}
  by_gguf = {gguf_name(n): n for n in hf_names}
  seen = {}
  for t in sorted(reader.tensors, key=lambda t: int(t.n_elements)):
    kind = t.tensor_type.name
    if kind in seen or t.name not in by_gguf:
      continue
    expected = np.asarray(gguf.dequantize(t.data, t.tensor_type), np.float32)
    ours = fetch(by_gguf[t.name])
    np.testing.assert_array_equal(ours, expected.reshape(ours.shape))
    written_out = {"Q8_0": _q8_0, "Q5_0": _q5_0}.get(kind)
    if written_out is not None:
      np.testing.assert_array_equal(ours.reshape(-1), written_out(np.asarray(t.data).reshape(-1)))
    seen[kind] = t.name
  wanted = {"Q4_K", "Q6_K", "F32"} | ({"Q5_0", "Q8_0"} if ref == assets.QWEN_CODER_DRAFTER
                                      else set())
  assert wanted <= set(seen), seen


def gguf_name(hf_name: str) -> str:
  from pard_jax.checkpoints import gguf_io
  return gguf_io._gguf_name(hf_name)  # pylint: disable=protected-access


def _param_paths(config):
  import jax
  from flax import nnx
  from pard_jax.model import abstract_model
  from pard_jax.sharding import path_str
  _, state = nnx.split(abstract_model(config))
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]


@installed
@pytest.mark.slow
def test_the_drafter_decodes_greedily_as_transformers_does():
  import torch
  import transformers
  from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
  path = assets.resolve(assets.QWEN_CODER_DRAFTER)
  tokenizer = checkpoints.load_tokenizer(path)
  prompt = list(tokenizer.apply_chat_template(
      [{"role": "user", "content": "Write a Python function that reverses a string."}],
      add_generation_prompt=True, return_dict=False))
  ours = SpeculativeDecoder(checkpoints.load_model(path), None, DecodeConfig(
      max_new_tokens=24, stop_token_ids=())).generate([prompt]).output_ids[0]
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = hf.generate(torch.as_tensor([prompt]), max_new_tokens=24, do_sample=False,
                         eos_token_id=None)[0, len(prompt):].tolist()
  assert list(ours) == theirs
