"""The efficiency benchmark runs end to end and writes its CSV and plot."""

import csv

from recbole_histllm.bench import main


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
