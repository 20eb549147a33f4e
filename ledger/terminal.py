"""Printing to a terminal: every value is text, never markup, with control characters visible.

Event types, ids, headers, bodies, rejection reasons and projection errors come
from the wire or the database. Printed as rich markup, `[/]` crashes a command and
`[link=...]` plants a hyperlink; printed raw, an ESC sequence recolours or rewrites
the terminal. So the consoles here parse no markup and no emoji, and every string
they render passes through `visible()`; our own emphasis is given as `style=`.
"""

from __future__ import annotations

import os
import re
import sys

from rich.console import Console
from rich.text import Text

# C0 controls, DEL, C1 controls, and the invisible bidi overrides and isolates that
# reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(value: object, keep: str = "") -> str:
    """`value` as a string whose control characters are shown as escapes (ESC as \\x1b).

    `keep` names the layout characters to leave alone (a body keeps "\\n\\t")."""
    text = "" if value is None else str(value)
    if not keep:
        return _CONTROL.sub(_escape, text)
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)


def text(value: object, style: str = "") -> Text:
    """A one-line rich `Text` of `value`, control characters escaped (for table cells)."""
    return Text(visible(value), style=style)


class TextConsole(Console):
    """A rich Console that prints strings as text: no markup, no emoji, controls escaped."""

    def __init__(self, **kwargs) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        kwargs["markup"] = kwargs["emoji"] = False
        return super().render_str(visible(text, keep="\n\t"), **kwargs)


# Piped output is not cut to 80 columns: tables stay whole for grep and files.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 1000
err = TextConsole(stderr=True, soft_wrap=True)
out = TextConsole(width=_WIDTH)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun agreeing with it: "1 event", "2 events", "1 body", "3 bodies"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
