"""A report's files: report.json, report.md and its figures, each complete or absent (flan_jax.files).

Shared by the FLAN report (flan_jax.report) and the study report (`study.write`): a full disk is a
DiskFullError, any other failed write a UserError, each one line that says where.
"""

import errno
import os
from typing import Callable, Mapping

from flan_jax import files
from flan_jax.errors import DiskFullError, UserError


def write_files(output_dir: str, report: Mapping, markdown: Callable[[Mapping], str],
                figures: Mapping[str, Callable[[Mapping, str], None]], *, disk_full: str, refused: str) -> list[str]:
  """Writes report.json, report.md (`markdown(report)`), then each figure (file name -> draw(report, path)).

  Returns the paths written, in that order. `disk_full` is the message of a full disk; any other failure
  reads "`refused`: the reason".
  """
  try:
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, name) for name in ("report.json", "report.md", *figures)]
    files.write_json(paths[0], report)
    with files.replacing(paths[1]) as f:
      f.write(markdown(report))
    for path, draw in zip(paths[2:], figures.values()):
      draw(report, path)
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise DiskFullError(disk_full) from e
    raise UserError(f"{refused}: {e.strerror or e}") from e
  return paths
