"""The FLAN paper's experiments in one command: plan a study's training and eval jobs, check its held-out
clusters for contamination, run the jobs resumably (or print them for a launcher), and write the report.

`python -m flan_jax.study --gin_file=studies/miniature.gin [--gin.STUDY_DIR=DIR] [--gin.study.action=print]`

The design and its plan are flan_jax/studies/design.py; running, done markers and the report's
manifest are flan_jax/studies/runner.py; docs/study.md says what a study guarantees.
"""

import sys

from flan_jax import cli, startup

if __name__ == "__main__":  # before TensorFlow and JAX load: Ctrl-C and TF's start-up lines stay quiet
  startup.prepare()

from flan_jax.studies import runner  # noqa: E402


def main(flags: cli.Flags) -> None:
  del flags  # everything comes from gin
  runner.study()


if __name__ == "__main__":
  cli.run(main, sys.argv[1:])
