"""A griffe extension: the few reST habits of flux_async's docstrings, as Markdown.

The docstrings are written for ``help()`` and for reading in the source: plain
text with ``double backticks`` (already a Markdown code span), ``-`` lists, and
three reST habits that Markdown reads differently. This rewrites them for the
site only; the source stays as it is:

- a doctest block (lines starting ``>>>``) would be a nested blockquote: it
  becomes a fenced Python block;
- a paragraph ending in ``::`` introduces an indented literal block (already
  code in Markdown): the ``::`` becomes ``:``, and a bare ``::`` line goes;
- a role such as ``:class:`Faults``` becomes the code span ```Faults```.

And a code span that is a dotted name under ``flux_async`` (``flux_async.FluxClient.wait``)
links to that name's reference when the site has one (an optional cross-reference:
a private name stays plain code, never a broken link).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:mod|class|func|meth|attr|exc|data|obj):`([^`]+)`")
_NAME = re.compile(r"``(flux_async(?:\.[A-Za-z_][A-Za-z0-9_]*)+)``")


def markdown_of(text: str) -> str:
    """``text`` (a docstring, dedented) with its reST habits made Markdown."""
    text = _ROLE.sub(r"`\1`", text)
    text = _NAME.sub(r'<autoref identifier="\1" optional><code>\1</code></autoref>', text)
    lines = text.split("\n")
    out: list[str] = []
    in_doctest = False
    for line in lines:
        doctest_line = line.startswith((">>> ", "... ")) or line in (">>>", "...")
        if doctest_line and not in_doctest:
            if out and out[-1].strip():
                out.append("")
            out.append("```python")
            in_doctest = True
        elif in_doctest and not doctest_line:
            out.append("```")
            in_doctest = False
        if doctest_line:
            out.append(line[4:])
            continue
        if line.rstrip().endswith("::"):
            stripped = line.rstrip()
            line = "" if stripped == "::" else stripped[:-1]
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class RestDocstrings(griffe.Extension):
    """Rewrites each docstring once, when griffe has loaded its object."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
