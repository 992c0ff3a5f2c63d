"""Records, chat rendering with assistant masks, packing and the resumable batch iterator."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from pard_jax import data
from pard_jax import packing

TOKENIZER_DIR = "data/tiny_tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
  return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


CONVERSATION = {"conversations": [
    {"from": "gpt", "value": "Leading reply without a prompt."},
    {"from": "human", "value": "Count from 3 to 6."},
    {"from": "gpt", "value": "3 4 5 6."},
    {"from": "human", "value": "What color is the sky?"},
    {"from": "gpt", "value": "The sky is blue."}]}


def test_sharegpt_roles_and_messages_format():
  messages = data.to_messages(CONVERSATION)
  assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
  assert messages[1]["content"] == "3 4 5 6."
  assert data.to_messages({"messages": [{"role": "system", "content": "s"},
                                        {"role": "user", "content": "u"}]}) == [
      {"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
  with pytest.raises(data.DataError, match="unknown conversation role 'robot'"):
    data.to_messages({"conversations": [{"from": "robot", "value": "x"}]})


def test_assistant_mask_matches_template_generation_markers(tokenizer):
  ids, mask = data.tokenize_record(CONVERSATION, tokenizer, assistant_only_loss=True)
  assistant_text = tokenizer.decode([i for i, m in zip(ids, mask) if m])
  assert assistant_text == "3 4 5 6.<|im_end|>\nThe sky is blue.<|im_end|>\n"
  # Independent check: transformers' own mask from the template's {% generation %} markers.
  reference = tokenizer.apply_chat_template(
      data.to_messages(CONVERSATION), tokenize=True, return_dict=True,
      return_assistant_tokens_mask=True)
  assert ids == list(reference["input_ids"])
  assert mask == [bool(m) for m in reference["assistant_masks"]]
  _, all_mask = data.tokenize_record(CONVERSATION, tokenizer, assistant_only_loss=False)
  assert all(all_mask)


def test_plain_text_gets_eos(tokenizer):
  ids, mask = data.tokenize_record({"text": "The sky is blue."}, tokenizer, True)
  assert ids[-1] == tokenizer.eos_token_id and all(mask)
  assert tokenizer.decode(ids[:-1]) == "The sky is blue."
  with pytest.raises(data.DataError, match="neither"):
    data.tokenize_record({"prompt": "x"}, tokenizer, True)


def test_a_conversation_of_assistant_turns_only_is_skipped(tokenizer):
  replies = {"conversations": [{"from": "gpt", "value": "A reply without a prompt."}]}
  assert data.tokenize_record(replies, tokenizer, True) == ([], [])
  records = data.Records([replies, CONVERSATION], "two")
  assert len(data.tokenize_records(records, tokenizer, True)) == 1


def test_sharegpt_source_reads_the_packaged_conversations_up_to_the_cut(tokenizer):
  records = data.load_records("sharegpt")
  assert len(records) > 17000 and all(r["conversations"] for r in records)
  assert records.origin(3) == "sharegpt record 3"
  docs = data.tokenize_records(data.Records(records.records[:20], "sharegpt"), tokenizer, True)
  assert docs and all(mask.any() for _, mask in docs)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_load_local_files(tmp_path, suffix):
  records = [{"text": f"line {i}"} for i in range(5)]
  path = tmp_path / f"d{suffix}"
  if suffix == ".jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
  elif suffix == ".json":
    path.write_text(json.dumps(records))
  else:
    import datasets
    datasets.Dataset.from_list(records).to_parquet(str(path))
  loaded = data.load_records(str(path))
  assert [r["text"] for r in loaded] == [r["text"] for r in records]


def test_load_errors(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_records(str(tmp_path / "missing.jsonl"))
  try:
    import tensorflow_datasets  # noqa: F401
  except ImportError:
    with pytest.raises(data.DataError, match="tensorflow-datasets"):
      data.load_records("tfds:mnist")


def test_pack_segments_positions_labels():
  docs = [(np.arange(10, 10 + n, dtype=np.int32), np.ones(n, bool)) for n in (3, 4, 9, 2)]
  rows = packing.pack(docs, length=6, seed=0, pad_id=0)
  # Every token lands exactly once; the 9-token document is split into 6 + 3.
  real = rows.segment_ids > 0
  assert sorted(rows.tokens[real].tolist()) == sorted(np.concatenate([d for d, _ in docs]).tolist())
  for r in range(rows.num_rows):
    for t in range(6):
      seg = rows.segment_ids[r, t]
      if seg == 0:
        assert rows.weights[r, t] == 0
        continue
      start = np.flatnonzero(rows.segment_ids[r] == seg)[0]
      assert rows.positions[r, t] == t - start
      same_next = t + 1 < 6 and rows.segment_ids[r, t + 1] == seg
      assert rows.weights[r, t] == float(same_next)
      if same_next:
        assert rows.labels[r, t] == rows.tokens[r, t + 1] == rows.tokens[r, t] + 1


def test_pack_respects_loss_mask():
  ids = np.arange(1, 7, dtype=np.int32)
  mask = np.array([0, 0, 0, 1, 1, 1], bool)
  rows = packing.pack([(ids, mask)], length=8, seed=0)
  # The label at t is token t + 1, so weights follow the mask shifted by one.
  np.testing.assert_array_equal(rows.weights[0], [0, 0, 1, 1, 1, 0, 0, 0])


def _rows(n=10, length=4):
  docs = [(np.full(length, i + 1, np.int32), np.ones(length, bool)) for i in range(n)]
  return packing.pack(docs, length=length, seed=0)


def test_iterator_is_deterministic_and_resumable():
  rows = _rows()
  first = packing.BatchIterator(rows, batch_size=3, seed=7)
  stream = [next(first)["tokens"] for _ in range(8)]
  resumed = packing.BatchIterator(rows, batch_size=3, seed=7, position=5)
  for expected in stream[5:]:
    np.testing.assert_array_equal(next(resumed)["tokens"], expected)
  other = packing.BatchIterator(rows, batch_size=3, seed=8)
  assert any((next(other)["tokens"] != s).any() for s in stream)


def test_iterator_epochs_cover_rows_and_processes_split_batches():
  rows = _rows()
  it = packing.BatchIterator(rows, batch_size=5, seed=0)
  epoch = np.concatenate([next(it)["tokens"][:, 0] for _ in range(2)])
  assert sorted(epoch.tolist()) == list(range(1, 11))
  whole = packing.BatchIterator(rows, batch_size=4, seed=0).batch_at(3)["tokens"]
  parts = [packing.BatchIterator(rows, batch_size=4, seed=0, process_index=i,
                              process_count=2).batch_at(3)["tokens"] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  with pytest.raises(data.DataError, match="not divisible"):
    packing.BatchIterator(rows, batch_size=3, seed=0, process_count=2)


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"\n  \n", "no records, only blank lines"),
    (b'{"text": "a"}\n{"text": "b"\n', r"bad.jsonl:2: not a valid JSON line"),
    (b'{"text": "a"}\n\n[1, 2]\n', r"bad.jsonl:3: a record must be a JSON object, got list"),
])
def test_bad_local_files_name_file_and_line(tmp_path, content, message):
  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(content)
  with pytest.raises(data.DataError, match=message):
    data.load_records(str(bad))
