"""Default run folders: two runs started in the same second get their own folders; torchrun ranks share one."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from recbole_histllm import quick_start
from recbole_histllm.quick_start import claim_output_dir, default_output_dir, main


def test_claim_gives_each_concurrent_caller_its_own_folder(tmp_path):
    base = tmp_path / "saved" / "HistLLM-ml-100k-20261202-145139"
    claimed: list[Path] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        path = claim_output_dir(base)
        with lock:
            claimed.append(path)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == 8
    assert all(path.is_dir() for path in claimed)
    assert sorted(p.name for p in claimed) == sorted([base.name] + [f"{base.name}-{n}" for n in range(2, 9)])


def test_torchrun_ranks_name_the_same_folder(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "a1b2c3")
    assert default_output_dir("HistLLM", "movie") == Path("saved/HistLLM-movie-torchrun-a1b2c3")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert default_output_dir("HistLLM", "movie").name.startswith("HistLLM-movie-2")  # the time stamp


def test_two_cli_runs_in_the_same_second_keep_their_own_results(ml100k_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fixed = Path("saved") / "MF-ml-100k-20261202-145139"  # as if both started in the same second
    monkeypatch.setattr(quick_start, "default_output_dir", lambda model, dataset: fixed)
    outs = []
    for seed in (1, 2):
        assert main(["--model=MF", "--dataset=ml-100k", f"--data_path={ml100k_root}", "--epochs=1",
                     f"--seed={seed}", "--show_progress=False"]) == 0
        outs.append(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("results written to "))
    assert outs == [str(fixed), f"{fixed}-2"]
    seeds = [json.loads((tmp_path / out / "result.json").read_text())["seed"] for out in outs]
    assert seeds == [1, 2]
    assert all((tmp_path / out / "test_predictions.csv").is_file() for out in outs)


def test_result_records_the_code_the_run_started_from(ml100k_root, tmp_path, monkeypatch):
    """A commit or edit while a long run trains must not relabel it: ``code`` is the checkout at the start, and a
    different one at the end is kept beside it as ``code_at_finish``."""
    states = iter([{"package": "0.1.0", "commit": "a" * 40, "dirty": False},
                   {"package": "0.1.0", "commit": "b" * 40, "dirty": True}])
    monkeypatch.setattr(quick_start, "code_version", lambda: next(states))
    out = tmp_path / "out"
    quick_start.run("MF", "ml-100k", config_dict={"data_path": str(ml100k_root), "epochs": 1, "show_progress": False},
                    output_dir=out)
    written = json.loads((out / "result.json").read_text())
    assert written["code"]["commit"] == "a" * 40 and written["code"]["dirty"] is False
    assert written["code_at_finish"]["commit"] == "b" * 40 and written["code_at_finish"]["dirty"] is True
