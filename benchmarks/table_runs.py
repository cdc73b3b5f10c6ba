"""What the benchmark tables built from short training runs share (methods_table.py,
imbalanced_table.py, diagnostics_table.py): a preset cut to a few steps, and rows saved one JSON
per run, assembled into a Markdown + JSON table."""

import glob
import json
import os


def shortened(config, *, steps: int, data_dir: str, eval_train: int, eval_test: int):
  """`config` (unlocked here) cut to `steps` optimizer steps: its cosine schedules end there, its
  warm-up is at most a fifth of the run, one checkpoint at the end, no progress bar; its
  evaluation on the first `eval_train` training / `eval_test` test images."""
  with config.unlocked():
    config.total_steps = steps
    config.checkpoint_every = steps
    config.log_every = min(config.log_every, steps)
    config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 5)
    config.progress_bar = False
    config.data.data_dir = data_dir
    config.eval.train_examples = eval_train
    config.eval.test_examples = eval_test
  return config


def write_row(rows_dir: str, name: str, row: dict) -> None:
  os.makedirs(rows_dir, exist_ok=True)
  with open(os.path.join(rows_dir, name + ".json"), "w") as f:
    json.dump(row, f, indent=2)


def read_rows(rows_dir: str) -> list[dict]:
  """Every row saved in `rows_dir`, in file-name order."""
  rows = []
  for path in sorted(glob.glob(os.path.join(rows_dir, "*.json"))):
    with open(path) as f:
      rows.append(json.load(f))
  return rows


def write_table(results_dir: str, name: str, markdown: str, data: dict) -> None:
  """`results_dir/name.md` and `.json`, and the table printed."""
  with open(os.path.join(results_dir, name + ".md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(results_dir, name + ".json"), "w") as f:
    json.dump(data, f, indent=2)
  print(markdown)
