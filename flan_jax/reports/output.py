"""A report's files: report.json, report.md and its figures, each complete or absent (flan_jax.files).

Shared by the FLAN report (flan_jax.report) and the study report (`study.write`): a full disk is a
DiskFullError, any other failed write a UserError, each one line that says where. The output folder may
be local or in a bucket (flan_jax.storage): matplotlib writes only local files, so a figure for a bucket
is drawn into a local scratch folder and uploaded as one object.
"""

import errno
import os
import tempfile
from typing import Callable, Mapping

from flan_jax import files, storage
from flan_jax.errors import DiskFullError, UserError


def write_files(output_dir: str, report: Mapping, markdown: Callable[[Mapping], str],
                figures: Mapping[str, Callable[[Mapping, str], None]], *, disk_full: str, refused: str) -> list[str]:
  """Writes report.json, report.md (`markdown(report)`), then each figure (file name -> draw(report, path)).

  Returns the paths written, in that order. `disk_full` is the message of a full disk; any other failure
  reads "`refused`: the reason".
  """
  try:
    storage.makedirs(output_dir)
    paths = [storage.join(output_dir, name) for name in ("report.json", "report.md", *figures)]
    files.write_json(paths[0], report)
    with files.replacing(paths[1]) as f:
      f.write(markdown(report))
    for path, draw in zip(paths[2:], figures.values()):
      _draw(draw, report, path)
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise DiskFullError(disk_full) from e
    raise UserError(f"{refused}: {e.strerror or e}") from e
  return paths


def _draw(draw: Callable[[Mapping, str], None], report: Mapping, path: str) -> None:
  """Draws a figure into `path`; for a bucket, into a local file of the same name that is then uploaded."""
  if not storage.is_remote(path):
    draw(report, path)
    return
  with tempfile.TemporaryDirectory(prefix="flan_jax_figure_") as scratch:
    local = os.path.join(scratch, storage.basename(path))  # the same suffix: matplotlib picks the format by it
    draw(report, local)
    storage.copy_local_to(local, path)
