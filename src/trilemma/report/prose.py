"""The report's prose: text files under templates/, filled in with string.Template ($name)."""

from __future__ import annotations

import functools
from pathlib import Path
from string import Template

FOLDER = Path(__file__).parent / "templates"


@functools.cache
def _template(name: str) -> Template:
    # the file's last newline is the editor's, not the text's: a template that must end with a
    # newline ends with an empty line
    return Template((FOLDER / f"{name}.md").read_text(encoding="utf-8").removesuffix("\n"))


def render(name: str, **values) -> str:
    """templates/<name>.md with every $placeholder filled in (a missing value is an error)."""
    return _template(name).substitute(values)
