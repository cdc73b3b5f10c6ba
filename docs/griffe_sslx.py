"""A griffe extension (mkdocs.yml) that reads sslx's docstrings as their authors wrote them.

The docstrings are Google style with two reST habits, which Markdown would otherwise mangle:

- a paragraph ending in ``::`` introduces an indented literal block (an equation, a layout):
  the block becomes a fenced ``text`` block and the paragraph ends in one colon;
- doctests (``>>>`` lines and their output, up to a blank line), which Markdown would turn into
  nested quotes, become fenced ``pycon`` blocks;
- Sphinx roles (``:func:`name```) become code spans.
"""

import re

import griffe

LITERAL_INTRO = re.compile(r"::\s*$")
LIST_ITEM = re.compile(r"^\s*(\d+\.|[-*+])\s+")
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def fence_literal_blocks(text: str) -> str:
  lines = text.splitlines()
  out = []
  i = 0
  while i < len(lines):
    line = lines[i]
    if not LITERAL_INTRO.search(line):
      out.append(line)
      i += 1
      continue
    base = _indent(line)
    # A line of only "::" introduces the block without text of its own.
    intro = LITERAL_INTRO.sub(":", line) if line.strip() != "::" else ""
    j = i + 1
    while j < len(lines) and not lines[j].strip():
      j += 1
    block = []
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
      block.append(lines[j])
      j += 1
    while block and not block[-1].strip():
      block.pop()
    if not block:  # not a literal block after all
      out.append(line)
      i += 1
      continue
    inner = min(_indent(b) for b in block if b.strip())
    # Inside a list item the block belongs to the item: Python-Markdown wants it 4 columns in.
    pad = " " * (base + 4 if LIST_ITEM.match(line) else base)
    if intro:
      out.append(intro)
    out += ["", pad + "```text"] + [pad + b[inner:] if b.strip() else "" for b in block]
    out += [pad + "```", ""]
    i = j
  return "\n".join(out)


def fence_doctests(text: str) -> str:
  out = []
  in_doctest = False
  for line in text.splitlines():
    if not in_doctest and line.lstrip().startswith(">>>"):
      in_doctest = True
      pad = " " * _indent(line)
      out.append(pad + "```pycon")
    elif in_doctest and not line.strip():
      in_doctest = False
      out.append(pad + "```")
    out.append(line)
  if in_doctest:
    out.append(pad + "```")
  return "\n".join(out)


def rewrite(text: str) -> str:
  return fence_doctests(fence_literal_blocks(ROLE.sub(r"`\1`", text)))


class SslxDocstrings(griffe.Extension):

  def on_instance(self, *, obj, **kwargs) -> None:
    if obj.docstring is not None:
      obj.docstring.value = rewrite(obj.docstring.value)
