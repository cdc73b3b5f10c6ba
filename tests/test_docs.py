"""The documentation site builds (`mkdocs build --strict`: a broken link, a missing page, an
unknown directive or a docstring that no longer renders fails), shows what the benchmarks
measured, lists every method, and its worked example runs."""

import glob
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  out = tmp_path_factory.mktemp("site")
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  return out


def _page(site, path: str) -> str:
  with open(os.path.join(site, path, "index.html"), encoding="utf-8") as f:
    return f.read()


def _methods() -> list[str]:
  """Every method the configs launch (configs/NAME.py with a get_config, not a shared module)."""
  def launches(path):
    with open(path) as f:
      return "def get_config" in f.read()
  return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                if not os.path.basename(p).startswith("_") and launches(p))


def test_site_shows_the_benchmarks_json_and_every_method(site):
  """One test over the built site (so that pytest-xdist builds it once): the results pages show
  what the benchmarks' JSON holds, and every method has one section, on one page, with its
  equations and measured rows."""
  with open(os.path.join(REPO, "benchmarks", "results", "methods_table.json")) as f:
    rows = json.load(f)["rows"]
  page = _page(site, "results/methods")
  for row in rows:
    assert re.search(rf"<td[^>]*>{re.escape(row['method'])}[^<]*</td>\s*<td[^>]*>[^<]*</td>\s*"
                     rf"<td[^>]*>{100 * row['knn_top1']:.1f}</td>", page), row["method"]
  with open(os.path.join(REPO, "benchmarks", "results", "nt_xent_memory.json")) as f:
    batches = {r["batch"] for r in json.load(f)["rows"]}
  memory = _page(site, "results/memory")
  for batch in batches:
    assert re.search(f"<td[^>]*>{batch:,}</td>", memory), batch

  methods = _methods()
  assert len(methods) > 30 and "simclrv2" in methods and "common" not in methods
  listed, pages = [], {}
  for path in glob.glob(os.path.join(DOCS, "methods", "*.md")):
    with open(path) as f:
      names = re.findall(r"^<!-- sslx:method (\w+) -->$", f.read(), flags=re.MULTILINE)
    listed += names
    pages.update(dict.fromkeys(names, "methods/" + os.path.basename(path)[:-3]))
  assert sorted(listed) == methods  # each once, none missing, none unknown
  measured = {r["method"] for r in rows}
  for name, path in pages.items():
    html = _page(site, path)
    section = html[html.index(f'id="{name}"'):]
    section = section[:section.find('<h2 ', 1) if '<h2 ' in section[1:] else len(section)]
    assert f"configs/{name}.py" in section, name  # the config's docstring
    if name in measured:
      assert "Measured" in section, name
  byol = _page(site, "methods/self-distillation")
  section = byol[byol.index('id="byol"'):byol.index('id="simsiam"')]
  assert "sslx.losses.negative_cosine" in section and "2 - 2 c_i" in section  # its equation
  # The page's LaTeX became MathML: no "$" of the source is left in its prose.
  assert "<math" in byol and "\\mathcal" not in byol


def test_readme_links_resolve():
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
  assert links
  for link in links:
    assert os.path.isfile(os.path.join(REPO, link)), link


def _guide_files() -> dict:
  with open(os.path.join(DOCS, "guides", "new-method.md")) as f:
    text = f.read()
  return dict(re.findall(r'```python title="([\w/.]+)"\n(.*?)\n```', text, flags=re.DOTALL))


def test_new_method_guide_runs(tmp_path, monkeypatch):
  """The guide's two files, as printed, make a method that the trainer's builder accepts and
  whose loss and gradient are finite; its loss matches the paper's equation in float64."""
  files = _guide_files()
  assert sorted(files) == ["configs/spectral.py", "experiments/spectral.py"]
  for name, code in files.items():
    (tmp_path / os.path.dirname(name)).mkdir(exist_ok=True)
    (tmp_path / name).write_text(code)
  import configs
  import experiments
  # The guide's files first, so that a contributor's own spectral.py cannot stand in for them.
  monkeypatch.setattr(experiments, "__path__",
                      [str(tmp_path / "experiments"), *experiments.__path__])
  monkeypatch.setattr(configs, "__path__", [str(tmp_path / "configs"), *configs.__path__])
  names = ("configs.spectral", "experiments.spectral")
  try:
    from configs import spectral as spectral_config
    from experiments import spectral
    _check_spectral(spectral, spectral_config)
  finally:  # the guide's modules must not outlive the test
    for name in names:
      sys.modules.pop(name, None)
    for package in (configs, experiments):
      package.__dict__.pop("spectral", None)


def _check_spectral(spectral, spectral_config):
  from sslx.train import loop

  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 5))
  inner = z1 @ z2.T
  reference = (-2 * np.mean(np.sum(z1 * z2, axis=1))
               + (np.sum(inner**2) - np.sum(np.diag(inner) ** 2)) / (6 * 5))
  np.testing.assert_allclose(spectral.spectral_contrastive(jnp.asarray(z1), jnp.asarray(z2)),
                             reference, rtol=1e-5)

  config = spectral_config.get_config("smoke")
  method = loop.build_method(config)
  images = jnp.asarray(rng.integers(0, 256, size=(8, 28, 28, 1)), jnp.uint8)
  batch = {"image": images, "label": jnp.zeros(8, jnp.int32)}
  variables = jax.jit(method.init)(jax.random.key(0), batch)
  params = variables["params"]
  (value, _), grad = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, variables, batch, jax.random.key(1))
  assert np.isfinite(float(value))
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grad)]
  assert all(np.isfinite(norms)) and max(norms) > 0
