"""MkDocs hooks: the pages' generated parts, from the files that own them.

Nothing measured is typed into a page. A page names what it shows with an HTML comment, which
this hook replaces while the site is built (and which stays invisible if it ever is not):

- ``<!-- sslx:include benchmarks/results/X.md -->``: a table a benchmark wrote, as it wrote it.
- ``<!-- sslx:table NAME -->``: a table drawn from a benchmark's JSON (``TABLES`` below), for
  the benchmarks that write JSON only.
- ``<!-- sslx:method NAME -->``: one method's section, from ``configs/NAME.py``'s docstring (paper,
  launch commands, variants, the published result it should reach, deviations),
  ``experiments/NAME.py``'s docstring, the equation of each loss it imports (the first literal
  block of the loss's docstring) and its measured rows (``benchmarks/results/*.json``).

Math written ``$...$`` (inline) or ``$$...$$`` (display) outside code becomes MathML while the
site is built (latex2mathml), which browsers render without JavaScript or a network.
``benchmarks/results/pictures/`` is published as ``results/pictures/``.
"""

import ast
import glob
import json
import os
import re
import sys
import textwrap

import latex2mathml.converter
from mkdocs.structure.files import File

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import griffe_sslx  # the docstrings' reST habits, rewritten as the API pages do

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
PICTURES = os.path.join(RESULTS, "pictures")
# A directive is a line of its own (so a page can quote one in code without expanding it).
DIRECTIVE = re.compile(r"^<!-- sslx:(include|method|table) ([\w./-]+) -->$", re.MULTILINE)
# Fenced code blocks and inline code spans, which math conversion must leave alone.
CODE = re.compile(r"(^[ \t]*```.*?^[ \t]*```[ \t]*$|`[^`\n]+`)", re.MULTILINE | re.DOTALL)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])")


class DocsError(ValueError):
  """A directive that names something that does not exist."""


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _load_json(name: str):
  return json.loads(_read(os.path.join(RESULTS, name)))


def include(relative_path: str) -> str:
  path = os.path.join(REPO, relative_path)
  if not os.path.isfile(path):
    raise DocsError(f"sslx:include names {relative_path!r}, which is not a file of the checkout")
  # The page has its own title: the file's headings go one level down.
  text = re.sub(r"^(#{1,5}) ", r"#\1 ", _read(path).strip(), flags=re.MULTILINE)
  return text + "\n\n*Generated file: `" + relative_path + "`.*\n"


def module_docstring(path: str) -> str:
  return ast.get_docstring(ast.parse(_read(path))) or ""


def experiment_modules(name: str) -> list[str]:
  """The experiment modules of the method `configs/NAME.py` launches: ``experiments/NAME.py``, or
  its stages ``experiments/NAME_*.py`` (SimCLRv2's fine-tuning and distillation)."""
  if os.path.isfile(os.path.join(REPO, "experiments", name + ".py")):
    return [name]
  return sorted(os.path.basename(p)[:-3]
                for p in glob.glob(os.path.join(REPO, "experiments", name + "_*.py")))


# Functions of sslx.losses that serve a loss rather than being one (queue and centre updates,
# initial states, neighbour mining, targets): a method page shows the loss they serve.
HELPER = re.compile(r"update|_init$|^normalize_|^patchify$|^nearest_neighbor$|_mining$|_weight$"
                    r"|_targets$|_thresholds$|_positives$")


def loss_names(experiment: str) -> list[str]:
  """The public losses an experiment module (or the private family module it builds on) uses."""
  names = []
  sources = [os.path.join(REPO, "experiments", experiment + ".py")]
  for match in re.finditer(r"from experiments import ([\w, ]+)", _read(sources[0])):
    sources += [os.path.join(REPO, "experiments", m.strip() + ".py")
                for m in match.group(1).split(",") if m.strip().startswith("_")]
  for source in sources:
    tree = ast.parse(_read(source))
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "sslx.losses":
        names += [a.name for a in node.names]
  import sslx.losses
  public = [n for n in dict.fromkeys(names) if callable(getattr(sslx.losses, n, None))]
  return [n for n in public if not HELPER.search(n)]


def equation(loss: str) -> str:
  """The ``::`` literal blocks of a loss's docstring before its ``Args:``: its equations as the
  docstring gives them."""
  import inspect

  import sslx.losses
  doc = (inspect.getdoc(getattr(sslx.losses, loss)) or "").split("\nArgs:")[0]
  lines = doc.splitlines()
  blocks = []
  for i, line in enumerate(lines):
    if line.rstrip().endswith("::"):
      indent = len(line) - len(line.lstrip())
      block = []
      for body in lines[i + 1:]:
        if body.strip() and len(body) - len(body.lstrip()) <= indent:
          break
        block.append(body)
      text = textwrap.dedent("\n".join(block)).strip("\n")
      if text:
        blocks.append(text)
  return "\n\n".join(blocks)


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _labels_order(labels: str):
  return (1, 0) if not labels.isdigit() else (0, int(labels))


def measured_rows(name: str) -> str:
  """The method's rows in the generated tables, with a link to each whole table."""
  parts = []
  table = _load_json("methods_table.json")
  rows = [r for r in table["rows"] if r["method"] == name]
  if rows:
    shared_random = table["baselines"]["random encoder"]
    lines = [("| steps x batch | encoder | kNN top-1 (%) | linear top-1 (%) | "
              "its random init: kNN / linear (%) | final loss |"), "|:--|:--|--:|--:|--:|--:|"]
    for r in rows:
      random = r.get("random_init") or shared_random
      lines.append(f"| {r['steps']} x {r['batch_size']} | {r.get('encoder', 'shared ResNet')} | "
                   f"{_pct(r['knn_top1'])} | {_pct(r['linear_top1'])} | "
                   f"{_pct(random['knn_top1'])} / {_pct(random['linear_top1'])} | "
                   f"{r['final_loss']:.3f} |")
    raw = table["baselines"]["raw pixels"]
    parts.append("Fashion-MNIST, [methods table](../results/methods.md) (raw pixels: "
                 f"{_pct(raw['knn_top1'])} / {_pct(raw['linear_top1'])}):\n\n" + "\n".join(lines))
  errors = _load_json("semisup_table.json")["errors_percent"]
  stages = (name, *experiment_modules(name))
  cells = {k: v for k, v in errors.items() if k.split("/")[1] in stages}
  if cells:
    lines = ["| dataset | method | labels / class | test error (%) | seeds |",
             "|:--|:--|--:|--:|--:|"]
    for key, values in sorted(cells.items(), key=lambda kv: (
        kv[0].split("/")[0], kv[0].split("/")[1], _labels_order(kv[0].split("/")[2]))):
      dataset, method, labels = key.split("/")
      mean = sum(values) / len(values)
      lines.append(f"| {dataset} | {method} | {labels} | {mean:.2f} | {len(values)} |")
    parts.append("[Semi-supervised table](../results/semi-supervised.md):\n\n" + "\n".join(lines))
  return "\n\n".join(parts)


def method_title(name: str, config_doc: str) -> str:
  """The name before the first parenthesis of the config's first line ("BYOL (Grill et al.
  2020): ..." -> "BYOL"), or the method's module name."""
  match = re.match(r"([^(:\n]{1,40}?) \(", config_doc)
  return match.group(1) if match else f"`{name}`"


def method_section(name: str) -> str:
  config_path = os.path.join(REPO, "configs", name + ".py")
  modules = experiment_modules(name)
  if not os.path.isfile(config_path) or not modules:
    raise DocsError(f"sslx:method {name!r}: needs configs/{name}.py and experiments/{name}.py "
                    f"(or experiments/{name}_*.py for a method in stages)")
  config_doc = module_docstring(config_path)
  out = [f"## {method_title(name, config_doc)} {{#{name}}}", ""]
  for module in modules:  # what each module does, its docstring read as the API pages read it
    doc = module_docstring(os.path.join(REPO, "experiments", module + ".py"))
    if len(modules) > 1:
      out.append(f"`experiments/{module}.py`: ")
    out += [griffe_sslx.rewrite(doc), ""]
  for loss in dict.fromkeys(n for module in modules for n in loss_names(module)):
    out.append(f"**Loss** [`sslx.losses.{loss}`](../api/losses.md#sslx.losses.{loss})")
    eq = equation(loss)
    out += (["", "```text", eq, "```", ""] if eq else [""])
  rows = measured_rows(name)
  if rows:
    out += ["**Measured**. " + rows, ""]
  out += [(f'??? note "`configs/{name}.py`: paper, launch, variants, expected results, '
           f'deviations"'), "", "    ```text"]
  out += ["    " + line if line else "" for line in config_doc.strip("\n").splitlines()]
  out += ["    ```", ""]
  return "\n".join(out) + "\n"


def _mib(n) -> str:
  return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def _num(x, spec: str, unit: str = "") -> str:
  """`x` formatted, or "-" where it was not measured."""
  return "-" if x is None else format(x, spec) + unit


def _gib(n) -> str:
  return f"{n / 2**30:.1f}"


def _source(*names: str) -> str:
  return "\n\n*From " + ", ".join(f"`benchmarks/results/{n}`" for n in names) + ".*\n"


def compile_check_table() -> str:
  d = _load_json("compile_check.json")
  lines = [("| preset | slice | batch / chip | dtype | remat | scan | state (GiB) | temp (GiB) | "
            "peak (GiB, of HBM) | fits | TFLOP / step | est. step (ms) | MFU (est.) | "
            "compile CPU s |"), "|:--|:--|--:|:--|:--|:--|--:|--:|--:|:--|--:|--:|--:|--:|"]
  for r in d["rows"]:
    state = sum(r["state_bytes_per_chip"].values())
    step = r.get("estimated_step_s")
    lines.append(
        f"| {r['preset']} | {r['topology']} | {r['batch_per_chip']:.0f} | {r['dtype']} | "
        f"{r['remat']} | {'yes' if r['scan'] else 'no'} | {_gib(state)} | "
        f"{_gib(r['temp_bytes'])} | "
        f"{_gib(r['peak_estimate_bytes'])} of {r['hbm_bytes'] / 2**30:.0f} | "
        f"{'yes' if r['fits'] else '**no**'} | {r['flops_per_step'] / 1e12:.0f} | "
        f"{_num(step and 1000 * step, '.0f')} | "
        f"{_num(r.get('mfu'), '.2f')} | "
        f"{r['lower_and_compile_cpu_s']:.0f} |")
  for f in d.get("failures", []):
    lines.append(f"\nNot compiled: {f['preset']} on {f['topology']} ({f['error']}).")
  return "\n".join(lines) + _source("compile_check.json")


def sharding_table() -> str:
  d = _load_json("sharding.json")
  out = []
  for method in dict.fromkeys(r["method"] for r in d["rows"]):
    lines = [f"**{method}**", "", ("| `mesh.rules`, mesh | state per device (MiB) | "
                                   "of replicated | XLA step peak estimate (MiB) |"),
             "|:--|--:|--:|--:|"]
    for r in d["rows"]:
      if r["method"] != method:
        continue
      mesh = " x ".join(str(v) for v in r["mesh"].values())
      peak = r["xla"]["peak_estimate_bytes"] if r.get("xla") else None
      lines.append(f"| {r['rules']}, {mesh} | {r['total']['device0_bytes'] / 2**20:.0f} | "
                   f"{r['ratio_state']:.3f} | "
                   f"{_num(peak and peak / 2**20, '.0f')} |")
    out.append("\n".join(lines))
  return (f"{d['model']} at {d['image_size']} px, global batch {d['batch_size']}, "
          f"{d['devices']}.\n\n" + "\n\n".join(out) + _source("sharding.json"))


def nt_xent_memory_table() -> str:
  d = _load_json("nt_xent_memory.json")
  by_batch = {}
  for r in d["rows"]:
    by_batch.setdefault(r["batch"], {})[r["loss"]] = r["temp_bytes"]
  lines = ["| global batch | `nt_xent` | `nt_xent_blockwise` |", "|--:|--:|--:|"]
  for batch, temps in sorted(by_batch.items()):
    cells = [_mib(temps[k]) if k in temps else "-" for k in ("nt_xent", "nt_xent_blockwise")]
    lines.append(f"| {batch:,} | " + " | ".join(cells) + " |")
  return (f"Embedding dimension {d['dim']}, {d['device']}, jax {d['jax']}; {d['memory']}.\n\n"
          + "\n".join(lines) + _source("nt_xent_memory.json"))


GRAD_CACHE_RUNS = ("grad_cache_memory_cpu_imagenet_vit_s16.json",
                   "grad_cache_memory_cpu_fashion_mnist.json")


def grad_cache_memory_table() -> str:
  runs = [_load_json(name) for name in GRAD_CACHE_RUNS]
  chunks = sorted({r["chunks"] for run in runs for r in run["rows"]})
  lines = ["| model (one device) | " + " | ".join(f"chunks {c}" for c in chunks) + " |",
           "|:--|" + "--:|" * len(chunks)]
  for run in runs:
    temp = {r["chunks"]: r["temp_bytes"] for r in run["rows"]}
    batch = run["rows"][0]["batch_size"]
    lines.append(f"| {run['model']}, batch {batch} | "
                 + " | ".join(_mib(temp[c]) if c in temp else "-" for c in chunks) + " |")
  return ("XLA temporaries of the compiled train step.\n\n" + "\n".join(lines)
          + _source(*GRAD_CACHE_RUNS))


def lightly_losses_table() -> str:
  d = _load_json("losses.json")
  lines = ["| loss | batch x dim | sslx | temp | lightly | lightly / sslx |",
           "|:--|--:|--:|--:|--:|--:|"]
  for name, r in d["losses"].items():
    lightly = r.get("lightly")
    lines.append(f"| `{name}` | {r['batch']} x {r['dim']} | {1000 * r['sslx']['seconds']:.0f} ms | "
                 f"{_mib(r['sslx']['temp_bytes'])} | "
                 f"{_num(lightly and 1000 * lightly['seconds'], '.0f', ' ms')} | "
                 f"{_num(r.get('lightly_over_sslx'), '.2g')} |")
  return (f"{d['device']} ({d['cpu_count']} cores), jax {d['jax']}, {d['lightly_version']}.\n\n"
          + "\n".join(lines) + _source("losses.json"))


EQUIVARIANCE_RUNS = ("equivariance.json", "equivariance_seq_jepa.json")


def equivariance_table() -> str:
  lines = [("| representation | rotation R^2 (ridge) | rotation R^2 (MLP) | colour R^2 (ridge) | "
            "colour R^2 (MLP) |"), "|:--|--:|--:|--:|--:|"]
  seen = set()
  for name in EQUIVARIANCE_RUNS:
    for rep, r in _load_json(name)["results"].items():
      if rep in seen:  # the random encoder, measured again by each run
        continue
      seen.add(rep)
      lines.append(f"| {rep} | {r['linear']['rotation']:.3f} | {r['mlp']['rotation']:.3f} | "
                   f"{r['linear']['color']:.3f} | {r['mlp']['color']:.3f} |")
  protocol = _load_json(EQUIVARIANCE_RUNS[0])["protocol"]
  return (f"{protocol['train_images']} training and {protocol['test_images']} test pairs, "
          f"rotations of +-{protocol['degrees']:g} degrees; {protocol['regressors']}.\n\n"
          + "\n".join(lines) + _source(*EQUIVARIANCE_RUNS))


THROUGHPUT_RUNS = ("throughput_simclr_fashion_mnist.json", "throughput_mae_vit_fashion_mnist.json")


def throughput_cpu_table() -> str:
  lines = [("| config | dtype | remat | CPU s / step (median of rounds) | XLA GFLOP / step | "
            "XLA temporaries (MiB) |"), "|:--|:--|:--|--:|--:|--:|"]
  for name in THROUGHPUT_RUNS:
    d = _load_json(name)
    for r in d["runs"]:
      cpu = sorted(r["round_cpu_s"])[len(r["round_cpu_s"]) // 2] / r["timed_steps"]
      lines.append(f"| {d['config']} ({r['model']}, batch {r['batch_size']}) | {r['dtype']} | "
                   f"{r['remat']} | {cpu:.2f} | {r['compiled_flops_per_device'] / 1e9:.1f} | "
                   f"{r['memory']['temp_bytes'] / 2**20:.0f} |")
  return "\n".join(lines) + _source(*THROUGHPUT_RUNS)


def ema_scaling_rule_table() -> str:
  d = _load_json("ema_scaling_rule.json")
  epochs = range(1, len(d["teacher_moved_B"]))
  rows = [("how far the batch-B teacher moved", d["teacher_moved_B"]),
          ("batch kappa x B, with the rule", d["teacher_distance_kappa_B_rule"]),
          ("batch kappa x B, without the rule", d["teacher_distance_kappa_B_no_rule"])]
  s = d["settings"]
  lines = ["| | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
           "|---|" + "---|" * len(epochs)]
  for label, values in rows:
    lines.append(f"| {label} | " + " | ".join(f"{values[e]:.3f}" for e in epochs) + " |")
  return (f"B = {s['batch']}, kappa = {s['kappa']}, {s['images']} images, momentum "
          f"{s['momentum']} at batch B.\n\n" + "\n".join(lines) + _source("ema_scaling_rule.json"))


def input_pipeline_table() -> str:
  d = _load_json("input_pipeline.json")
  cells = {}
  for r in d["jpeg"]["per_core"]:
    cells.setdefault((r["decoder"], r["resizer"]), {})[r["recipe"]] = r["images_per_cpu_s"]
  recipes = list(dict.fromkeys(r["recipe"] for r in d["jpeg"]["per_core"]))
  lines = ["| decoder + resizer | " + " | ".join(recipes) + " |",
           "|:--|" + "--:|" * len(recipes)]
  for (decoder, resizer), by_recipe in cells.items():
    lines.append(f"| {decoder} + {resizer} | "
                 + " | ".join(f"{by_recipe[k]:.0f}" if k in by_recipe else "-" for k in recipes)
                 + " |")
  jpeg = d["jpeg"]
  return (f"Source images per CPU-second of the process; {jpeg['images']} JPEGs, short side "
          f"median {jpeg['short_side']['median']:.0f} px; {d['note']}.\n\n" + "\n".join(lines)
          + _source("input_pipeline.json"))


TABLES = {
    "compile_check": compile_check_table,
    "sharding": sharding_table,
    "nt_xent_memory": nt_xent_memory_table,
    "grad_cache_memory": grad_cache_memory_table,
    "lightly_losses": lightly_losses_table,
    "equivariance": equivariance_table,
    "throughput_cpu": throughput_cpu_table,
    "ema_scaling_rule": ema_scaling_rule_table,
    "input_pipeline": input_pipeline_table,
}


def table(name: str) -> str:
  if name not in TABLES:
    raise DocsError(f"sslx:table {name!r} is unknown; known: {sorted(TABLES)}")
  return TABLES[name]()


def _math_to_mathml(text: str) -> str:
  def display(m):
    return ('\n<div class="sslx-math">'
            + latex2mathml.converter.convert(m.group(1).strip(), display="block") + "</div>\n")

  def inline(m):
    # In a span: a line that starts with <math> would otherwise open a raw HTML block.
    return f'<span class="sslx-math-inline">{latex2mathml.converter.convert(m.group(1))}</span>'


  out = []
  position = 0
  for code in CODE.finditer(text):
    prose = text[position:code.start()]
    out.append(INLINE_MATH.sub(inline, DISPLAY_MATH.sub(display, prose)))
    out.append(code.group(0))
    position = code.end()
  out.append(INLINE_MATH.sub(inline, DISPLAY_MATH.sub(display, text[position:])))
  return "".join(out)


def on_page_markdown(markdown, page, config, files):
  for line in markdown.splitlines():
    if line.startswith("<!-- sslx:") and not DIRECTIVE.fullmatch(line):
      raise DocsError(f"{page.file.src_uri}: {line!r} is not a directive (<!-- sslx:include "
                      "PATH -->, <!-- sslx:method NAME --> or <!-- sslx:table NAME -->)")

  def expand(m):
    kind, arg = m.groups()
    return {"include": include, "method": method_section, "table": table}[kind](arg)
  markdown = DIRECTIVE.sub(expand, markdown)
  return _math_to_mathml(markdown)


def on_files(files, config):
  for name in sorted(os.listdir(PICTURES)):
    files.append(File.generated(config, f"results/pictures/{name}",
                                abs_src_path=os.path.join(PICTURES, name)))
  return files
