"""The packed-dense kernel (`pard_jax.packed_dense`): its products, a packed model's logits,
and exact decoding on it (greedy equals `ar`, sampling keeps the target's distribution)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pard_jax import drafter_kinds as kinds
from pard_jax import packed_dense
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
from pard_jax.errors import ConfigError
from pard_jax.model import create_model
from pard_jax.packed_dense import DenseKernel, PackedDense, library
from tests.helpers import chi_square_pvalue, exact_distribution, feature_drafter, perturbed

REASON = packed_dense.unavailable_reason("float32")
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"packed kernel unavailable: {REASON}")

TARGET = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128)


@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 13, 40])
@pytest.mark.parametrize("fan_in, out", [(8, 16), (33, 50), (64, 96)])
def test_packed_dense_equals_the_product(rows, fan_in, out):
  rng = np.random.default_rng(rows * 100 + out)
  kernel, bias = rng.normal(size=(fan_in, out)), rng.normal(size=out)
  x = rng.normal(size=(2, rows, fan_in))
  dense = PackedDense(jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))
  y = np.asarray(jax.jit(lambda x: dense(x))(jnp.asarray(x, jnp.float32)))
  assert y.shape == (2, rows, out)
  np.testing.assert_allclose(y, x @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_a_rows_result_does_not_depend_on_the_other_rows():
  # Each output is one multiply-add chain over the inputs in order, however many rows share
  # the call: a verify forward's dense layers give a token what a 1-token forward would.
  rng = np.random.default_rng(0)
  dense = PackedDense(jnp.asarray(rng.normal(size=(576, 160)), jnp.float32))
  x = jnp.asarray(rng.normal(size=(9, 576)), jnp.float32)
  together = np.asarray(dense(x))
  for row in (0, 4, 8):
    np.testing.assert_array_equal(np.asarray(dense(x[row:row + 1]))[0], together[row])


@pytest.mark.parametrize("config", [
    TARGET.replace(tie_word_embeddings=True),
    TARGET.replace(attention_bias=True),  # an untied head, qkv biases
    TARGET.replace(tie_word_embeddings=True, draft_vocab=(0, 3, 5, 7, 11, 39)),
], ids=["tied", "untied_bias", "restricted_head"])
def test_packed_model_gives_the_models_logits(config):
  model = perturbed(create_model(config, 0), 0.5, 1)  # nonzero biases too
  packed = packed_dense.pack(model)
  tokens = jnp.asarray([[1, 5, 9, 2, 30]])
  positions = jnp.arange(5)[None]
  want, _ = model(tokens, positions)
  got, _ = packed(tokens, positions)
  finite = np.isfinite(np.asarray(want))
  np.testing.assert_array_equal(np.isfinite(np.asarray(got)), finite)
  np.testing.assert_allclose(np.asarray(got)[finite], np.asarray(want)[finite], atol=1e-5)
  # The packed copy is new: the model itself still runs on nnx.Linear.
  assert type(model.layers[0].mlp.up_proj).__name__ == "Linear" and model.packed_head is None


def _generate(target, drafter, kind, prompts, **settings):
  cfg = DecodeConfig(drafter_kind=kind, **settings)
  return SpeculativeDecoder(target, drafter, cfg).generate(prompts, seed=settings.get("seed", 0))


LAYERS = (0, -1)
KINDS = {"pard": kinds.PardDrafter(39), "parallelspec": kinds.ParallelSpecDrafter((36, 37, 38)),
         "sd": kinds.AutoregressiveDrafter(), "pard_features": kinds.PardDrafter(39, LAYERS)}


@pytest.mark.parametrize("method", [
    "pard", "pard_features", pytest.param("sd", marks=pytest.mark.slow),
    pytest.param("parallelspec", marks=pytest.mark.slow)])
def test_greedy_decoding_on_the_packed_kernel_equals_autoregressive(method):
  target = create_model(TARGET, 0)
  drafter = (feature_drafter(target, LAYERS, num_layers=1, seed=1) if method == "pard_features"
             else perturbed(target, 0.1, 2))
  target, drafter = packed_dense.pack(target), packed_dense.pack(drafter)
  prompts = [[1, 2, 3, 4], [5], [6, 7]]
  common = dict(max_new_tokens=14, stop_token_ids=(3,))
  ar = _generate(target, None, kinds.NoDrafter(), prompts, **common)
  spec = _generate(target, drafter, KINDS[method], prompts, num_draft_tokens=4,
                   **common)
  assert spec.output_ids == ar.output_ids
  if method != "pard_features":  # its random feature projection makes it a poor drafter
    assert max(a for row in spec.accept_lengths for a in row) > 1  # the drafts were used


@pytest.mark.slow  # the greedy cases above stay in the fast subset
def test_sampling_on_the_packed_kernel_preserves_the_target_distribution():
  config = ModelConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_layers=1,
                       num_heads=2, num_kv_heads=1, head_dim=8)
  target, drafter = create_model(config, 0), create_model(config, 1)
  for model in (target, drafter):
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 40
  prompt, steps = [1, 3], 3
  exact = exact_distribution(target, prompt, steps)
  result = _generate(packed_dense.pack(target), packed_dense.pack(drafter),
                     kinds.PardDrafter(4), [prompt] * 6000, num_draft_tokens=2,
                     max_new_tokens=steps, temperature=1.0)
  assert chi_square_pvalue(np.asarray(result.output_ids), exact) > 1e-3


def test_dense_kernel_names_its_choices_and_refuses_what_cannot_run():
  with pytest.raises(ConfigError, match=r"config.dense_kernel: unknown 'fast'; choose one of "
                                        r"auto, xla, packed"):
    DenseKernel.parse("fast")
  with pytest.raises(ConfigError, match=r"config.dense_kernel: 'packed' cannot run here: it "
                                        r"computes in float32 only"):
    packed_dense.resolve(DenseKernel.PACKED, "bfloat16")
  assert packed_dense.resolve(DenseKernel.AUTO, "bfloat16") is DenseKernel.XLA
  assert packed_dense.resolve(DenseKernel.AUTO, "float32") is DenseKernel.PACKED
  assert packed_dense.resolve(DenseKernel.XLA, "float32") is DenseKernel.XLA


def test_a_failing_compiler_is_named_with_its_message(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  failing = tmp_path / "broken-c++"
  failing.write_text("#!/bin/sh\necho 'fatal: no headers' >&2\nexit 1\n")
  failing.chmod(0o755)
  with pytest.raises(OSError, match=r"broken-c\+\+ failed on packed_dense.cc: fatal: no headers"):
    library._build(str(failing))
  assert not list((tmp_path / "pard_jax").glob("*.so"))  # nothing half-built is left to load


def test_auto_falling_back_to_xla_says_why(monkeypatch, caplog):
  monkeypatch.setattr(packed_dense, "unavailable_reason", lambda dtype: "no C++ compiler found")
  with caplog.at_level("WARNING"):
    assert packed_dense.resolve(DenseKernel.AUTO, "float32") is DenseKernel.XLA
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and "no C++ compiler found" in lines[0] and "XLA" in lines[0], lines


def test_checking_a_config_builds_nothing(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  packed_dense.resolve(DenseKernel.AUTO, "float32")
  assert not (tmp_path / "pard_jax").exists()


def test_compiler_warnings_are_shown(tmp_path, monkeypatch, caplog):
  """Built with -Wall -Wextra: what the compiler says about the source reaches the log."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  warning = tmp_path / "warning-c++"
  # Writes its -o target, complaining on stderr.
  warning.write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\n: > "$2"\n'
                     "echo 'packed_dense.cc:1: warning: unused variable x' >&2\n")
  warning.chmod(0o755)
  with caplog.at_level("WARNING"):
    library._build(str(warning))  # pylint: disable=protected-access
  assert any("unused variable x" in r.getMessage() for r in caplog.records)
  assert "-Wall" in library._FLAGS and "-w" not in library._FLAGS  # pylint: disable=protected-access


def test_packing_in_place_gives_the_same_logits_without_a_second_copy():
  config = TARGET.replace(tie_word_embeddings=True)
  tokens, positions = jnp.asarray([[1, 5, 9, 2, 30]]), jnp.arange(5)[None]
  model = perturbed(create_model(config, 0), 0.5, 1)
  want, _ = packed_dense.pack(model)(tokens, positions)
  packed = packed_dense.pack(model, in_place=True)
  assert packed is model and type(model.layers[0].mlp.up_proj).__name__ == "PackedDense"
  got, _ = packed(tokens, positions)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
