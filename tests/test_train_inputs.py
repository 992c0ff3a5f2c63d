"""Training inputs that used to go wrong quietly or loudly in the wrong way: diverged runs and
their checkpoints, resuming with other settings, bad data records, a workdir that is a file, and
`tfds:NAME` sources end to end."""

import json
import shutil
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from transformers import AutoTokenizer

from pard_jax import data
from pard_jax.errors import CheckpointError, ConfigError, DataError, PardJaxError
from pard_jax.train import checkpointing, loop
from pard_jax.train.spec import TrainSpec

from tests.helpers import ROOT, tiny_train_config, train_command, with_overrides


def saved_steps(workdir):
  return checkpointing.checkpoint_manager(workdir, 3).all_steps()


# With this config the gradient norm is nan at step 5 while the loss is still finite (so the
# state after step 5 is nan), and step 4's state, finite, gives that nan gradient whatever the
# learning rate; the loss is nan at step 6.
DIVERGING = dict(learning_rate=1e4, num_steps=40, log_every=1)


def test_a_nan_step_is_never_checkpointed(tmp_path):
  with pytest.raises(FloatingPointError, match=r"grad_norm is nan at step 5: stopping") as err:
    loop.train(tiny_train_config(**DIVERGING, checkpoint_every=5), str(tmp_path))
  assert saved_steps(tmp_path) == []
  assert "No good checkpoint is left" in str(err.value) and "step None" not in str(err.value)
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_the_checkpoint_a_nan_gradient_came_from_is_set_aside(tmp_path):
  with pytest.raises(FloatingPointError, match=r"grad_norm is nan at step 5") as err:
    loop.train(tiny_train_config(**DIVERGING, checkpoint_every=2), str(tmp_path))
  # Step 4 gives step 5's nan gradient at any learning rate: kept aside, not resumed from.
  assert saved_steps(tmp_path) == [2]
  assert (tmp_path / "diverged" / "4").is_dir()
  assert "The last good checkpoint is step 2" in str(err.value)
  assert "--config.train.learning_rate" in str(err.value)
  # As the message says: a lower learning rate resumes from step 2 and finishes.
  history = loop.train(tiny_train_config(learning_rate=1e-3, num_steps=6, checkpoint_every=2,
                                   log_every=1), str(tmp_path))
  assert [r["step"] for r in history] == [3, 4, 5, 6]


def first_run(workdir):
  loop.train(tiny_train_config(num_steps=2, checkpoint_every=2, log_every=1), str(workdir))
  return json.loads((workdir / "run_spec.json").read_text())


@pytest.mark.slow
def test_a_nan_checkpoint_from_before_is_refused_on_resume(tmp_path):
  first_run(tmp_path)
  # What an older pard_jax could save: a checkpoint of a nan state.
  manager = checkpointing.checkpoint_manager(tmp_path, 3)
  saved = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                     data=ocp.args.JsonRestore()))
  nan = jax.tree.map(lambda x: x * np.nan if np.issubdtype(x.dtype, np.floating) else x,
                     saved["state"])
  shutil.rmtree(tmp_path / "checkpoints" / "2")
  manager.reload()
  checkpointing.save_checkpoint(manager, 2, nan, saved["data"]["position"])
  manager.wait_until_finished()
  with pytest.raises(CheckpointError, match=r"checkpoint 2 in .* holds nan or inf values"):
    loop.train(tiny_train_config(num_steps=4, checkpoint_every=2, log_every=1), str(tmp_path))


@pytest.mark.slow
def test_resume_refuses_other_settings_and_allows_length_logging_and_step_size(tmp_path):
  stored = first_run(tmp_path)
  assert stored["drafter.mask_token_ids"] == [4] and "train.num_steps" not in stored

  def resume(**changes):
    config = tiny_train_config(num_steps=4, checkpoint_every=2, log_every=1)
    return loop.train(with_overrides(config, changes), str(tmp_path))

  with pytest.raises(ConfigError, match=r"config.drafter.mask_token_ids: .* other settings") as e:
    resume(**{"drafter.mask_token_ids": (5,), "train.batch_size": 4})
  assert "drafter.mask_token_ids: [4] in the workdir, [5] now" in str(e.value)
  assert "train.batch_size: 8 in the workdir, 4 now" in str(e.value)
  with pytest.raises(ConfigError, match=r"drafter.num_draft_tokens: 4 in the workdir, 3 now"):
    resume(**{"drafter.num_draft_tokens": 3})
  with pytest.raises(ConfigError, match=r"model.arch.hidden_size: 64 in the workdir, 32 now"):
    resume(**{"model.arch.hidden_size": 32, "model.arch.head_dim": 8})
  history = resume(**{"train.learning_rate": 1e-4, "train.log_every": 2,
                      "train.max_checkpoints": 2})
  assert [r["step"] for r in history] == [4]


def test_a_run_spec_without_checkpoints_is_replaced(tmp_path):
  spec = TrainSpec.from_config(tiny_train_config())
  checkpointing.claim_workdir(tmp_path, spec.run_defining(), None)
  other = TrainSpec.from_config(tiny_train_config(batch_size=4))
  checkpointing.claim_workdir(tmp_path, other.run_defining(), None)  # nothing trained yet
  assert json.loads((tmp_path / "run_spec.json").read_text())["train.batch_size"] == 4
  with pytest.raises(ConfigError, match="train.batch_size: 4 in the workdir, 8 now"):
    checkpointing.claim_workdir(tmp_path, spec.run_defining(), 10)


@pytest.fixture(scope="module")
def tokenizer():
  return AutoTokenizer.from_pretrained(ROOT / "data" / "tiny_tokenizer")


GOOD = '{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}]}'


@pytest.mark.parametrize("name, content, message", [
    ("list.jsonl", [GOOD, '{"conversations": ["hello", "hi"]}'],
     r"list.jsonl:2: 'conversations' must be a list of turns"),
    ("alone.jsonl", ['{"conversations": ["hello", "hi"]}'],
     r"alone.jsonl:1: 'conversations' must be a list of turns"),
    ("text.jsonl", ['{"text": "fine"}', "", '{"text": 123}'],
     r"text.jsonl:3: 'text' must be a string, got int"),
    ("text_alone.jsonl", ['{"text": 123}'], r"text_alone.jsonl:1: 'text' must be a string"),
    ("content.jsonl", ['{"messages": [{"role": "user", "content": 5}]}'],
     r"content.jsonl:1: turn 1: 'content' must be a string, got int"),
    ("role.jsonl", ['{"text": "fine"}', '{"conversations": [{"from": "robot", "value": "x"}]}'],
     r"role.jsonl:2: turn 1: unknown conversation role 'robot'"),
    ("neither.jsonl", [GOOD, "", "", '{"prompt": "x"}'],
     r"neither.jsonl:4: record has neither 'conversations'/'messages' nor 'text': keys \['prompt'\]"),
    ("array.json", ["[", '  {"text": "a"},', "", '  {"text": 7}', "]"],
     r"array.json:4: 'text' must be a string, got int"),
    ("array_alone.json", ["[", '  {"prompt": "a"}', "]"],
     r"array_alone.json:2: record has neither"),
])
def test_bad_records_are_data_errors_naming_file_and_line(tmp_path, tokenizer, name, content,
                                                           message):
  path = tmp_path / name
  path.write_text("\n".join(content) + "\n")
  with pytest.raises(DataError, match=message):
    data.tokenize_records(data.load_records(str(path)), tokenizer, True)


def test_records_of_a_folder_name_their_own_file(tmp_path, tokenizer):
  (tmp_path / "a.jsonl").write_text(GOOD + "\n" + GOOD + "\n")
  (tmp_path / "b.jsonl").write_text("\n" + GOOD + '\n{"text": null}\n')
  with pytest.raises(DataError, match=r"b.jsonl:3: record has neither"):
    data.tokenize_records(data.load_records(str(tmp_path)), tokenizer, True)


def test_parquet_records_are_named_by_row(tmp_path, tokenizer):
  import datasets
  path = tmp_path / "d.parquet"
  datasets.Dataset.from_list([{"text": "fine"}, {"text": None}]).to_parquet(str(path))
  with pytest.raises(DataError, match=r"d.parquet row 2: record has neither"):
    data.tokenize_records(data.load_records(str(path)), tokenizer, True)


@pytest.mark.slow
def test_a_bad_record_is_one_line_from_train_py(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(GOOD + '\n{"text": 123}\n')
  result = subprocess.run(train_command(tmp_path / "w", {"data.source": bad}), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == \
      f"train.py: {bad}:2: 'text' must be a string, got int"


def test_a_workdir_that_is_a_file_is_refused_first(tmp_path, monkeypatch):
  workdir = tmp_path / "file"
  workdir.write_text("")
  monkeypatch.setattr(loop.checkpoints, "load_tokenizer", lambda *a: pytest.fail("loaded"))
  with pytest.raises(ConfigError, match=rf"workdir: {workdir} is a file"):
    loop.train(tiny_train_config(), str(workdir))


@pytest.mark.parametrize("field, value, message", [
    ("b1", 2.0, r"config.train.b1: must be in \[0, 1\), got 2.0"),
    ("max_grad_norm", -1.0, r"config.train.max_grad_norm: must be >= 0"),
])
def test_bad_optimizer_values_name_the_field(field, value, message):
  with pytest.raises(ConfigError, match=message):
    TrainSpec.from_config(tiny_train_config(**{field: value}))


@pytest.mark.parametrize("source, message", [
    ("a.jsonl,,b.jsonl", "lists an empty source: 'a.jsonl,,b.jsonl'"),
    ("sharegpt, sharegpt", "lists a source twice"),
])
def test_bad_source_lists_name_the_field(source, message):
  config = tiny_train_config()
  config.data.source = source
  with pytest.raises(ConfigError, match=f"config.data.source: {message}"):
    TrainSpec.from_config(config)


def write_tfds(data_dir, records):
  """`records` as a local TFDS dataset `tiny_chat_tfds` in array_record files, with TFDS's own
  builder (no tensorflow, no download)."""
  import tensorflow_datasets as tfds

  class TinyChatTfds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      turn = {"from": tfds.features.Text(), "value": tfds.features.Text()}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"conversations": tfds.features.Sequence(turn)}))

    def _split_generators(self, dl_manager):
      return {"train": enumerate(records)}

    def _generate_examples(self):  # abstract in TFDS; the split above yields the examples
      raise NotImplementedError

  TinyChatTfds(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.mark.slow
def test_tfds_source_trains_end_to_end(tmp_path):
  lines = (ROOT / "data" / "tiny_chat.jsonl").read_text().splitlines()[:40]
  records = [json.loads(line) for line in lines]
  write_tfds(tmp_path / "tfds", records)
  loaded = data.load_records("tfds:tiny_chat_tfds", "train", tmp_path / "tfds")
  assert sorted(r["conversations"][0]["value"] for r in loaded) == \
      sorted(r["conversations"][0]["value"] for r in records)
  config = tiny_train_config(num_steps=2, checkpoint_every=2, log_every=1)
  config.data.update(dict(source="tfds:tiny_chat_tfds", tfds_data_dir=str(tmp_path / "tfds")))
  history = loop.train(config, str(tmp_path / "w"))
  assert [r["step"] for r in history] == [1, 2] and (tmp_path / "w" / "hf").is_dir()


def test_tfds_source_errors_name_the_dataset_and_never_download(tmp_path):
  with pytest.raises(DataError, match=r"tfds:mnist: .* not prepared in .*tfds.*array_record"):
    data.load_records("tfds:mnist", "train", tmp_path / "tfds")
  assert not (tmp_path / "tfds" / "downloads").exists()
  with pytest.raises(DataError, match=r"tfds:no_such_set: Dataset no_such_set not found"):
    data.load_records("tfds:no_such_set", "train", tmp_path)
  config = tiny_train_config()
  config.data.tfds_data_dir = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="config.data.tfds_data_dir: is only read"):
    TrainSpec.from_config(config)
  config.data.source = "tfds:tiny"
  with pytest.raises(ConfigError, match="config.data.tfds_data_dir: .* is not a directory"):
    TrainSpec.from_config(config)
  assert issubclass(DataError, PardJaxError) and data.DataError is DataError


@pytest.mark.parametrize("shape", [(3, 1, 1), (0, 1, 1)])
def test_a_mesh_the_devices_cannot_form_is_refused_before_any_file(shape, tmp_path):
  config = tiny_train_config(num_steps=2)
  config.mesh.shape = shape
  with pytest.raises(ConfigError, match=r"config.mesh.shape: mesh .* needs"):
    loop.train(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_a_workdir_that_cannot_be_written_is_refused_up_front(tmp_path, monkeypatch):
  # Root writes into read-only directories, so the failing write is simulated.
  def read_only(*args, **kwargs):
    raise OSError(30, "Read-only file system")
  monkeypatch.setattr(loop.tempfile, "TemporaryFile", read_only)
  with pytest.raises(ConfigError, match="workdir: cannot write in .*Read-only"):
    loop.train(tiny_train_config(num_steps=2), str(tmp_path))
  assert not (tmp_path / "run_spec.json").exists()


def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path):
  """Two train.py processes on one workdir would log every row twice and collide in orbax's
  deleters: the second is refused while the first holds the workdir's lock."""
  from pard_jax import files
  with files.locked(tmp_path, "workdir", "training run", "--workdir"):
    with pytest.raises(ConfigError, match=r"workdir: .* is in use by another training run "
                       r"\(pid \d+"):
      loop.train(tiny_train_config(num_steps=2), str(tmp_path))
  assert not (tmp_path / "run_spec.json").exists()


def test_resuming_after_the_training_data_changed_names_the_file(tmp_path):
  source = tmp_path / "chat.jsonl"
  shutil.copy(ROOT / "data/tiny_chat.jsonl", source)
  config = tiny_train_config(num_steps=4, checkpoint_every=2)
  config.data.source = str(source)
  loop.train(config, str(tmp_path / "w"))
  lines = source.read_text().splitlines(keepends=True)
  source.write_text("".join(lines[10:] + lines[:10]))  # the same records, another order
  longer = with_overrides(config, {"train.num_steps": 6})
  with pytest.raises(ConfigError, match=r"config.data.source: the training data changed .*"
                     r"chat.jsonl: sha256 \w{12} in the run, \w{12} now"):
    loop.train(longer, str(tmp_path / "w"))
  assert saved_steps(tmp_path / "w") == [2, 4]
  loop.train(with_overrides(longer, {"data.resume_on_new_data": True}), str(tmp_path / "w"))
  assert saved_steps(tmp_path / "w")[-1] == 6
  # The new data is recorded: a later resume needs no flag.
  loop.train(with_overrides(longer, {"train.num_steps": 8, "data.resume_on_new_data": False}),
             str(tmp_path / "w"))
  assert saved_steps(tmp_path / "w")[-1] == 8
