"""Studies: the FLAN paper's experiments (sizes x seeds x held-out clusters x conditions) as a plan of
training and eval jobs, run resumably, checked for contamination, and reported.

- design.py: what a study binds (`Design`), its checks, and the plan (`Job`, `Cell`).
- runner.py: `study` (the study command's gin entry point), running jobs, done markers, the manifest.

Imports: training, evaluation, data, checkpoints, reports, text, model and the leaves. Never cli or the
commands: a job runs the binaries' functions in this process, not their command lines.
"""

from flan_jax.studies import design, runner
from flan_jax.studies.design import CONDITIONS, Cell, Design, Job, check, plan
from flan_jax.studies.runner import DONE, is_done, run_job, run_jobs, study

__all__ = ["CONDITIONS", "Cell", "DONE", "Design", "Job", "check", "design", "is_done", "plan", "run_job", "run_jobs",
           "runner", "study"]
