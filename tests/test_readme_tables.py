"""The README's ``--reuse_only`` table commands find their runs in the repository (``docs/results/``).

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


def readme_reuse_commands() -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of every indented ``python -m recbole_histllm.table ... --reuse_only`` command."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        start = i
        if lines[i].startswith("    python -m recbole_histllm.table"):
            text = lines[i].strip()
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            if "--reuse_only" in text:
                found.append((start + 1, shlex.split(text)[3:]))
        i += 1
    return found


COMMANDS = readme_reuse_commands()


def test_the_readme_has_reuse_only_table_commands() -> None:
    assert len(COMMANDS) >= 5


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_readme_table_command_reuses_runs_for_every_row(line: int, argv: list[str], tmp_path, monkeypatch,
                                                         capsys) -> None:
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
    assert not missing, f"README line {line}: no kept run matches row(s) {missing}"
