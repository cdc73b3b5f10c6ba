"""Result tables: one row per representation, accuracies as percentages with one decimal."""

import math
from collections.abc import Mapping, Sequence

_HEADERS = {"knn_top1": "kNN top-1 (%)", "linear_top1": "linear top-1 (%)"}


def _is_accuracy(column: str) -> bool:
  return column.endswith(("_top1", "_top5")) or column.endswith("accuracy")


def _header(column: str) -> str:
  if column in _HEADERS:
    return _HEADERS[column]
  if _is_accuracy(column):
    return column.replace("_top1", " top-1").replace("_top5", " top-5").replace("_", " ") + " (%)"
  return column.replace("_", " ")


def _cell(column: str, value) -> str:
  if value is None or isinstance(value, bool):
    return "-" if value is None else str(value)
  if isinstance(value, (int, float)) or hasattr(value, "__float__"):
    v = float(value)
    if math.isnan(v):
      return "-"
    if _is_accuracy(column):
      return f"{100.0 * v:.1f}"
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
      return str(int(value))
    return f"{v:.1f}"
  return str(value)


def format_table(
    rows: Mapping[str, Mapping[str, float]],
    *,
    columns: Sequence[str] | None = None,
    name_header: str = "representation",
) -> str:
  """An aligned Markdown table with one row per entry of ``rows``.

  Columns are ``columns`` if given, else every key seen in ``rows``: the accuracy columns
  (``*_top1``, ``*_top5``, ``*accuracy``) first, kNN before linear, then the others in order of
  appearance. Accuracies (fractions in [0, 1]) print as percentages with one decimal, other floats
  with one decimal, ints as they are; a missing or NaN value prints as "-". Padded so the table
  also reads as plain text::

      | representation | kNN top-1 (%) | linear top-1 (%) |
      |:---------------|--------------:|-----------------:|
      | SimCLR encoder |          86.0 |             85.0 |
  """
  if columns is None:
    seen = list(dict.fromkeys(k for row in rows.values() for k in row))
    order = {"knn_top1": 0, "linear_top1": 1}
    acc = sorted((c for c in seen if _is_accuracy(c)), key=lambda c: order.get(c, 2))
    columns = acc + [c for c in seen if not _is_accuracy(c)]
  columns = list(columns)
  header = [name_header] + [_header(c) for c in columns]
  body = [[str(name)] + [_cell(c, row.get(c)) for c in columns] for name, row in rows.items()]
  widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
  widths = [max(w, 3) for w in widths]

  def line(cells):
    padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
    return "| " + " | ".join(padded) + " |"

  rule = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:])
  rule += "|" if len(widths) > 1 else ""
  return "\n".join([line(header), rule] + [line(r) for r in body])
