"""Token documents -> packed rows -> deterministic, resumable batches.

Packed rows are `[L]` arrays: documents are concatenated greedily, each keeps its own
`segment_id` (1, 2, ...; 0 is padding) and positions restarting at 0, and the label of a token is
the next token of the same document. Batch `i` is a pure function of (rows, seed, i), so the
iterator state is one integer.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterator, Sequence

import numpy as np

from pard_jax.data import load_records, split_sources, tokenize_records
from pard_jax.errors import DataError


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


def load_rows(source: str, tokenizer, length: int, split: str = "train",
              tfds_data_dir: pathlib.Path | None = None, assistant_only_loss: bool = True,
              seed: int = 0) -> PackedRows:
  """The packed rows of `source` (comma-separated sources packed together; `load_records`)."""
  docs = [doc for one in split_sources(source)
          for doc in tokenize_records(load_records(one, split, tfds_data_dir), tokenizer,
                                      assistant_only_loss)]
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return pack(docs, length, seed, pad_id)


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
