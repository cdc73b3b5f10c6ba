"""Imports inside the package run one way: no module of sslx imports, even lazily inside a
function, a module that imports it back; sslx.train uses only the evaluation instruments that run
while it trains (monitor, online probe, plots) and never reaches the offline evaluation, the
evaluation CLI or the train-then-evaluate module (sslx.run), which import it."""

import ast
import pathlib

import sslx

PACKAGE = pathlib.Path(sslx.__file__).parent


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
  """module -> the sslx modules it imports anywhere in its source (top level or in a function);
  `from package import name` imports package.name when that is a module, else the package."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        imported.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                        else node.module for a in node.names)
    graph[name] = {m for m in imported if m in modules and m != name}
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_no_import_cycle_in_the_package():
  graph = _import_graph()
  assert {"sslx.run", "sslx.train.loop", "sslx.evaluate.offline"} <= set(graph)
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


# What the training loop may use of sslx.evaluate: the instruments that run while it trains.
TRAINING_INSTRUMENTS = {"sslx.evaluate.monitor", "sslx.evaluate.online_probe",
                        "sslx.evaluate.plots"}


def _reachable(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_training_never_imports_the_offline_evaluation():
  graph = _import_graph()
  for name, imported in graph.items():
    if name.startswith("sslx.train"):
      evaluation = {m for m in imported if m.startswith("sslx.evaluate")}
      assert evaluation <= TRAINING_INSTRUMENTS, (name, evaluation - TRAINING_INSTRUMENTS)
  offline_side = {"sslx.run", "sslx.main", "sslx.evaluate.offline", "sslx.evaluate.cli",
                  "sslx.evaluate.__main__"}
  assert not _reachable(graph, "sslx.train.loop") & offline_side
  assert {"sslx.train.loop", "sslx.evaluate.offline"} <= graph["sslx.run"]
  assert "sslx.run" in graph["sslx.main"]
