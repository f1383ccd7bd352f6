"""`python -m flan_tasks` lists clusters, datasets, template counts and mixtures; importing `tasks`
stays cheap."""

import json
import os
import subprocess
import sys

import flan_tasks.__main__ as catalogue_cli
from tests import conftest

ROOT = conftest.ROOT


def test_text_catalogue_lists_everything(capsys):
  assert catalogue_cli.main([]) == 0
  out = capsys.readouterr().out
  for name in ("[nli] Natural language inference", "flan_anli_r1", "10 templates", "flan_all",
               "flan_no_nli", "flan_eval_nli", "flan_no_nli_notemplate", "flan_clusters3",
               "flan_no_nli_templates4", "embedded_all", "embedded_movie_review",
               "not in mixtures"):
    assert name in out, name


def test_json_catalogue_and_filter(capsys):
  assert catalogue_cli.main(["--json", "nli"]) == 0
  cat = json.loads(capsys.readouterr().out)
  assert len(cat["clusters"]) == 12
  assert {r["task"] for r in cat["datasets"]} >= {"flan_anli_r1", "flan_qnli"}
  assert all("nli" in n for n in cat["mixtures"])
  row = next(r for r in cat["datasets"] if r["task"] == "flan_cb")
  assert row["templates"] == 10 and "flan_cb_eval_t0" in row["tasks"]["eval_per_template"]


IMPORT_ONLY = """
import seqio, tensorflow_datasets as tfds
made = []
init = tfds.core.DatasetBuilder.__init__
def counted(self, *args, **kwargs):
  made.append(type(self).__name__)
  init(self, *args, **kwargs)
tfds.core.DatasetBuilder.__init__ = counted
import flan_tasks
print(len(seqio.TaskRegistry.names()), made)
"""


def test_importing_tasks_registers_them_without_building_a_dataset():
  """Registering the collection stays cheap however many tasks it holds: importing flan_tasks makes no TFDS
  builder (each task makes its own when first asked for data). A count, not a timing, so that a busy machine
  cannot fail it."""
  out = subprocess.run([sys.executable, "-c", IMPORT_ONLY], cwd=ROOT, capture_output=True, text=True,
                       check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  tasks, made = out.stdout.strip().splitlines()[-1].split(" ", 1)
  assert int(tasks) > 1000 and made == "[]", out.stdout[-2000:]
