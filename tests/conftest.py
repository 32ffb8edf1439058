"""Shared fixtures: a built ml-100k CTR dataset folder reused by the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ml100k_root(tmp_path_factory) -> Path:
    """A data_path folder holding dataset/ml-100k built by the converter."""
    from dataset_converters.ml100k import build_ml100k

    root = tmp_path_factory.mktemp("data")
    build_ml100k(root / "ml-100k")
    return root
