"""Distributed mode: ``torchrun --nproc_per_node=2`` on CPU (gloo) against a single process.

The 2-process run trains HistLLM (stage 0 on rank 0, stages 1 and 2 on both ranks, each global batch
split between them and the gradients summed) and evaluates on sharded, gathered rows. With LoRA
dropout off the update is the single-process one, so the test predictions must match the
single-process run's row for row; an odd number of test rows makes sure no row is padded in twice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_LLM, REPO, write_tiny_ctr

from recbole_histllm import distributed
from recbole_histllm.config import Config
from recbole_histllm.quick_start import run
from recbole_histllm.utils import UsageError

CONFIG = {**FAST_LLM, "stage2_epochs": 1, "lora_dropout": 0.0}


def test_shards_partition_rows_and_interleave_restores_their_order(monkeypatch):
    rows = np.arange(100, 111)  # 11 rows over 3 ranks: shards of 4, 4, 3
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        parts.append(distributed.shard(rows))
    assert [len(p) for p in parts] == [4, 4, 3]
    assert sorted(np.concatenate(parts)) == rows.tolist()  # every row exactly once, no padding
    assert distributed.interleave(parts).tolist() == rows.tolist()
    empty = [np.array([7]), np.array([], dtype=float)]  # 1 row, 2 ranks: the empty shard keeps the dtype
    assert distributed.interleave(empty).tolist() == [7] and distributed.interleave(empty).dtype == np.int64


def test_torchrun_refuses_models_without_the_sharded_trainer(monkeypatch, tiny_root):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="torchrun"):
        Config(model="MF", dataset="tiny", config_dict={"data_path": str(tiny_root)})
    assert not distributed.is_initialized()


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory):
    """15 users with 2 test rows each but one with 1: 29 test rows (odd), UAUC defined."""
    root = write_tiny_ctr(tmp_path_factory.mktemp("ddp"), "ddp", n_users=15, rows_per_user=20)
    inter = root / "ddp" / "ddp.inter"
    header, *lines = inter.read_text().splitlines()
    user1 = sorted((line for line in lines if line.split("\t")[0] == "1"), key=lambda s: float(s.split("\t")[3]))
    dropped = set(user1[10:])  # user 1 keeps its 10 oldest rows (histories only look back)
    inter.write_text("\n".join([header, *(line for line in lines if line not in dropped)]) + "\n")
    return root


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: gloo over loopback
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "run_recbole_histllm.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_train_and_gather_like_one(ddp_root, tmp_path):
    common = {**CONFIG, "data_path": str(ddp_root)}
    single = run("HistLLM", "ddp", config_dict=dict(common), output_dir=tmp_path / "single")
    args = ["--model=HistLLM", "--dataset=ddp", "--ddp_backend=gloo", f"--output_dir={tmp_path / 'ddp'}",
            *(f"--{k}={'~' if v is None else v}" for k, v in common.items())]
    done = torchrun(args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["config"]["world_size"] == 2 and result["stages"]["stage2"]["world_size"] == 2
    one = pd.read_csv(tmp_path / "single" / "test_predictions.csv", dtype={"user_id": str, "item_id": str})
    two = pd.read_csv(tmp_path / "ddp" / "test_predictions.csv", dtype={"user_id": str, "item_id": str})
    assert len(two) == result["test_rows"] == result["test_rows_in_split"] == 29  # every test row once
    assert not two.duplicated(["user_id", "item_id"]).any()
    key = ["user_id", "item_id", "label"]
    assert two[key].equals(one[key])  # same rows, same order
    np.testing.assert_allclose(two.score, one.score, atol=1e-5)
    assert np.isfinite(two.score).all() and two.score.std() > 0
    for metric in ("auc", "uauc", "logloss"):
        assert result["test_result"][metric] == pytest.approx(single["test_result"][metric], abs=1e-4)
    for stage in ("stage1", "stage2"):  # same losses and valid metrics epoch by epoch
        for a, b in zip(result["stages"][stage]["epochs"], single["stages"][stage]["epochs"]):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
            assert a["auc"] == pytest.approx(b["auc"], abs=1e-4)
    # rank 0 alone wrote the files: the same set as the single process
    files = {name: sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("single", "ddp")}
    assert files["ddp"] == files["single"]
