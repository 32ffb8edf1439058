"""The efficiency benchmark runs end to end and writes its CSV and plot."""

import csv

import pytest
import torch

from recbole_histllm.bench import COMPARISONS, main


def test_bench_writes_csv_and_png(tiny_root, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["--dataset=tiny", f"--data_path={tiny_root}", "--llm_path=random:tiny", "--history=1,4",
                 "--rows=8", "--train_steps=1", "--batch_size=4", "--device=cpu", f"--out={out}"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "bench.csv")))
    expected = {(n, v) for n in (1, 4) for v in ("HistLLM", "w/o UHEM")}
    assert {(int(r["history"]), r["variant"]) for r in rows} == expected
    tokens = {(int(r["history"]), r["variant"]): float(r["tokens_per_sample"]) for r in rows}
    # one history token: HistLLM's prompt does not grow with n, w/o UHEM's does
    assert abs(tokens[(4, "HistLLM")] - tokens[(1, "HistLLM")]) <= 2  # only the target title differs
    assert tokens[(4, "w/o UHEM")] > tokens[(1, "w/o UHEM")]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("compare", ["switches", "precision", "kernels"])
def test_speed_mode_compares_two_settings_on_the_same_rows(tiny_root, tmp_path, capsys, compare):
    out = tmp_path / "speed"
    args = ["--speed", "--dataset=tiny", f"--data_path={tiny_root}", "--llm_path=random:tiny", "--rows=8",
            "--batch_size=4", "--device=cpu", f"--out={out}"] + ([] if compare == "switches" else [f"--{compare}"])
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "speed.csv")))
    settings = COMPARISONS[compare]
    phases = {r["phase"] for r in rows}
    assert {"stage-2 training", "inference (test)"} <= phases
    assert sorted((r["phase"], r["setting"]) for r in rows) == sorted((p, s) for p in phases for s in settings)
    assert all(float(r["rows_per_s"]) > 0 for r in rows)
    tokens = {(r["phase"], r["setting"]): float(r["tokens_per_row"]) for r in rows}
    for phase in phases:  # precision and kernels do not change the prompts; the switches shorten them
        if compare != "switches":
            assert tokens[(phase, settings[0])] == tokens[(phase, settings[1])]
        else:
            assert tokens[(phase, "on")] <= tokens[(phase, "off")]
    printed = capsys.readouterr().out
    assert f"rows/s {settings[0]}" in printed
    assert rows[0]["device"] == f"CPU x{torch.get_num_threads()} {torch.backends.cpu.get_cpu_capability()}"
