"""The task catalogue: `python -m flan_tasks [--all] [--json] [FILTER]` lists clusters, datasets,
template counts and mixtures, i.e. the names to put in MIXTURE_OR_TASK_NAME."""

import argparse
import json
import signal
import sys

import seqio

from flan_jax import task_info
from flan_tasks import embedded, flan
from flan_tasks.flan import clusters
from flan_tasks.flan import dataset as dataset_lib


def _flan_rows():
  for d in flan.DATASETS:
    answer = sum(t.asks_for_answer for t in d.templates)
    yield {"collection": "flan", "cluster": d.cluster, "dataset": d.paper_name, "task": d.task,
           "tfds": d.tfds, "templates": len(d.templates), "turned_around": len(d.templates) - answer,
           "options": "options" in d.fields, "in_mixtures": d.in_mixtures, "manual": d.manual,
           "tasks": dataset_lib.task_names(d)}


def _embedded_rows():
  for cluster, name, _, fields, templates in embedded.DATASETS:
    task = embedded.PREFIX + name
    yield {"collection": "embedded", "cluster": cluster, "dataset": name, "task": task,
           "tfds": None, "templates": len(templates),
           "turned_around": sum(not t.asks_for_answer for t in templates),
           "options": "options" in fields, "in_mixtures": True, "manual": "",
           "tasks": {"train": [task], "eval": [task_info.eval_task(task)]
                     + ([task_info.scoring_task(task)] if "options" in fields else [])}}


def catalogue() -> dict:
  """Everything the command prints, as data."""
  mixtures = sorted(n for n in seqio.MixtureRegistry.names()
                    if n.startswith((dataset_lib.PREFIX, embedded.PREFIX)))
  return {"clusters": {c: clusters.TITLES[c] for c in clusters.CLUSTERS},
          "overlaps": {c: sorted(clusters.overlapping(c) - {c}) for c in clusters.CLUSTERS},
          "datasets": list(_flan_rows()) + list(_embedded_rows()),
          "mixtures": {n: len(seqio.MixtureRegistry.get(n).tasks) for n in mixtures}}


def _print_text(cat: dict, show_all: bool, out) -> None:
  rows = cat["datasets"]
  for collection in ("flan", "embedded"):
    print(f"== {collection} datasets ==", file=out)
    current = None
    for row in (r for r in rows if r["collection"] == collection):
      if row["cluster"] != current:
        current = row["cluster"]
        title = cat["clusters"].get(current, current)
        overlap = cat["overlaps"].get(current)
        print(f"\n[{current}] {title}" + (f"  (overlaps: {', '.join(overlap)})" if overlap
                                         else ""), file=out)
      note = "" if row["in_mixtures"] else "  [manual download; not in mixtures]"
      kind = "classification" if row["options"] else "generation"
      print(f"  {row['task']:<42} {row['templates']:>2} templates "
            f"({row['turned_around']} turned around), {kind}"
            + (f", tfds {row['tfds']}" if row["tfds"] else "") + note, file=out)
      if show_all:
        for kind_name, names in row["tasks"].items():
          print(f"      {kind_name}: {' '.join(names)}", file=out)
    print(file=out)
  print("== mixtures (tasks) ==", file=out)
  for name, count in cat["mixtures"].items():
    print(f"  {name:<48} {count:>3}", file=out)
  eval_, scoring = task_info.eval_task("NAME"), task_info.scoring_task("NAME")
  print(f"\nPer dataset NAME: NAME (train), {eval_}, {scoring} (options), {eval_}_tI / "
        f"{scoring}_tI (template I), NAME_templatesK, NAME_notemplate, NAME_datasetname, "
        f"NAME_{dataset_lib.FEWSHOT_SHOTS}shot. Use --all to list them.", file=out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m flan_tasks", description=__doc__)
  parser.add_argument("filter", nargs="?", default="",
                      help="only rows/mixtures whose name contains this text")
  parser.add_argument("--all", action="store_true", help="also list every task of each dataset")
  parser.add_argument("--json", action="store_true", help="print the catalogue as JSON")
  args = parser.parse_args(argv)
  cat = catalogue()
  if args.filter:
    cat["datasets"] = [r for r in cat["datasets"]
                       if args.filter in r["task"] or args.filter in r["cluster"]]
    cat["mixtures"] = {n: c for n, c in cat["mixtures"].items() if args.filter in n}
  if args.json:
    json.dump(cat, sys.stdout, indent=1)
    print()
  else:
    _print_text(cat, args.all, sys.stdout)
  return 0


if __name__ == "__main__":
  signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `python -m flan_tasks | head` ends quietly
  sys.exit(main())
