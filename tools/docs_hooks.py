"""mkdocs hooks for the docs site (``hooks:`` in mkdocs.yml).

The docstrings are written for Sphinx and for ``help()`` alike, so they cross-reference with
Sphinx roles (``:class:`Job```, ``:meth:`~aimaster.x.Y.z```). mkdocstrings renders such a role as
its raw text followed by the name in code (``:class:<code>Job</code>``). This hook turns each into
the code span alone, shortened as Sphinx would for a leading ``~`` (the last component only).
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const|ref|term):<code>(~?)([^<]*)</code>")


def strip_roles(html: str) -> str:
    def code(m: re.Match) -> str:
        name = m.group(2)
        if m.group(1):
            name = name.rsplit(".", 1)[-1]
        return f"<code>{name}</code>"

    return _ROLE.sub(code, html)


def on_page_content(html, page, config, files):  # noqa: ARG001 - the mkdocs hook signature
    return strip_roles(html)
