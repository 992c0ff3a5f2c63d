"""The end of a run: the trained drafter as a HF directory, and as a delta over its init."""

from __future__ import annotations

import pathlib

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pard_jax import adapters
from pard_jax import checkpoints
from pard_jax.drafter_kinds import DrafterKind
from pard_jax.train.spec import TrainSpec


def export(model_graphdef, state, mesh: Mesh, workdir: pathlib.Path, tokenizer,
           spec: TrainSpec, kind: DrafterKind) -> pathlib.Path:
  """Writes `workdir/hf` from process 0, after gathering the parameters onto every host.

  A drafter trained with its shared tensors frozen (`train.trainable="layers"`) is also
  written as `workdir/delta`: only what differs from `model.init`, in float16; one trained
  with adapters (`"lora"`) as its adapters' factors and mask rows.
  """
  params = jax.jit(lambda p: p, out_shardings=NamedSharding(mesh, P()))(state["params"])
  out = workdir / "hf"
  if jax.process_index() == 0:
    model = nnx.merge(model_graphdef, params)
    lora = None
    if adapters.has_adapters(model):  # the HF directory gets them folded in, the delta factors
      lora = adapters.factors(model)
      unfolded = adapters.merge_adapters(nnx.merge(model_graphdef, params), fold_dense=False)
      adapters.merge_adapters(model)
    extra = {}
    hf_config = model.config.to_hf()
    # From-scratch models know their special tokens only through the tokenizer.
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
      if hf_config.get(name) is None and getattr(tokenizer, name, None) is not None:
        extra[name] = getattr(tokenizer, name)
    checkpoints.save_hf(model, out, tokenizer, extra_config=extra, drafter=kind)
    if lora is not None and spec.model.init is not None:
      checkpoints.save_delta(unfolded, workdir / "delta", spec.model.init,
                             spec.model.keep_layers, drafter=kind, factors=lora)
    elif spec.train.trainable == "layers" and spec.model.init is not None:
      checkpoints.save_delta(model, workdir / "delta", spec.model.init, spec.model.keep_layers,
                             drafter=kind)
  return out
