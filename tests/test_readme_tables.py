"""The ``--reuse_only`` table commands of the README and of ``docs/results/HISTORY.md`` (the earlier tables) find
their runs in the repository (``docs/results/``).

A config default that changes what a run computes (``max_grad_norm`` did) makes older runs stop matching;
the README's commands must then ask for the old value. Each command is dry-run here (no dataset needed):
every row it names must reuse at least one kept run.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from recbole_histllm import table

ROOT = Path(__file__).resolve().parent.parent
#: The documents whose table commands are checked (paths relative to ROOT; commands run from ROOT).
DOCUMENTS = ("README.md", "docs/results/HISTORY.md")


def readme_reuse_commands(document: str = "README.md") -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of every indented ``python -m recbole_histllm.table ... --reuse_only`` command of
    ``document`` (``line``: the command's last line)."""
    lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        # optionally after shell assignments ("R=docs/results/runs/ml-100k; python -m ..."), expanded here
        head = re.match(r"    ((?:\w+=\S+; )*)python -m recbole_histllm\.table", lines[i])
        if head:
            text = lines[i][head.end(1):].strip()
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            for name, value in re.findall(r"(\w+)=(\S+); ", head[1]):
                text = text.replace(f"${name}", value)
            if "--reuse_only" in text:
                found.append((i + 1, shlex.split(text)[3:]))
        i += 1
    return found


COMMANDS = [(doc, line, argv) for doc in DOCUMENTS for line, argv in readme_reuse_commands(doc)]


def printed_seed_counts(line: int, asked: int, document: str = "README.md") -> dict[str, int]:
    """Seeds per row of the ``| Group | Method |`` table ``document`` prints within 15 lines after the command that
    ends on ``line``: ``k`` for a row marked ``(k of n seeds)``, else ``asked`` (the command's seeds); ``{}`` if
    none."""
    lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
    for i in range(line, min(line + 15, len(lines))):
        if lines[i].startswith("| Group | Method |"):
            counts = {}
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                name = row.split("|")[2].strip()
                marked = re.fullmatch(r"(.+) \((\d+) of \d+ seeds\)", name)
                counts[marked[1] if marked else name] = int(marked[2]) if marked else asked
            return counts
    return {}


def test_the_documents_have_reuse_only_table_commands() -> None:
    assert sum(doc == "README.md" for doc, _, _ in COMMANDS) >= 3
    assert sum(doc != "README.md" for doc, _, _ in COMMANDS) >= 5


@pytest.mark.parametrize("document,line,argv", COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_readme_table_command_reuses_runs_for_every_row(document: str, line: int, argv: list[str], tmp_path,
                                                         monkeypatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    # as on a fresh clone: the runs that produced a kept run's shared stages (absolute paths in its config,
    # outside docs/) are not at hand, so the kept run is trusted (table._given_stage_fits)
    own_read, kept = table.read_result, ROOT / "docs"
    monkeypatch.setattr(table, "read_result",
                        lambda path: own_read(path) if Path(path).resolve().is_relative_to(kept) else None)
    argv = [a for a in argv if not a.startswith("--output_dir=")] + [f"--output_dir={tmp_path}", "--dry_run"]
    assert table.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    status = re.findall(r"^\[(.+) seed (\d+)\] (reused|to run in) ", out, flags=re.M)
    assert status, out
    reused: dict[str, int] = {}
    for row, _, what in status:
        reused[row] = reused.get(row, 0) + (what == "reused")
    missing = [row for row, n in reused.items() if n == 0]
    assert not missing, f"{document} line {line}: no kept run matches row(s) {missing}"
    printed = printed_seed_counts(line, asked=len({seed for _, seed, _ in status}), document=document)
    if printed:  # the table printed below the command: as many seeds per row as it says
        assert reused == printed, f"{document} line {line}: seeds reused {reused}, its table says {printed}"
