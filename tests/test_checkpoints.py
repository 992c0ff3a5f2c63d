"""HF directory / sharded index / GGUF loading, HF export, and clear errors on bad files."""

import json
import shutil

import gguf
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from pard_jax import checkpoints, drafter_kinds
from pard_jax.errors import ConfigError
from pard_jax.model import grow_vocab
from pard_jax.sharding import make_mesh
from tests.helpers import ROOT
from tests.hf_helpers import hf_logits, save_hf_model


def _logits(model, tokens):
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(model(jnp.asarray(tokens), positions)[0])


@pytest.fixture
def tokens():
  return np.random.default_rng(0).integers(0, 96, (2, 9))


@pytest.mark.parametrize("arch", ["llama3", "qwen2", "qwen3"])
def test_export_reloads_in_transformers_with_same_logits(arch, tmp_path, tokens):
  save_hf_model(arch, tmp_path / "src")
  model = checkpoints.load_model(tmp_path / "src")
  checkpoints.save_hf(model, tmp_path / "out", extra_config={"pard_token": 5, "spd_type": "pard"})
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  np.testing.assert_allclose(hf_logits(reloaded, tokens), _logits(model, tokens), atol=1e-4)
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["pard_token"] == 5 and config["spd_type"] == "pard"
  assert checkpoints.read_config(tmp_path / "out").drafter == drafter_kinds.PardDrafter(5)


def test_bfloat16_export_round_trips(tmp_path, tokens):
  save_hf_model("smollm2", tmp_path / "src")
  model = checkpoints.load_model(tmp_path / "src", dtype="bfloat16")
  checkpoints.save_hf(model, tmp_path / "out")
  assert checkpoints.read_safetensors(tmp_path / "out" / "model.safetensors")[
      "model.embed_tokens.weight"].dtype.name == "bfloat16"
  again = checkpoints.load_model(tmp_path / "out", dtype="bfloat16")
  np.testing.assert_array_equal(_logits(model, tokens), _logits(again, tokens))


def test_sharded_index_loads_into_a_mesh(tmp_path, tokens):
  hf = save_hf_model("llama3", tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  mesh = make_mesh((2, 2, 2))
  model = checkpoints.load_model(tmp_path, mesh=mesh)
  q = model.layers[0].self_attn.q_proj.kernel[...]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(q.addressable_shards) == 8
  np.testing.assert_allclose(_logits(model, tokens), hf_logits(hf, tokens), atol=1e-4)


def test_torch_bin_loads_with_weights_only(tmp_path, tokens):
  hf = save_hf_model("qwen2", tmp_path / "src")
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
  torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  model = checkpoints.load_model(tmp_path / "bin")
  np.testing.assert_allclose(_logits(model, tokens), hf_logits(hf, tokens), atol=1e-4)


class _Evil:
  def __reduce__(self):
    return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
  save_hf_model("smollm2", tmp_path)
  (tmp_path / "model.safetensors").unlink()
  torch.save({"x": _Evil()}, tmp_path / "pytorch_model.bin")
  with pytest.raises(checkpoints.CheckpointError, match="refusing to load"):
    checkpoints.load_model(tmp_path)


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    checkpoints.load_model(tmp_path / "nope")
  with pytest.raises(checkpoints.CheckpointError, match="config.json is missing"):
    checkpoints.load_model(tmp_path)

  save_hf_model("smollm2", tmp_path / "ok")
  config = json.loads((tmp_path / "ok" / "config.json").read_text())

  bad_arch = tmp_path / "gpt2"
  bad_arch.mkdir()
  (bad_arch / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
  with pytest.raises(ConfigError, match="unsupported architecture"):
    checkpoints.load_model(bad_arch)

  no_weights = tmp_path / "empty"
  no_weights.mkdir()
  (no_weights / "config.json").write_text(json.dumps(config))
  with pytest.raises(checkpoints.CheckpointError, match="no weights"):
    checkpoints.load_model(no_weights)

  truncated = tmp_path / "truncated"
  truncated.mkdir()
  (truncated / "config.json").write_text(json.dumps(config))
  blob = (tmp_path / "ok" / "model.safetensors").read_bytes()
  (truncated / "model.safetensors").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(checkpoints.CheckpointError, match="truncated or inconsistent"):
    checkpoints.load_model(truncated)

  garbage = tmp_path / "garbage"
  garbage.mkdir()
  (garbage / "config.json").write_text(json.dumps(config))
  (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
  with pytest.raises(checkpoints.CheckpointError, match="corrupt safetensors header"):
    checkpoints.load_model(garbage)

  wrong_shape = tmp_path / "wrong_shape"
  wrong_shape.mkdir()
  (wrong_shape / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
  (wrong_shape / "model.safetensors").write_bytes(blob)
  with pytest.raises(checkpoints.CheckpointError, match="shape mismatch"):
    checkpoints.load_model(wrong_shape)

  missing_shard = tmp_path / "missing_shard"
  missing_shard.mkdir()
  (missing_shard / "config.json").write_text(json.dumps(config))
  (missing_shard / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
  with pytest.raises(checkpoints.CheckpointError, match="which is missing"):
    checkpoints.load_model(missing_shard)

  with pytest.raises(checkpoints.CheckpointError, match="not a readable GGUF"):
    (tmp_path / "fake.gguf").write_bytes(b"not gguf at all")
    checkpoints.load_model(tmp_path / "fake.gguf")


def _write_gguf(hf, path):
  """`hf` (a tied-embedding transformers Llama) as a float32 GGUF laid out as llama.cpp converts
  it: gguf's own tensor names, q/k rows permuted to interleave the rotary halves."""
  config = hf.config
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_block_count(config.num_hidden_layers)
  writer.add_vocab_size(config.vocab_size)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  for name, tensor in hf.state_dict().items():
    if name == "lm_head.weight":  # tied: GGUF stores the embedding once
      continue
    weight_OxI = tensor.numpy()
    if name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
      weight_OxI = weight_OxI.reshape(heads, 2, -1, weight_OxI.shape[1]).swapaxes(1, 2).reshape(
          weight_OxI.shape)
    writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), weight_OxI)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_gguf_is_parsed_once_per_load_and_matches_transformers(tmp_path, tokens, monkeypatch):
  hf = save_hf_model("smollm2", tmp_path / "hf")
  _write_gguf(hf, tmp_path / "tiny.gguf")
  readers = []
  reader_class = gguf.GGUFReader
  monkeypatch.setattr(gguf, "GGUFReader", lambda *args: readers.append(args) or reader_class(*args))

  model = checkpoints.load_model(tmp_path / "tiny.gguf")
  assert len(readers) == 1  # its config and its tensors from one parse
  assert model.config.tie_word_embeddings and model.config.num_layers == 2
  np.testing.assert_allclose(_logits(model, tokens), hf_logits(hf, tokens), atol=1e-4)

  # A delta over a GGUF base opens the base once too.
  model.norm.weight[...] = model.norm.weight[...] + 1
  checkpoints.save_delta(model, tmp_path / "delta", tmp_path / "tiny.gguf")
  readers.clear()
  checkpoints.load_model(tmp_path / "delta")
  assert len(readers) == 1
  base = checkpoints.read_config(tmp_path / "delta").delta.base
  assert base == str((tmp_path / "tiny.gguf").resolve())


def test_config_errors_name_the_file(tmp_path):
  save_hf_model("smollm2", tmp_path / "ok")
  config = json.loads((tmp_path / "ok" / "config.json").read_text())

  def checkpoint(name, content):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(
        content if isinstance(content, str) else json.dumps(content))
    return tmp_path / name

  (tmp_path / "weights.bin").write_bytes(b"")
  with pytest.raises(checkpoints.CheckpointError, match="neither a HF model directory nor"):
    checkpoints.read_config(tmp_path / "weights.bin")
  with pytest.raises(checkpoints.CheckpointError, match="bad_json/config.json is not valid JSON"):
    checkpoints.read_config(checkpoint("bad_json", "{"))
  with pytest.raises(checkpoints.CheckpointError, match="list: .*a JSON object, got list"):
    checkpoints.read_config(checkpoint("list", "[1]"))
  with pytest.raises(ConfigError, match="no_layers: config.json lacks required field.*"
                     "num_hidden_layers"):
    checkpoints.read_config(checkpoint("no_layers", {k: v for k, v in config.items()
                                                     if k != "num_hidden_layers"}))
  with pytest.raises(checkpoints.CheckpointError, match=r"pard: pard mask tokens \(999,\): 999 is "
                     "outside the vocabulary"):
    checkpoints.read_config(checkpoint("pard", {**config, "pard_token": 999}))
  with pytest.raises(checkpoints.CheckpointError, match="parallelspec: .*256 is outside the "
                     "vocabulary"):
    checkpoints.read_config(checkpoint("parallelspec", {**config, "parallelspec_tokens": [3, 256]}))
  with pytest.raises(checkpoints.CheckpointError, match="bad_delta/config.json: pard_jax_delta "
                     "must be an object"):
    checkpoints.read_config(checkpoint("bad_delta", {**config, checkpoints.DELTA_FIELD: "base"}))


def test_safetensors_round_trip_views_and_name_unreadable_tensors(tmp_path):
  array_OxI = np.arange(6, dtype=np.float32).reshape(2, 3)
  checkpoints.write_safetensors(tmp_path / "t.safetensors",
                                {"t": array_OxI.T, "f8": np.zeros(2, ml_dtypes.float8_e4m3fn)})
  tensors = checkpoints.read_safetensors(tmp_path / "t.safetensors")
  assert sorted(tensors) == ["f8", "t"]
  np.testing.assert_array_equal(tensors["t"], array_OxI.T)  # a view is written as it reads
  with pytest.raises(checkpoints.CheckpointError, match=r"t.safetensors: cannot read tensor "
                     r"'f8' \(F8_E4M3\)"):
    tensors["f8"]


@pytest.mark.slow
@pytest.mark.real_model
def test_real_smollm2_gguf_logits_match_transformers(smollm2, smollm2_hf):
  _, model, tokenizer = smollm2
  ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                      add_generation_prompt=True, return_dict=False)
  tokens = np.asarray([ids])
  ours = _logits(model, tokens)
  theirs = hf_logits(smollm2_hf, tokens)
  assert model.config.num_layers == 30 and model.config.vocab_size == 49152
  np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=0)
  np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("keep", [(0, 1), (0, 2)])
def test_layer_cut_matches_transformers_with_those_layers(keep, tmp_path, tokens):
  """A drafter cut from its target equals transformers' model with only the kept layers."""
  hf = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(
      vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
  hf.save_pretrained(tmp_path)
  cut = checkpoints.load_model(tmp_path, keep_layers=keep)
  assert cut.config.num_layers == len(keep)
  hf.model.layers = torch.nn.ModuleList([hf.model.layers[i] for i in keep])
  hf.config.num_hidden_layers = len(keep)
  for i, layer in enumerate(hf.model.layers):
    layer.self_attn.layer_idx = i
  np.testing.assert_allclose(hf_logits(hf.eval(), tokens), _logits(cut, tokens), atol=1e-4)
  with pytest.raises(checkpoints.CheckpointError, match=r"keep_layers \(0, 3\) must be layer "
                     r"indices in \[0, 3\)"):
    checkpoints.load_model(tmp_path, keep_layers=(0, 3))


def test_delta_stores_only_what_training_changed_and_exports_standalone(tmp_path, tokens):
  save_hf_model("llama3", tmp_path / "base")
  drafter = checkpoints.load_model(tmp_path / "base", keep_layers=(1,))
  mlp = drafter.layers[0].mlp.up_proj.kernel
  mlp[...] = mlp[...] * 1.5
  table = drafter.embed_tokens.embedding
  table[...] = table[...].at[7].add(0.25)  # the mask row
  drafter.config = drafter.config.replace(draft_vocab=(1, 2, 7))
  checkpoints.save_delta(drafter, tmp_path / "delta", tmp_path / "base", keep_layers=(1,),
                         drafter=drafter_kinds.PardDrafter(7))

  stored = checkpoints.read_safetensors(tmp_path / "delta" / "model.safetensors")
  assert set(stored) == {"model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight:rows",
                         "model.embed_tokens.weight:row_ids"}
  assert stored["model.embed_tokens.weight:row_ids"].tolist() == [7]
  assert stored["model.layers.0.mlp.up_proj.weight"].dtype == np.float16
  loaded = checkpoints.load_model(tmp_path / "delta")
  assert loaded.config == drafter.config
  delta_config = checkpoints.read_config(tmp_path / "delta")
  assert delta_config.drafter == drafter_kinds.PardDrafter(7)
  assert delta_config.delta.keep_layers == (1,)
  np.testing.assert_allclose(_logits(loaded, tokens), _logits(drafter, tokens), atol=1e-2)

  # The standalone export of the delta is an ordinary HF directory, as the full model.
  checkpoints.save_hf(loaded, tmp_path / "standalone", drafter=delta_config.drafter)
  hf_config = json.loads((tmp_path / "standalone" / "config.json").read_text())
  assert hf_config["pard_token"] == 7 and checkpoints.DELTA_FIELD not in hf_config
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "standalone")
  full_vocab = checkpoints.load_model(tmp_path / "standalone").config.replace(draft_vocab=None)
  loaded.config = full_vocab
  np.testing.assert_allclose(hf_logits(hf.eval(), tokens), _logits(loaded, tokens), atol=1e-4)


def test_delta_over_a_delta_is_stored_over_the_first_ones_base(tmp_path, tokens):
  # A drafter trained on from a shipped delta: its delta names the plain base and the layers
  # of it the first delta kept, so it loads without the first delta.
  save_hf_model("llama3", tmp_path / "base")
  first = checkpoints.load_model(tmp_path / "base", keep_layers=(1, 0))
  first.layers[0].mlp.up_proj.kernel[...] *= 1.5
  checkpoints.save_delta(first, tmp_path / "first", tmp_path / "base", keep_layers=(1, 0))
  second = checkpoints.load_model(tmp_path / "first", keep_layers=(0,))
  second.layers[0].mlp.down_proj.kernel[...] *= 0.5
  checkpoints.save_delta(second, tmp_path / "second", tmp_path / "first", keep_layers=(0,))

  shutil.rmtree(tmp_path / "first")
  delta = checkpoints.read_config(tmp_path / "second").delta
  assert delta.keep_layers == (1,) and (tmp_path / "second" / delta.base).resolve() == (
      tmp_path / "base").resolve()
  np.testing.assert_allclose(_logits(checkpoints.load_model(tmp_path / "second"), tokens),
                             _logits(second, tokens), atol=1e-2)


def test_delta_of_a_grown_vocabulary_stores_the_new_rows(tmp_path, tokens):
  save_hf_model("llama3", tmp_path / "base")
  base = checkpoints.load_model(tmp_path / "base")
  vocab = base.config.vocab_size
  drafter = grow_vocab(base, vocab + 3)  # ParallelSpec's appended mask rows
  kind = drafter_kinds.ParallelSpecDrafter((vocab, vocab + 1, vocab + 2))
  checkpoints.save_delta(drafter, tmp_path / "delta", tmp_path / "base", drafter=kind)

  stored = checkpoints.read_safetensors(tmp_path / "delta" / "model.safetensors")
  assert stored["model.embed_tokens.weight:row_ids"].tolist() == [vocab, vocab + 1, vocab + 2]
  loaded = checkpoints.load_model(tmp_path / "delta")
  assert loaded.config == drafter.config
  assert checkpoints.read_config(tmp_path / "delta").drafter == kind
  np.testing.assert_allclose(_logits(loaded, tokens), _logits(drafter, tokens), atol=1e-2)

  # The other way round, the base has rows the model lacks: not a delta of that base.
  checkpoints.save_hf(drafter, tmp_path / "grown")
  with pytest.raises(checkpoints.CheckpointError, match=r"embed_tokens.weight is \(96, .*in the "
                     r"model but \(99, .*in the base"):
    checkpoints.save_delta(base, tmp_path / "bad", tmp_path / "grown")


def test_a_delta_without_tokenizer_files_has_its_bases_tokenizer(tmp_path):
  """decode.py compares a grown-vocabulary drafter's tokenizer with the target's: a delta's
  is its base's."""
  save_hf_model("llama3", tmp_path / "base")
  for file in (ROOT / "data/tiny_tokenizer").iterdir():
    shutil.copy(file, tmp_path / "base")
  base = checkpoints.load_model(tmp_path / "base")
  checkpoints.save_delta(grow_vocab(base, base.config.vocab_size + 3), tmp_path / "delta",
                         tmp_path / "base")
  assert not list((tmp_path / "delta").glob("tokenizer*"))
  expected = checkpoints.load_tokenizer(tmp_path / "base").get_vocab()
  assert checkpoints.load_tokenizer(tmp_path / "delta").get_vocab() == expected


def test_delta_over_a_replaced_base_is_refused_naming_both(tmp_path):
  save_hf_model("llama3", tmp_path / "base")
  drafter = checkpoints.load_model(tmp_path / "base")
  drafter.norm.weight[...] = drafter.norm.weight[...] + 1
  checkpoints.save_delta(drafter, tmp_path / "delta", tmp_path / "base")
  save_hf_model("llama3", tmp_path / "base", seed=1)  # the same shapes, other weights
  with pytest.raises(checkpoints.CheckpointError, match=r"delta over '.*base' with sha256 \w+, "
                     r"but .*base has sha256 \w+: another base"):
    checkpoints.load_model(tmp_path / "delta")


def test_delta_with_a_missing_base_names_it(tmp_path):
  save_hf_model("llama3", tmp_path / "base")
  drafter = checkpoints.load_model(tmp_path / "base")
  drafter.norm.weight[...] = drafter.norm.weight[...] + 1
  checkpoints.save_delta(drafter, tmp_path / "delta", tmp_path / "base")
  (tmp_path / "base" / "model.safetensors").rename(tmp_path / "elsewhere")
  with pytest.raises(checkpoints.CheckpointError, match="no weights in .*base"):
    checkpoints.load_model(tmp_path / "delta")
  config = json.loads((tmp_path / "delta" / "config.json").read_text())
  config[checkpoints.DELTA_FIELD]["base"] = "package:no_such_package/model.gguf"
  (tmp_path / "delta" / "config.json").write_text(json.dumps(config))
  with pytest.raises(checkpoints.CheckpointError, match="no_such_package.*not installed"):
    checkpoints.load_model(tmp_path / "delta")
