"""The feature tools' shared helpers: atomic rewrites that keep permissions, the .item rewrite, the CLI front."""

from __future__ import annotations

import os
import stat

import pytest

from recbole_histllm.features.files import atomic_write, feature_parser, read_item_file, rewrite_item_file
from recbole_histllm.utils import UsageError


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "x.item"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["x.item"]
    with atomic_write(path) as handle:
        handle.write("new\n")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.bin"
    with atomic_write(fresh, binary=True) as handle:
        handle.write(b"\x00\x01")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.read_bytes() == b"\x00\x01" and stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_rewrite_item_file_drops_and_appends_columns(tmp_path):
    path = tmp_path / "toy.item"
    path.write_text("item_id:token\ttext:float_seq\ttitle:token_seq\n1\t0 0\tA\n2\n\n")
    header, rows = read_item_file(path)
    assert header == ["item_id:token", "text:float_seq", "title:token_seq"] and rows == [["1", "0 0", "A"], ["2"]]
    rewrite_item_file(path, header, rows, {"text"}, ["text:float_seq"], lambda row: [f"{row[0]}.5"])
    assert path.read_text() == "item_id:token\ttitle:token_seq\ttext:float_seq\n1\tA\t1.5\n2\t\t2.5\n"


def test_read_item_file_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="item file not found: .*none.item"):
        read_item_file(tmp_path / "none.item")
    (tmp_path / "empty.item").write_text("")
    with pytest.raises(UsageError, match="empty.item: empty item file"):
        read_item_file(tmp_path / "empty.item")


def test_feature_parser_front(capsys):
    parser = feature_parser("recbole_histllm.features.demo", "Demo.", data_path=None, data_path_help="root")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(["--dataset=toy", "--threads=2"])
    assert (args.dataset, args.data_path, args.threads) == ("toy", None, 2)
    assert feature_parser("m", "d").parse_args(["--dataset=toy"]).data_path == "dataset"
    assert parser.format_usage().startswith("usage: python -m recbole_histllm.features.demo")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([])
    assert exit_.value.code == 2 and "--dataset" in capsys.readouterr().err
