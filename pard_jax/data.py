"""Training data: records -> token documents -> packed rows -> deterministic, resumable batches.

Sources (`load_records`): local jsonl/json/parquet files or folders of them, Hugging Face hub
dataset names (when online) and `tfds:NAME[:SPLIT]` (tensorflow-datasets, an optional extra).
Records are ShareGPT-style conversations (`conversations` or `messages`, each turn
`{"from"|"role", "value"|"content"}`), rendered with the tokenizer's chat template, or plain
`{"text": ...}`.

Packed rows are `[L]` arrays: documents are concatenated greedily, each keeps its own
`segment_id` (1, 2, ...; 0 is padding) and positions restarting at 0, and the label of a token is
the next token of the same document. Batch `i` is a pure function of (rows, seed, i), so the
iterator state is one integer.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
         "system": "system"}
_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
  """A data source or record cannot be used for training."""


def load_records(source: str, split: str = "train"):
  """A `datasets.Dataset` of raw records from a local path, `tfds:NAME[:SPLIT]` or a hub name."""
  import datasets  # pylint: disable=g-import-not-at-top

  if source.startswith("tfds:"):
    return _load_tfds(source[len("tfds:"):], split)
  path = pathlib.Path(source).expanduser()
  if path.exists():
    files = sorted(p for p in path.iterdir() if p.suffix in _FILE_FORMATS) if path.is_dir() \
        else [path]
    formats = {_FILE_FORMATS.get(p.suffix) for p in files}
    if not files or None in formats or len(formats) != 1:
      raise DataError(f"data source {source!r}: expected .jsonl/.json/.parquet files of one "
                      f"format, found {[p.name for p in files]}")
    file_format = formats.pop()
    for file in files:
      if file.stat().st_size == 0:
        raise DataError(f"data source {file}: the file is empty")
    try:
      return datasets.load_dataset(file_format, data_files=[str(p) for p in files],
                                   split="train")
    except Exception as e:  # datasets wraps parse errors in its own generic types
      if file_format == "json":
        for file in files:
          _check_json_file(file)
      raise DataError(f"data source {source!r} could not be read: {e}") from e
  if source.startswith((".", "/", "~")) or pathlib.Path(source).suffix in _FILE_FORMATS:
    raise DataError(f"data source {source!r} does not exist")
  return datasets.load_dataset(source, split=split)


def _check_json_file(path: pathlib.Path) -> None:
  """Raises a `DataError` naming `file:line` of the first record that is not a JSON object."""
  with open(path, "rb") as f:
    head = f.read(1).lstrip()
  if path.suffix == ".json" and head == b"[":
    return  # one JSON array: datasets' own error is as precise as a line number would be
  records = 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        record = json.loads(raw)
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}:{number}: not a valid JSON line: {e}") from e
      if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: a record must be a JSON object, got "
                        f"{type(record).__name__}")
      records += 1
  if not records:
    raise DataError(f"data source {path}: no records, only blank lines")


def _load_tfds(spec: str, split: str):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("data source 'tfds:...' needs tensorflow-datasets: "
                    "pip install 'pard_jax[tfds]'") from e
  import datasets  # pylint: disable=g-import-not-at-top

  name, _, tfds_split = spec.partition(":")
  decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
  rows = [{k: decode(v) for k, v in example.items()}
          for example in tfds.as_numpy(tfds.load(name, split=tfds_split or split))]
  return datasets.Dataset.from_list(rows)


def to_messages(record: dict[str, Any]) -> list[dict[str, str]]:
  """Chat messages `[{"role", "content"}]` of a ShareGPT/messages record.

  Leading assistant turns are dropped: they have no prompt to answer.
  """
  turns = record.get("conversations") or record.get("messages") or []
  messages = []
  for turn in turns:
    speaker = turn.get("from", turn.get("role"))
    role = ROLES.get(str(speaker).lower())
    if role is None:
      raise DataError(f"unknown conversation role {speaker!r} (known: {sorted(ROLES)})")
    content = turn.get("value", turn.get("content"))
    if not messages and role == "assistant":
      continue
    messages.append({"role": role, "content": content or ""})
  return messages


def render_chat(messages: list[dict[str, str]], tokenizer) -> tuple[str, list[tuple[int, int]]]:
  """The chat-template text and the character spans `[start, end)` of assistant replies.

  A reply's span runs from the end of the prompt rendered with the generation prompt to the end
  of the conversation rendered up to that reply (template end-of-turn tokens included). This
  needs no template support (`{% generation %}`), only prefix-consistent rendering, checked here.
  """
  render = lambda msgs, prompt=False: tokenizer.apply_chat_template(
      msgs, tokenize=False, add_generation_prompt=prompt)
  text = render(messages)
  spans = []
  for i, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    prompt, through = render(messages[:i], True), render(messages[:i + 1])
    if not (text.startswith(through) and through.startswith(prompt)):
      raise DataError("the chat template does not render conversations prefix-consistently, so "
                      "assistant tokens cannot be located; set data.assistant_only_loss=False")
    spans.append((len(prompt), len(through)))
  return text, spans


def tokenize_record(record: dict[str, Any], tokenizer, assistant_only_loss: bool
                    ) -> tuple[list[int], list[bool]]:
  """Token ids of one record and, per token, whether it is a loss target."""
  if record.get("conversations") or record.get("messages"):
    text, spans = render_chat(to_messages(record), tokenizer)
    # The template already carries BOS and turn markers.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if not assistant_only_loss:
      return ids, [True] * len(ids)
    return ids, [any(s <= start < e for s, e in spans) for start, _ in encoded["offset_mapping"]]
  if "text" in record:
    ids = tokenizer(record["text"])["input_ids"]
    if tokenizer.eos_token_id is not None:
      ids = ids + [tokenizer.eos_token_id]
    return ids, [True] * len(ids)
  raise DataError(f"record has neither 'conversations'/'messages' nor 'text': keys {sorted(record)}")


def tokenize_records(records: Iterable[dict[str, Any]], tokenizer,
                     assistant_only_loss: bool) -> list[tuple[np.ndarray, np.ndarray]]:
  """`(ids [n] int32, loss_mask [n] bool)` per record, skipping records with no loss target."""
  docs = []
  for record in records:
    ids, loss_mask = tokenize_record(record, tokenizer, assistant_only_loss)
    if any(loss_mask[1:]):
      docs.append((np.asarray(ids, np.int32), np.asarray(loss_mask, bool)))
  return docs


@dataclasses.dataclass(frozen=True)
class PackedRows:
  """Packed training rows, each array `[num_rows, L]`.

  labels[t] = tokens[t + 1] of the same document; weights[t] = 1 where that label is a loss
  target (so the last token of each document and padding carry no loss).
  """
  tokens: np.ndarray
  positions: np.ndarray
  segment_ids: np.ndarray
  labels: np.ndarray
  weights: np.ndarray

  @property
  def num_rows(self) -> int:
    return self.tokens.shape[0]

  def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in dataclasses.asdict(self).items()}


def pack(docs: Sequence[tuple[np.ndarray, np.ndarray]], length: int, seed: int,
         pad_id: int = 0) -> PackedRows:
  """Packs documents (in a seeded order) into rows of `length` tokens.

  Documents longer than a row are split into row-sized pieces, each its own document.
  """
  pieces = [(ids[s:s + length], mask[s:s + length])
            for i in np.random.default_rng(seed).permutation(len(docs))
            for ids, mask in [docs[i]] for s in range(0, len(ids), length)]
  pieces = [(ids, mask) for ids, mask in pieces if len(ids) > 1]
  if not pieces:
    raise DataError("no trainable documents (need >= 2 tokens and an assistant/loss target)")
  rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
  used = 0
  for ids, mask in pieces:
    if used + len(ids) > length:
      rows.append([])
      used = 0
    rows[-1].append((ids, mask))
    used += len(ids)
  shape = (len(rows), length)
  tokens = np.full(shape, pad_id, np.int32)
  positions = np.zeros(shape, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  target = np.zeros(shape, bool)
  for r, row in enumerate(rows):
    start = 0
    for segment, (ids, mask) in enumerate(row, start=1):
      end = start + len(ids)
      tokens[r, start:end] = ids
      positions[r, start:end] = np.arange(len(ids))
      segment_ids[r, start:end] = segment
      target[r, start:end] = mask
      start = end
  labels = np.zeros(shape, np.int32)
  labels[:, :-1] = tokens[:, 1:]
  weights = np.zeros(shape, np.float32)
  same_doc = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] > 0)
  weights[:, :-1] = same_doc & target[:, 1:]
  return PackedRows(tokens, positions, segment_ids, labels, weights)


def frequent_tokens(rows: PackedRows, size: int, vocab_size: int) -> tuple[int, ...]:
  """The `size` most frequent token ids of the rows' documents (ties: lower id), ascending."""
  counts_V = np.bincount(rows.tokens[rows.segment_ids > 0].ravel(), minlength=vocab_size)
  ranked = np.argsort(-counts_V[:vocab_size], kind="stable")
  return tuple(int(i) for i in np.sort(ranked[:size]))


@dataclasses.dataclass
class BatchIterator:
  """Seeded batches over an endless sequence of epochs; `position` (batches consumed) is the state.

  Sample j of the stream is row `permutation(seed, j // N)[j % N]`; batch i holds samples
  i*B .. (i+1)*B - 1, of which this process takes its `1 / process_count` share.
  """
  rows: PackedRows
  batch_size: int
  seed: int
  position: int = 0
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.batch_size % self.process_count:
      raise DataError(f"batch size {self.batch_size} is not divisible by the process count "
                      f"{self.process_count}")

  def batch_at(self, index: int) -> dict[str, np.ndarray]:
    """Batch `index` (this process's rows), each array `[batch / process_count, L]`."""
    local = self.batch_size // self.process_count
    samples = index * self.batch_size + self.process_index * local + np.arange(local)
    epochs, offsets = np.divmod(samples, self.rows.num_rows)
    permutations = {e: np.random.default_rng([self.seed, e]).permutation(self.rows.num_rows)
                    for e in np.unique(epochs).tolist()}
    rows = np.array([permutations[e][o] for e, o in zip(epochs.tolist(), offsets)])
    return self.rows.take(rows)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self.position)
    self.position += 1
    return batch
