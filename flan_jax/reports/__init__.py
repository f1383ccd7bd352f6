"""Reports: FLAN's numbers, tables and charts from saved per-example eval predictions; never runs a model.

- records.py: the prediction record, defined once (evaluation writes it, the reports read it), and reading a run.
- stats.py: the settings, bootstrap CIs over examples, paired differences, the hierarchical bootstrap.
- summary.py: the protocol (best validation template, template mean, clusters) and `build_report` over runs.
- markdown.py, plots.py: the FLAN report as markdown and as charts.
- output.py: writing a report's files (report.json, report.md, figures); a full disk is one line.
- command.py: the report command's flags, RUN=PATH pairs and the files one report writes.
- study.py: the study report (sizes x seeds x conditions x held-out clusters); its manifest in
  study_manifest.py, its markdown in study_markdown.py, its figures in study_plots.py.

Imports: numpy, matplotlib (only while drawing a figure) and the leaves (flan_jax.errors, flan_jax.files,
flan_jax.storage: predictions and reports may live in a bucket).
Never JAX, TensorFlow or seqio, nor flan_jax's model, text, checkpoints, data, training, evaluation, studies
or cli: a report runs where none of them is installed, and `python -m flan_jax.report` starts in a moment.
"""

from flan_jax.reports import records, study
from flan_jax.reports.markdown import format_estimate, markdown, markdown_summary
from flan_jax.reports.output import write_files
from flan_jax.reports.plots import plot_clusters, plot_steps, plot_templates
from flan_jax.reports.records import NORMALIZATIONS, Run, load_run, parse_record
from flan_jax.reports.stats import Settings, as_json, check_settings, estimate, paired_difference, resample_means
from flan_jax.reports.summary import (
  build_report,
  check_same_examples,
  cluster_order,
  example_score,
  select_template,
  summarize,
  summarize_run,
  template_stats,
)

__all__ = [
    "NORMALIZATIONS", "Run", "Settings", "as_json", "build_report", "check_same_examples", "check_settings",
    "cluster_order", "estimate", "example_score", "format_estimate", "load_run", "markdown", "markdown_summary",
    "paired_difference", "parse_record", "plot_clusters", "plot_steps", "plot_templates", "records",
    "resample_means", "select_template", "study", "summarize", "summarize_run", "template_stats", "write_files",
]
