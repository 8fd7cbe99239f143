"""The CLI's one presenter: aligned tables and progress lines, for people and scripts.

Every table the CLI prints (``analytics result``, ``mesh status``, ``testnet
status``, ...) and every progress line on stderr (``analytics submit/status
--follow``, ``testnet up``) goes through here, laid out by rich. On a terminal
the header is bold and a few marks are coloured; when the output is piped (a
script, a file, every test) it is plain aligned text: columns separated by
spaces, one row per line, no colour, no box drawing, no ANSI, and never wrapped
to a guessed width. ``--json`` does not come here: it stays the machine format.

rich is imported inside the functions that print, so commands that print no
table (``metanode keys show``) do not pay for importing it.

Result cells arrive as JSON values from ``analytics_result`` (node/roles/artifacts.py:
numbers, exact decimal strings, ISO dates, NULL as None).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

NUMERIC = ("INT", "DECIMAL", "DOUBLE", "FLOAT", "REAL", "NUMERIC", "HUGEINT", "BIGINT", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER")
# Styles of the yes/NO cells of node tables (mesh status, testnet status), on a terminal only.
LIVE_MARKS = {"yes": "green", "NO": "bold red"}
# Wide enough that rich never folds a row: a table is as wide as its widest cells.
_UNBOUNDED_WIDTH = 1 << 20


@dataclass(frozen=True)
class Column:
    """One column of a table: its header, and whether its cells are right-aligned (numbers)."""

    name: str
    right: bool = False


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (styled output) rather than a pipe or file (plain output).

    Decided from the stream alone, so FORCE_COLOR and the like in a script's
    environment never put escape codes into output another program parses."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


# Characters that would break a row over several lines, move the cursor or
# colour the terminal: C0 and C1 controls, DEL, and Unicode's line and paragraph
# separators. Shown escaped (\n as backslash-n) so that one row is one line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_cell(text: str) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``).

    A cell is data from somewhere else (a dataset, a node's error message): a
    newline in it must not start a new row, and an ESC must not restyle the
    terminal. Everything printable, wide characters and emoji included, is
    kept as it is."""
    def escaped(match: re.Match[str]) -> str:
        char = match.group()
        if char in _NAMED_ESCAPES:
            return _NAMED_ESCAPES[char]
        return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"

    return _CONTROL.sub(escaped, text)


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, header: bool = True, rule: bool = False,
                 styled: bool = False, marks: Mapping[str, str] | None = None) -> str:
    """The rows laid out under ``columns`` as text, without a trailing newline.

    Columns are separated by two spaces and sized to their widest cell,
    counted in terminal cells (rich's cell widths: an East Asian wide
    character or an emoji, with its variation selector or skin tone, takes
    two), so wide characters stay aligned; lines carry no trailing spaces.
    Control characters in cells are escaped (:func:`escape_cell`): a row is
    always one line. ``rule`` puts a line of dashes under the header;
    ``header=False`` leaves the header out. With ``styled`` (a terminal) the
    header is bold and a cell whose whole text is a key of ``marks`` gets
    that rich style; otherwise the text is plain."""
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    columns = [Column(escape_cell(c.name), c.right) for c in columns]
    rows = [[escape_cell(str(cell)) for cell in row] for row in rows]
    widths = [max([cell_len(c.name) if header else 0] + [cell_len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    table = Table(box=None, show_header=header, show_edge=False, pad_edge=False, padding=(0, 1), expand=False,
                  header_style="bold" if styled else "", highlight=False)
    for column in columns:
        # Text, never markup: a cell reading "[b]" or ":smile:" is shown as it is.
        table.add_column(Text(column.name), justify="right" if column.right else "left", no_wrap=True)
    if rule:
        table.add_row(*(Text("-" * w) for w in widths))
    for row in rows:
        table.add_row(*(Text(cell, style=(marks or {}).get(cell, "") if styled else "") for cell in row))
    buffer = io.StringIO()
    console = Console(file=buffer, width=_UNBOUNDED_WIDTH, force_terminal=styled, color_system="auto" if styled else None,
                      no_color=not styled or None, highlight=False, markup=False, emoji=False, soft_wrap=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").split("\n"))


def echo_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, header: bool = True,
               marks: Mapping[str, str] | None = None) -> None:
    """Print a table on stdout: styled on a terminal, plain when piped (see :func:`render_table`)."""
    import click

    click.echo(render_table(columns, rows, header=header, styled=is_terminal(sys.stdout), marks=marks))


def progress(enabled: bool = True) -> Callable[[str], None]:
    """A function that writes one progress line to stderr (stdout stays the answer).

    Disabled (``--quiet``, ``--json``) it does nothing. On a terminal the line
    is dimmed, so the answer on stdout stands out; piped, it is the plain line."""
    if not enabled:
        return lambda text: None
    if not is_terminal(sys.stderr):
        import click

        return lambda text: click.echo(text, err=True)
    console: list[Any] = []

    def say(text: str) -> None:
        from rich.console import Console
        from rich.text import Text

        if not console:
            console.append(Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True))
        console[0].print(Text(text, style="dim"))

    return say


def _text(cell: Any) -> str:
    if cell is None:
        return "NULL"
    if isinstance(cell, bool):
        return "true" if cell else "false"
    if isinstance(cell, float):
        return repr(cell)  # the shortest text that reads back as the same double: never rounded away
    return str(cell)


def format_table(columns: Sequence[Sequence[str]], rows: Sequence[Sequence[Any]], *, max_rows: int | None = None) -> str:
    """A result as an aligned text table (numbers right-aligned) under a rule of
    dashes, with its row count; with ``max_rows``, the first rows and a line
    saying how many were left out. Always plain: it is also written to files."""
    shown = list(rows if max_rows is None else rows[:max_rows])
    layout = [Column(str(c[0]), right=any(str(c[1]).upper().startswith(n) for n in NUMERIC)) for c in columns]
    out = [render_table(layout, [[_text(v) for v in row] for row in shown], rule=True)]
    if len(shown) < len(rows):
        out.append(f"... {len(rows) - len(shown)} more rows (use --format csv or json for all)")
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def format_csv(columns: Sequence[Sequence[str]], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c[0] for c in columns])
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def format_result(result: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result, indent=2, sort_keys=True)
    if fmt == "csv":
        return format_csv(result["columns"], result["rows"]).rstrip("\n")
    return format_table(result["columns"], result["rows"])
