"""Shared fixtures: a built ml-100k CTR dataset folder reused by the whole session, torch on one thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# LLM models on the tiny datasets: a tiny random backbone over the real tokenizer, few rows.
FAST_LLM = {
    "llm_path": "random:tiny",
    "bf16": False,
    "history_len": 5,
    "show_progress": False,
    "mf_epochs": 1,
    "stage1_train_rows": 32,
    "stage2_train_rows": 32,
    "stage1_epochs": 1,
    "stage2_epochs": 2,
    "stopping_step": 5,
    "valid_rows": None,
}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one CPU thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ml100k_root(tmp_path_factory) -> Path:
    """A data_path folder holding dataset/ml-100k built by the converter."""
    from dataset_converters.ml100k import build_ml100k

    root = tmp_path_factory.mktemp("data")
    build_ml100k(root / "ml-100k")
    return root


def write_tiny_ctr(root: Path, name: str = "tiny", n_users: int = 16, n_items: int = 24, rows_per_user: int = 12,
                   image_dim: int | None = 8, seed: int = 0) -> Path:
    """A small CTR dataset in the data contract (with image features when ``image_dim``)."""
    import numpy as np
    import pandas as pd

    from dataset_converters.core import finalize_dataset

    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=rows_per_user, replace=False)
        for t, item in enumerate(items):
            label = int((item % 2 == user % 2) ^ (rng.random() < 0.15))
            rows.append((str(user), str(item), label, 1_000_000 + 100 * t + user))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "timestamp"])
    meta = pd.DataFrame({"item_id": [str(i) for i in range(1, n_items + 1)],
                         "title": [f"Movie number {i} ({1990 + i})" for i in range(1, n_items + 1)]})
    out = root / name
    finalize_dataset(inter, meta, out, max_history=20, dedupe_keys=None)
    if image_dim:
        item_file = out / f"{name}.item"
        ids = [line.split("\t")[0] for line in item_file.read_text().splitlines()[1:]]
        lines = ["item_id:token\timage:float_seq\thas_image:float"]
        for item in ids:
            vec = rng.normal(size=image_dim) + (int(item) % 2)
            lines.append(f"{item}\t{' '.join(f'{v:.5f}' for v in vec)}\t1")
        item_file.write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """data_path with dataset ``tiny`` (images) and ``tinytext`` (no images)."""
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_ctr(root, "tiny")
    write_tiny_ctr(root, "tinytext", image_dim=None)
    return root
