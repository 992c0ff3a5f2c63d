"""Exactness of the decoding loop: greedy equals the target's own greedy decoding (ours and
transformers'), sampling preserves the target distribution, and the batch bookkeeping holds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from pard_jax import checkpoints, sampling
from pard_jax import drafter_kinds as kinds
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, DecodeError, SpeculativeDecoder
from pard_jax.errors import CheckpointError, ConfigError
from pard_jax.model import create_model
from tests.helpers import chi_square_pvalue, exact_distribution, perturbed, resized_vocab

TINY = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128)
MASK = 39



def decode(target, drafter, prompts, seed=0, method="ar", mask_token_ids=None, **kwargs):
  if mask_token_ids is None:
    mask_token_ids = (MASK,) if method == "pard" else ()
  kwargs["drafter_kind"] = kinds.for_method(method, override=mask_token_ids)
  return SpeculativeDecoder(target, drafter, DecodeConfig(**kwargs)).generate(prompts, seed=seed)


@functools.lru_cache(maxsize=None)
def tiny_pair(seed):
  target = create_model(TINY, seed)
  return target, perturbed(target, 0.3, seed + 100)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 3), k=st.integers(1, 8), method=st.sampled_from(["sd", "pard"]),
       lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4), data=st.data())
def test_greedy_speculative_equals_autoregressive(seed, k, method, lengths, data):
  target, drafter = tiny_pair(seed)
  prompts = [data.draw(st.lists(st.integers(0, TINY.vocab_size - 2), min_size=n, max_size=n))
             for n in lengths]
  stop = data.draw(st.sampled_from([(), (3,), (3, 17)]))
  common = dict(max_new_tokens=10, stop_token_ids=stop)
  ar = decode(target, None, prompts, **common)
  spec = decode(target, drafter, prompts, method=method, num_draft_tokens=k, **common)
  assert spec.output_ids == ar.output_ids
  for ids, accepts in zip(spec.output_ids, spec.accept_lengths):
    assert sum(accepts) == len(ids) and all(1 <= a <= k + 1 for a in accepts)
    assert len(ids) == 10 or ids[-1] in stop


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama3", "qwen3"])
def test_greedy_matches_transformers_generate(arch, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from tests.hf_helpers import save_hf_model  # pylint: disable=g-import-not-at-top
  hf = save_hf_model(arch, tmp_path)
  target = checkpoints.load_model(tmp_path)
  drafter = perturbed(target, 0.2, 0)
  eos = 5
  prompts = [[11, 22, 33, 44, 55], [7, 8], [90]]
  expected = []
  for prompt in prompts:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                      eos_token_id=eos, pad_token_id=0)
    expected.append(out[0, len(prompt):].tolist())
  for method, k in [("ar", 1), ("sd", 3), ("pard", 5)]:
    result = decode(target, drafter, prompts, method=method, num_draft_tokens=k,
                    max_new_tokens=12, stop_token_ids=(eos,), mask_token_ids=(
                        (MASK,) * (k - 1) if method == "pard" else ()))
    assert result.output_ids == expected, method


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sd", "pard", "parallelspec"])
def test_verify_threshold_stays_exact_and_verifies_fewer(method):
  target, drafter = tiny_pair(3)
  # Sharper heads: random tiny models are near-uniform, so every draft would look unsure.
  target, drafter = nnx.clone(target), nnx.clone(drafter)
  for model in (target, drafter):
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 30
  prompts = [[1, 2, 3], [4, 5], [6]]
  masks = {"pard": (MASK,), "parallelspec": (36, 37, 38)}.get(method, ())
  ar = decode(target, None, prompts, max_new_tokens=16, stop_token_ids=(3,))
  widths = set()
  for threshold in (0.005, 0.3):  # between them 4-5 of the 5 widths, for each method
    result = decode(target, drafter, prompts, method=method, num_draft_tokens=4,
                    max_new_tokens=16, stop_token_ids=(3,), mask_token_ids=masks,
                    verify_threshold=threshold)
    assert result.output_ids == ar.output_ids, threshold
    for accepted, verified in zip(result.accepted_drafts, result.verified_drafts):
      assert all(a <= v <= 4 for a, v in zip(accepted, verified))
    widths |= {v for row in result.verified_drafts for v in row}
  assert {0, 4} <= widths and len(widths) >= 4  # the shortest, the full and others ran


@pytest.mark.parametrize("k", [1, 4])
def test_drafter_equal_to_target_accepts_every_draft(k):
  target, _ = tiny_pair(0)
  result = decode(target, target, [[1, 2, 3], [4]], method="sd", num_draft_tokens=k,
                  max_new_tokens=23)
  for accepts in result.accept_lengths:
    assert accepts[:-1] == [k + 1] * (len(accepts) - 1)
    assert sum(accepts) == 23


@pytest.mark.slow
def test_stop_tokens_and_max_new_tokens_per_row():
  target, drafter = tiny_pair(1)
  prompts = [[1, 2, 3], [9, 9], [5, 6, 7, 8]]
  free = decode(target, None, prompts, max_new_tokens=15).output_ids
  stop = free[0][4]  # a token row 0 produces at step 5
  result = decode(target, drafter, prompts, method="pard", num_draft_tokens=4,
                  max_new_tokens=15, stop_token_ids=(stop,))
  for row, ids in zip(free, result.output_ids):
    cut = row.index(stop) + 1 if stop in row else len(row)
    assert ids == row[:cut]
  assert result.output_ids[0][-1] == stop and len(result.output_ids[0]) <= 5
  for n in (1, 2, 7):
    assert [len(ids) for ids in decode(target, drafter, prompts, method="sd",
                                       num_draft_tokens=3, max_new_tokens=n).output_ids] == [n] * 3


def test_statistics_are_consistent():
  target, drafter = tiny_pair(2)
  result = decode(target, drafter, [[1, 2], [3, 4, 5]], method="pard", num_draft_tokens=3,
                  max_new_tokens=12)
  assert result.num_iterations == [len(a) for a in result.accept_lengths]
  assert result.num_drafted == [3 * n for n in result.num_iterations]
  # Accepted drafts are uncut: at most K, and one short of the committed count but at the end.
  for accepted, committed in zip(result.accepted_drafts, result.accept_lengths):
    assert all(0 <= a <= 3 for a in accepted)
    assert [a + 1 for a in accepted[:-1]] == committed[:-1]
    assert committed[-1] <= accepted[-1] + 1
  assert result.mean_accept_length == pytest.approx(24 / sum(result.num_iterations))
  assert result.seconds > 0


def test_sampling_is_seeded_and_reproducible():
  target, drafter = tiny_pair(0)
  kwargs = dict(method="pard", num_draft_tokens=3, max_new_tokens=16, temperature=1.0)
  a = decode(target, drafter, [[1, 2, 3]] * 3, seed=7, **kwargs).output_ids
  b = decode(target, drafter, [[1, 2, 3]] * 3, seed=7, **kwargs).output_ids
  c = decode(target, drafter, [[1, 2, 3]] * 3, seed=8, **kwargs).output_ids
  assert a == b and a != c
  assert len({tuple(row) for row in a}) > 1  # rows draw independently


def test_bad_requests_get_clear_errors():
  target, drafter = tiny_pair(0)
  with pytest.raises(DecodeError, match="needs a cache of 138 positions"):
    decode(target, None, [[1] * 10], max_new_tokens=128)
  other_vocab = create_model(TINY.replace(vocab_size=41))
  with pytest.raises(DecodeError, match="vocabularies differ"):
    decode(target, other_vocab, [[1]], method="sd")
  with pytest.raises(DecodeError, match="needs a drafter"):
    decode(target, None, [[1]], method="sd")
  with pytest.raises(DecodeError, match="outside the vocabulary"):
    decode(target, None, [[1]], stop_token_ids=(40,))
  with pytest.raises(DecodeError, match=r"must lie in \[0, 40\)"):
    decode(target, None, [[1, 45]])
  with pytest.raises(DecodeError, match="at least one token"):
    decode(target, None, [[1], []])
  with pytest.raises(ConfigError, match="unknown method 'medusa'; choose from ar, sd"):
    kinds.for_method("medusa")
  with pytest.raises(DecodeError, match="drafter_kind must be a drafter_kinds.DrafterKind"):
    DecodeConfig(drafter_kind="pard")
  with pytest.raises(DecodeError, match="top_p"):
    DecodeConfig(top_p=0.0)
  with pytest.raises(DecodeError, match=r"verify_threshold must be in \[0, 1\]"):
    DecodeConfig(verify_threshold=2.0)
  with pytest.raises(ConfigError, match="needs 3 distinct mask ids; this drafter has 1"):
    DecodeConfig(drafter_kind=kinds.ParallelSpecDrafter((1,)), num_draft_tokens=4)



@pytest.mark.parametrize("drafter_vocab, method", [
    (48, "pard"), pytest.param(36, "sd", marks=pytest.mark.slow)])
def test_drafter_with_padded_vocabulary(drafter_vocab, method):
  target, drafter = tiny_pair(1)
  drafter = resized_vocab(drafter, drafter_vocab)
  prompts = [[1, 2, 3], [30, 31]]
  ar = decode(target, None, prompts, max_new_tokens=12)
  shared = min(drafter_vocab, TINY.vocab_size)
  spec = decode(target, drafter, prompts, method=method, num_draft_tokens=3, max_new_tokens=12,
                shared_vocab_size=shared, mask_token_ids=(shared - 1,) * 2
                if method == "pard" else ())
  assert spec.output_ids == ar.output_ids
  assert max(max(a) for a in spec.accept_lengths) > 1  # the shared rows still draft well
  with pytest.raises(DecodeError, match="vocabularies differ"):
    decode(target, drafter, prompts, method="sd")
  with pytest.raises(DecodeError, match="exceeds a model's vocabulary"):
    decode(target, drafter, prompts, method="sd", shared_vocab_size=41)


@pytest.mark.parametrize("method", [pytest.param("sd", marks=pytest.mark.slow), "pard"])
def test_restricted_draft_vocabulary_stays_exact(method):
  target, drafter = tiny_pair(2)
  drafter = nnx.clone(drafter)  # tiny_pair's models are shared between tests
  prompts = [[1, 2, 3], [30, 31], [7]]
  ar = decode(target, None, prompts, max_new_tokens=12)
  # Every even id and all but two of the tokens the target emits: some drafts cannot match.
  used = sorted({t for ids in ar.output_ids for t in ids})
  drafter.config = drafter.config.replace(
      draft_vocab=tuple(sorted(set(range(0, TINY.vocab_size, 2)) | set(used[:-2]))))
  spec = decode(target, drafter, prompts, method=method, num_draft_tokens=3, max_new_tokens=12)
  assert spec.output_ids == ar.output_ids
  assert max(max(a) for a in spec.accept_lengths) > 1


def test_drafter_kinds_own_their_config_json_fields():
  pard, spec = kinds.PardDrafter(9), kinds.ParallelSpecDrafter((7, 8, 9))
  assert kinds.from_hf({"pard_token": 9, "spd_type": "pard"}) == pard
  assert kinds.from_hf({"parallelspec_tokens": [7, 8, 9]}) == spec
  assert kinds.from_hf({"model_type": "llama"}) is None
  for kind in (pard, spec):
    assert kinds.from_hf(kind.to_hf()) == kind
  assert pard.mask_ids(4) == (9, 9, 9) and spec.mask_ids(3) == (7, 8)
  # Method names become kinds at the config boundary; the config's kind or an override.
  assert kinds.for_method("pard", pard) == pard
  assert kinds.for_method("pard", None, override=(5,)) == kinds.PardDrafter(5)
  assert kinds.for_method("parallelspec", spec) == spec
  assert kinds.for_method("sd", pard) == kinds.AutoregressiveDrafter()
  assert kinds.for_method("ar").num_drafts(4) == 0


@pytest.mark.parametrize("make, message", [
    (lambda: kinds.for_method("pard", None), "not a PARD checkpoint.*declares no drafter"),
    (lambda: kinds.for_method("pard", kinds.ParallelSpecDrafter((3, 4))),
     "not a PARD checkpoint.*declares parallelspec"),
    (lambda: kinds.for_method("parallelspec", kinds.PardDrafter(3)),
     "not a ParallelSpec checkpoint.*declares pard"),
    (lambda: kinds.for_method("pard", None, override=(4, 5)), "one shared mask token"),
    (lambda: kinds.ParallelSpecDrafter((7, 7)), "distinct"),
    (lambda: kinds.ParallelSpecDrafter((7, 8)).mask_ids(4), r"K <= 3"),
])
def test_bad_drafter_kinds_are_named(make, message):
  with pytest.raises(ConfigError, match=message):
    make()


@pytest.mark.parametrize("hf, message", [
    ({"pard_token": 3, "spd_type": "parallelspec"}, r"spd_type 'parallelspec' needs its field "
     r"\(pard: 'pard_token'; .*\), but its fields declare pard$"),
    ({"spd_type": "pard"}, r"spd_type 'pard' needs its field .*, but none of those fields is "
     r"there$"),
])
def test_config_json_declaring_a_bad_drafter_kind_is_named(hf, message):
  with pytest.raises(CheckpointError, match=message):
    kinds.from_hf(hf)


def test_parallelspec_distinct_masks_stay_exact():
  target, drafter = tiny_pair(3)
  prompts = [[1, 2, 3, 4], [5]]
  ar = decode(target, None, prompts, max_new_tokens=10)
  ps = decode(target, drafter, prompts, method="parallelspec", num_draft_tokens=4,
              max_new_tokens=10, mask_token_ids=(36, 37, 38))
  assert ps.output_ids == ar.output_ids


def test_top_k_top_p_filtering():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  np.testing.assert_allclose(sampling.probs_from_logits(logits, 1.0, top_k=2),
                             [[0.625, 0.375, 0, 0]], atol=1e-6)
  np.testing.assert_allclose(sampling.probs_from_logits(logits, 1.0, top_p=0.7),
                             [[0.625, 0.375, 0, 0]], atol=1e-6)
  np.testing.assert_allclose(sampling.probs_from_logits(logits, 1.0, top_p=0.81),
                             [[0.5, 0.3, 0.15, 0]] / np.float32(0.95), atol=1e-6)
  np.testing.assert_array_equal(sampling.probs_from_logits(logits, 0.0), [[1, 0, 0, 0]])


# ---------------------------------------------------------------------------- distribution

VOCAB = 5
STEPS = 3
SAMPLES = 6000
SAMPLING_CFG = ModelConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=8)


def _peaked(seed, sharpness=40):
  """Random tiny model with confident, varied next-token distributions."""
  model = create_model(SAMPLING_CFG, seed)
  model.lm_head.kernel[...] = model.lm_head.kernel[...] * sharpness
  return model


def _draw(method, top_k, seed=0, draft_vocab=None, verify_threshold=0.0):
  # With a threshold, a less sure drafter: its confidences then fall on both sides of it.
  target, drafter = _peaked(0), _peaked(1, 3 if verify_threshold else 40)
  drafter.config = drafter.config.replace(draft_vocab=draft_vocab)
  prompt = [1, 3]
  result = decode(target, drafter, [prompt] * SAMPLES, seed=seed, method=method,
                  num_draft_tokens=3 if method == "parallelspec" else 2, max_new_tokens=STEPS,
                  temperature=1.0, top_k=top_k, verify_threshold=verify_threshold,
                  mask_token_ids={"pard": (4,), "parallelspec": (3, 4)}.get(method, ()))
  if verify_threshold:  # the test must see short and full verifications alike
    assert {1, 2} <= {v for row in result.verified_drafts for v in row}
  return np.asarray(result.output_ids), exact_distribution(target, prompt, STEPS, top_k)


@pytest.mark.parametrize("method, top_k, draft_vocab, verify_threshold", [
    # The fast subset keeps sd with top-k, and pard plain, with a restricted head and with a
    # verify threshold; the full suite runs each of those for the other method too.
    pytest.param("sd", 0, None, 0, marks=pytest.mark.slow), ("pard", 0, None, 0),
    ("sd", 3, None, 0), pytest.param("pard", 3, None, 0, marks=pytest.mark.slow),
    # restricted heads: q = 0 elsewhere
    pytest.param("sd", 0, (0, 2, 3), 0, marks=pytest.mark.slow), ("pard", 0, (1, 4), 0),
    ("parallelspec", 0, None, 0), pytest.param("sd", 0, None, 0.1, marks=pytest.mark.slow),
    ("pard", 0, None, 0.1)])
def test_sampling_preserves_target_distribution(method, top_k, draft_vocab, verify_threshold):
  samples, exact = _draw(method, top_k, draft_vocab=draft_vocab,
                         verify_threshold=verify_threshold)
  assert samples.shape == (SAMPLES, STEPS)
  assert chi_square_pvalue(samples, exact) > 1e-3


def _wrong_verify(rng, drafts_BxK, q_BxKxV, p_BxK1xV, greedy, num_verified=None):
  """A classic bug: after a rejection, resample from p instead of norm(max(p - q, 0))."""
  k = drafts_BxK.shape[1]
  accept_rng, fresh_rng = jax.random.split(rng)
  p_draft = jnp.take_along_axis(p_BxK1xV[:, :k], drafts_BxK[..., None], -1)[..., 0]
  q_draft = jnp.take_along_axis(q_BxKxV, drafts_BxK[..., None], -1)[..., 0]
  u = jax.random.uniform(accept_rng, drafts_BxK.shape)
  accepted_B = jnp.sum(jnp.cumprod(u * q_draft < p_draft, axis=-1), axis=-1).astype(jnp.int32)
  fresh_BxK1 = sampling.sample(fresh_rng, p_BxK1xV, greedy)
  committed = jnp.where(jnp.arange(k + 1)[None] < accepted_B[:, None],
                        jnp.pad(drafts_BxK, ((0, 0), (0, 1))), fresh_BxK1)
  return accepted_B, committed


@pytest.mark.parametrize("method", [pytest.param("sd", marks=pytest.mark.slow), "pard"])
def test_chi_square_rejects_a_wrong_acceptance_rule(method, monkeypatch):
  # jit caches traces by function and static arguments: drop them around the swap.
  jax.clear_caches()
  monkeypatch.setattr(sampling, "verify", _wrong_verify)
  try:
    samples, exact = _draw(method, 0)
  finally:
    jax.clear_caches()
  assert chi_square_pvalue(samples, exact) < 1e-6
