"""The Python API refuses what it would otherwise get silently wrong: prompt ids a cast would
change, settings that are not finite numbers or not integers, and it accepts the ordinary
spellings (a 2-D numpy batch, a list of stop ids) instead of failing deep inside jit."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from pard_jax import drafter_kinds as kinds
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
from pard_jax.errors import DecodeError
from pard_jax.model import create_model

VOCAB = 40


@functools.lru_cache(maxsize=None)
def tiny_target():
  return create_model(ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                                  max_position_embeddings=64), 0)


def decoder(**settings):
  return SpeculativeDecoder(tiny_target(), None, DecodeConfig(max_new_tokens=4, **settings))


@pytest.mark.parametrize("prompts, message", [
    ([np.array([1, 10 + 2**32], np.int64)], r"prompt 0: token id 4294967306 at position 1 .*"
     r"\[0, 40\)"),  # int32 would wrap it to 10
    ([[1, 2], [1.9, 10.7]], r"prompt 1: token ids must be integers, got 1.9"),  # not 1 and 10
    ([[3, 10.7]], r"prompt 0: token ids must be integers, got 10.7"),
    ([np.array([1.0, 2.0])], r"prompt 0: token ids must be integers, got 1.0"),
    ([[True, False]], r"prompt 0: token ids must be integers, got True"),
    ([[1, 2**70]], r"prompt 0: token id 1180591620717411303424 at position 1"),
    ([[5], np.array([3, -1])], r"prompt 1: token id -1 at position 1"),
    ([[1, 2], [[1, 2]]], r"prompt 1 must be a 1-D sequence of token ids, got shape \(1, 2\)"),
    ([[1, 2], [3]], None),  # ragged lengths are fine; this is the control
    ([1, 2, 3], r"prompt 0 must be a 1-D sequence of token ids, got shape \(\)"),  # unwrapped
    ([], r"prompts is empty"),
    (np.zeros((0, 3), np.int32), r"prompts is empty"),
])
def test_prompt_ids_a_cast_would_change_are_refused(prompts, message):
  if message is None:
    assert len(decoder().generate(prompts).output_ids) == 2
    return
  with pytest.raises(DecodeError, match=message):
    decoder().generate(prompts)


def test_a_2d_numpy_batch_decodes_like_lists():
  d = decoder()
  rows = [[1, 2, 3], [4, 5, 6]]
  want = d.generate(rows).output_ids
  assert d.generate(np.asarray(rows, np.int64)).output_ids == want
  assert d.generate(tuple(np.asarray(rows, np.int32))).output_ids == want


@pytest.mark.parametrize("field, value, message", [
    ("temperature", float("nan"), "temperature must be a finite number, got nan"),
    ("temperature", float("inf"), "temperature must be a finite number, got inf"),
    ("temperature", "0.7", "temperature must be a finite number, got '0.7'"),
    ("top_p", float("nan"), "top_p must be a finite number, got nan"),
    ("top_p", float("-inf"), "top_p must be a finite number, got -inf"),
    ("num_draft_tokens", 2.0, "num_draft_tokens must be an integer, got 2.0"),
    ("max_new_tokens", 8.0, "max_new_tokens must be an integer, got 8.0"),
    ("max_new_tokens", True, "max_new_tokens must be an integer, got True"),
    ("top_k", 1.5, "top_k must be an integer, got 1.5"),
    ("shared_vocab_size", 2.5, "shared_vocab_size must be an integer, got 2.5"),
    ("stop_token_ids", 2, "stop_token_ids must be a sequence of token ids, got 2"),
    ("stop_token_ids", None, "stop_token_ids must be a sequence of token ids, got None"),
    ("stop_token_ids", [2, 3.0], r"stop_token_ids\[1\] must be an integer, got 3.0"),
    ("stop_token_ids", "2", r"stop_token_ids\[0\] must be an integer, got '2'"),
])
def test_settings_that_are_not_finite_or_not_integers_name_their_field(field, value, message):
  with pytest.raises(DecodeError, match=f"^{message}"):
    DecodeConfig(drafter_kind=kinds.AutoregressiveDrafter(), **{field: value})


def test_stop_token_ids_accept_any_sequence_of_ints():
  listed, tupled = DecodeConfig(stop_token_ids=[2]), DecodeConfig(stop_token_ids=(2,))
  assert listed == tupled and hash(listed) == hash(tupled)
  from_numpy = DecodeConfig(stop_token_ids=np.array([7, 2]), max_new_tokens=np.int64(3),
                            temperature=np.float32(0.5))
  # Plain Python values, as jit's static-argument cache compares them.
  assert [type(t) for t in from_numpy.stop_token_ids] == [int, int]
  assert (type(from_numpy.max_new_tokens), type(from_numpy.temperature)) == (int, float)
  assert from_numpy.stop_token_ids == (7, 2) and from_numpy.max_new_tokens == 3
  # A list used to fail at jit time ("non-hashable static argument").
  result = decoder(stop_token_ids=[2]).generate([[1, 2, 3]])
  assert result.output_ids == decoder(stop_token_ids=(2,)).generate([[1, 2, 3]]).output_ids
