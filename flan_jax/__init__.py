"""flan_jax: FLAN-style instruction tuning in JAX (seqio tasks, a sharded Flax trainer, zero-shot eval).

Code map. Folders are layers: each imports only the ones above it in this list (tests/test_layout.py
checks it; CONTRIBUTING.md says where new code goes).

  errors.py files.py settings.py   leaves: one-line errors, whole-or-nothing files, gin settings checks
  metrics.py task_info.py          leaves: metric writers, what the task registry says of a task
  startup.py                       leaf: what a command does before its heavy imports
  lazy.py                          leaf: a package's names imported on first use (text/, checkpoints/)
  storage.py                       leaf: user paths, local or in a bucket (gs://, s3://), read and written whole
  model/        the decoder, its attention kernels, LoRA, the mesh and decoding (JAX only)
  text/         tokenizers, the run's vocabulary and example format (seqio and TF but records.py; never JAX)
  reports/      prediction records, statistics, the FLAN and study reports (numpy and matplotlib)
  data/         the input pipeline, what a run trained on, contamination checks
  checkpoints/  run records, orbax checkpoints, Hugging Face / GGUF / PEFT in and out, export
  training/     the train step, optimizers and the training loop
  evaluation/   zero-shot evaluation and its prediction records
  studies/      the paper's experiments as resumable plans of jobs
  harness/      lm-evaluation-harness on flan_jax's model (FlanJaxLM, "flan_jax"; `python -m flan_jax.harness`)
  cli.py        flags -> gin -> exit codes, shared by the commands
  train.py eval.py export.py report.py study.py    the commands: `python -m flan_jax.<command>`

The task collections live beside this package, in `tasks/` (imported as `flan_tasks`).
"""
