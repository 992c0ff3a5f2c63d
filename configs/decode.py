"""Decoding / evaluation settings for decode.py.

The defaults are the main job: the Qwen2.5-Coder-1.5B-Instruct target (installed by setup.sh)
decoded greedily as `ar`, as `sd` with the untouched Qwen2.5-Coder-0.5B-Instruct drafting
autoregressively, and as `pard` with that 0.5B adapted here into a parallel drafter
(`drafters/qwen2_5_coder_0_5b_pard`, low-rank adapters over the installed GGUF), K = 4, on the
first 4 prompts of each evaluation set (a `.jsonl` file of your own is decoded whole unless
`max_prompts` is set). The SmolLM2-135M job is `configs/decode_smollm2.py`.

  python decode.py --config=configs/decode.py --config.method=ar,sd,pard \
      --config.num_draft_tokens=2,4,8 --config.prompts=mtbench,humaneval,gsm8k \
      --config.target=/models/Llama-3.1-8B-Instruct --config.drafter=/models/PARD-Llama-3.2-1B \
      --config.sd_drafter=/models/Llama-3.2-1B-Instruct --config.report_dir=/tmp/eval

The field names are a contract other tools rely on; see README.md.
"""

import ml_collections
from ml_collections import config_dict

from configs import ROOT
from pard_jax.checkpoints import assets


def get_config():
  config = ml_collections.ConfigDict()
  # HF directory, .gguf file or package:/asset: reference; "" = the SmolLM2-135M-Instruct GGUF
  config.target = assets.QWEN_CODER_TARGET
  # Same formats, or a delta directory over the target; unused for method=ar. Several as
  # LABEL=PATH,LABEL=PATH: every method but ar and sd runs once with each, side by side.
  config.drafter = str(ROOT / "drafters/qwen2_5_coder_0_5b_pard")
  # The AR drafter for sd and assisted generation; "" = the (first) drafter.
  config.sd_drafter = assets.QWEN_CODER_DRAFTER
  config.method = "ar,sd,pard"  # comma-separated: ar, sd, pard, parallelspec (ar always runs)
  config.num_draft_tokens = (4,)  # K values, e.g. 2,4,8
  config.mask_token_ids = ()  # override: (id,) for pard, K-1 ids for parallelspec
  config.max_new_tokens = 64
  config.temperature = 0.0  # 0 = greedy
  config.top_k = 0  # 0 = off
  config.top_p = 1.0
  # Verify only the leading drafts whose running product of drafter probabilities reaches
  # this (a cheaper target forward when the drafter is unsure; exact either way); 0 = all K.
  # 0.1 was chosen on benchmarks/decode_bench.py's chat prompts, not on the evaluation sets.
  config.verify_threshold = 0.1
  # A feature drafter (config.json "target_feature_layers") reads the target's hidden states;
  # False: it drafts from tokens alone, as a PARD-1 drafter ("dual mode").
  config.use_target_features = True
  config.seed = 0
  config.batch_size = 1
  # Comma-separated: mtbench, humaneval, gsm8k and/or .jsonl files ("prompt" or "input_ids").
  config.prompts = "mtbench,humaneval,gsm8k"
  config.chat_template = True  # apply the tokenizer's chat template to text prompts
  # Per set, 0 = all. Unset: the first 4 prompts of each named set (mtbench, ...) and every
  # prompt of a .jsonl file; a number applies to files too.
  config.max_prompts = config_dict.placeholder(int)
  config.output = ""  # .jsonl, one line per (cell, prompt); "" = none
  config.report_dir = ""  # results.json, results.md, plots; a rerun skips finished cells
  config.peers = ""  # "transformers": generate and assisted generation in the same run
  config.dtype = "float32"  # float32 | bfloat16
  # Dense layers: "packed" (prepacked weights through pard_jax/packed_dense, built on first use:
  # a K+1-token verify costs about what a 1-token forward does), "xla" (XLA's dot), or "auto"
  # (packed where it runs: float32 on an x86-64 CPU with AVX2, FMA and a C++ compiler).
  config.dense_kernel = "auto"
  # None = the EOS ids of config.json, generation_config.json and the tokenizer; () = none.
  config.stop_token_ids = config_dict.placeholder(tuple)
  config.cache_len = 0  # 0 = prompt + max_new_tokens
  # (data, fsdp, tensor) over the devices, as train.py's: weights split over tensor
  # (Megatron-style), batch rows over data x fsdp; -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict(dict(shape=(1, 1, 1)))
  config.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="",  # host:port of process 0; set with num_processes > 1
      num_processes=1,
      process_id=0,
  ))
  return config
