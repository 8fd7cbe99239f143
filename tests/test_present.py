"""node/cli/present.py: the one table and progress presenter of the CLI.

Piped output (every test, every script) is plain aligned text whatever the
environment says; a terminal gets styles; rich is loaded only by commands that
print a table or a progress line."""

from __future__ import annotations

import subprocess
import sys

from node.cli import mesh, testnet
from node.cli.present import LIVE_MARKS, Column, format_table, progress, render_table

PEER = "12D3KooW" + "a" * 44


def test_plain_table_is_aligned_text_without_escapes(monkeypatch):
    for name, value in (("FORCE_COLOR", "1"), ("TTY_COMPATIBLE", "1"), ("COLUMNS", "20")):
        monkeypatch.setenv(name, value)  # none of these may put escapes or wrapping into piped output
    columns = [Column("name"), Column("n", right=True), Column("note")]
    text = render_table(columns, [["apples", "7", "[b]x[/b] :smile:"], ["日本", "12345", ""]], marks=LIVE_MARKS)
    assert "\x1b" not in text and "─" not in text
    assert text.splitlines() == [
        "name        n  note",
        "apples      7  [b]x[/b] :smile:",
        "日本    12345",  # two terminal cells per character: still aligned
    ]
    assert render_table(columns, [["a", "1", "b"]], header=False) == "a  1  b"
    assert render_table(columns, [["a", "1", "b"]], rule=True).splitlines()[1] == "----  -  ----"


def test_styled_table_for_a_terminal():
    text = render_table([Column("live")], [["yes"], ["NO"]], styled=True, marks=LIVE_MARKS)
    assert "\x1b[1m" in text  # bold header
    assert "\x1b[" in text.splitlines()[2] and "NO" in text


def test_result_table_keeps_its_layout():
    text = format_table([["product", "VARCHAR"], ["units", "BIGINT"]], [["apples", 7], ["pears", None]], max_rows=1)
    assert text.splitlines() == [
        "product  units",
        "-------  -----",
        "apples       7",
        "... 1 more rows (use --format csv or json for all)",
        "(2 rows)",
    ]


def test_node_tables_keep_their_columns():
    nodes = [
        {"moniker": "node0", "entry": True, "live": True, "validator": True, "height": 12, "round": 0, "peers": 3, "mempool": 0,
         "jobs": 1, "under_replicated": 2, "roles": ["validator", "gateway"], "peer_id": PEER},
        {"moniker": "node1", "entry": False, "live": False, "validator": False, "height": None, "round": None, "peers": None,
         "mempool": None, "jobs": None, "roles": None, "peer_id": PEER.replace("a", "b"), "error": "x" * 150},
    ]
    lines = render_table(mesh.TABLE_COLUMNS, mesh.table_rows(nodes)).splitlines()
    assert lines[0].split() == ["moniker", "live", "val", "height", "round", "peers", "mempool", "jobs", "missing", "roles",
                                "peer", "id"]
    assert lines[1].split() == ["node0*", "yes", "yes", "12", "0", "3", "0", "1", "2", "validator,gateway", PEER]
    assert lines[2].split()[:2] == ["node1", "NO"] and lines[2].endswith("(unreachable: " + "x" * 97 + "...)")
    rows = [{"name": "node0", "live": True, "pid": 4242, "peers": 3, "height": 100, "round": 0, "mempool": 2, "jobs": 0,
             "roles": ["validator"], "peer_id": PEER}]
    lines = render_table(testnet.STATUS_COLUMNS, [testnet.status_row(r) for r in rows]).splitlines()
    assert lines[0].split() == ["node", "live", "pid", "peers", "height", "round", "mempool", "jobs", "roles", "peer", "id"]
    assert lines[1].split() == ["node0", "yes", "4242", "3", "100", "0", "2", "0", "validator", PEER]
    assert lines[1].count(" yes ") == 1


def test_progress_lines_go_to_stderr(capsys):
    progress(enabled=False)("hidden")
    progress()("job 1234 submitted")
    out, err = capsys.readouterr()
    assert out == "" and err == "job 1234 submitted\n"


def test_commands_without_tables_do_not_import_rich(tmp_path):
    """``metanode keys show`` (and loading the command modules that print tables) never imports rich."""
    from node.base.keys import Identity

    key = tmp_path / "k.key"
    Identity.from_label("present").write(key)
    script = ("import sys\nfrom node.cli.main import main\n"
              f"sys.argv = ['metanode', 'keys', 'show', {str(key)!r}]\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "import node.cli.analytics, node.cli.mesh, node.cli.testnet, node.cli.present\n"
              "assert 'rich' not in sys.modules, 'rich imported'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "peer" in done.stdout.lower()


def _column_of(line: str, text: str) -> int:
    """The terminal column (in cells) at which ``text`` starts in ``line``."""
    from rich.cells import cell_len

    return cell_len(line[:line.index(text)])


def test_emoji_wide_characters_and_newlines_stay_aligned_one_row_per_line():
    columns = [Column("name"), Column("note"), Column("n", right=True)]
    rows = [["🚀 rocket", "two\nlines", "1"], ["日本語", "tab\there", "22"], ["❤️", "esc \x1b[31mred", "333"],
            ["plain", "line\u2028sep\r", "4"]]
    lines = render_table(columns, rows).splitlines()
    assert len(lines) == 1 + len(rows)  # a newline in a cell never starts a new row
    assert "\x1b" not in "".join(lines) and "\n" not in "".join(lines[1:])
    assert lines[1].split("  ")[0] == "🚀 rocket" and "two\\nlines" in lines[1] and "tab\\there" in lines[2]
    assert "esc \\x1b[31mred" in lines[3] and "line\\u2028sep\\r" in lines[4]
    # Every row's second column starts at the same terminal column, and the right-aligned
    # numbers end at the same one, counting an emoji or a CJK character as two cells.
    from rich.cells import cell_len

    notes = ["note", "two\\nlines", "tab\\there", "esc \\x1b[31mred", "line\\u2028sep\\r"]
    assert len({_column_of(line, note) for line, note in zip(lines, notes)}) == 1
    assert len({cell_len(line) for line in lines}) == 1
    header = render_table([Column("a\nb")], [["x"]]).splitlines()
    assert header == ["a\\nb", "x"]


def test_escape_cell_keeps_printable_text():
    from node.cli.present import escape_cell

    assert escape_cell("naïve 🚀 日本 [b] :smile:") == "naïve 🚀 日本 [b] :smile:"
    assert escape_cell("a\nb\rc\td\x00e\x7f\x85") == "a\\nb\\rc\\td\\x00e\\x7f\\x85"
