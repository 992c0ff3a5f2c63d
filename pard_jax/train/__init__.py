"""Training: `defaults` (every field; no jax), `spec` (the config read once, every check),
`step` (the train step: layout, loss, AdamW, sharded jit), `checkpointing` (orbax, the workdir's
run settings), `metrics` (metrics.jsonl, TensorBoard, progress), `export` (HF directory and
delta), `loop` (the run)."""
