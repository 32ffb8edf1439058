"""ZeroShot with a vision-language model (``vlm_path``): Fig. 7 with posters, P(Yes), no training.

A tiny random LLaVA (CLIP vision tower, Llama text model over the real SmolLM2 tokenizer plus an
``<image>`` token) is saved offline into a temporary folder and loaded the way a real one is.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import FAST_LLM
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed
from test_llm_baselines import FIG7, paper_text

from recbole_histllm.config import Config
from recbole_histllm.llm import PromptSample
from recbole_histllm.utils import UsageError, get_model

torch.set_num_threads(1)

MISSING = "5"  # the one item of the tiny dataset without a poster
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOKENS_PER_IMAGE = 16  # (32 / 8) ** 2 patches, CLS dropped


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    """A tiny random LLaVA-1.5-shaped model with its processor, saved like a downloaded one."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from recbole_histllm.llm.backbone import resolve_llm_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm_path(None), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    folder = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def poster_dir(tmp_path_factory):
    """Posters of items 1..24 of the tiny dataset (odd ids .jpg, even .png), item ``MISSING`` left out."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("posters")
    for item in range(1, 25):
        if str(item) != MISSING:
            Image.new("RGB", (24, 36), (10 * item, 255 - 10 * item, 7 * item)).save(
                folder / f"{item}.{'jpg' if item % 2 else 'png'}")
    return folder


def build(root, checkpoint_dir, **overrides):
    overrides = {**FAST_LLM, "data_path": str(root), "checkpoint_dir": str(checkpoint_dir), **overrides}
    config = Config(model="ZeroShot", dataset="tiny", config_dict=overrides)
    init_seed(config["seed"], True)
    train, valid, test = data_preparation(config, create_dataset(config))
    return get_model("ZeroShot")(config, train._dataset), test


@pytest.fixture(scope="module")
def vlm_model(tiny_root, vlm_dir, poster_dir, tmp_path_factory):
    return build(tiny_root, tmp_path_factory.mktemp("ckpt"), vlm_path=str(vlm_dir), poster_dir=str(poster_dir))


def content_text(messages, image="<Image>") -> str:
    """The user message with every image entry written as ``image``."""
    (message,) = messages
    assert message["role"] == "user"
    return "".join(c["text"] if c["type"] == "text" else image for c in message["content"])


def test_prompt_is_fig7_with_one_image_per_poster(vlm_model):
    model, test = vlm_model
    builder = model.builders[1]
    assert model.missing_posters == 1 and model.vma is None and not model.use_visual
    # the wording: Fig. 7 with each image placeholder an image entry, posters in prompt order
    fig7 = paper_text(FIG7, 3).removeprefix("#Question: ").removesuffix(" \n#Answer:")
    fig7 = fig7.replace("<Item_iImage>", "<Image>").replace("<TargetItemImage>", "<Image>")
    sample = PromptSample({"TargetItemTitle": "<TargetItemTitle>", "TargetItemImage": "t.jpg"},
                          [{"Title": f"<Item_{k}Title>", "Image": f"{k}.jpg"} for k in (1, 2, 3)])
    messages, images = builder.messages(sample)
    assert content_text(messages) == fig7 and images == ["1.jpg", "2.jpg", "3.jpg", "t.jpg"]
    # a missing poster: its image entry is left out, its title stays
    sample.history[1]["Image"] = None
    messages, images = builder.messages(sample)
    assert content_text(messages) == fig7.replace('"<Item_2Title>"<Image>', '"<Item_2Title>"')
    assert images == ["1.jpg", "3.jpg", "t.jpg"]
    # real rows: one image per history item with a poster, then the target's, in the chat template
    inter = test._dataset[torch.arange(12)]
    hist_ids, hist_mask = model.history(inter)
    assert hist_mask.sum(1).max() == FAST_LLM["history_len"]
    samples = model.samples(inter, hist_ids, hist_mask)
    batch = builder(samples)
    seen_missing = False
    for row, sample in enumerate(samples):
        text, paths = builder.render(sample)
        ids = [i for i, m in zip(hist_ids[row].tolist(), hist_mask[row].tolist()) if m] + [int(inter["item_id"][row])]
        raw = [model.posters[i].stem if model.posters[i] else None for i in ids]
        seen_missing |= None in raw
        assert [p.stem for p in paths] == [r for r in raw if r is not None]
        assert text.startswith("<|im_start|>user\nA user has given high ratings to the following movies: ")
        assert text.endswith('Answer with "Yes" or "No".<|im_end|>\n<|im_start|>assistant\n#Answer:')
        assert text.count("<image>") == len(paths)
        image_tokens = int((batch["input_ids"][row] == builder.processor.image_token_id).sum())
        assert image_tokens == TOKENS_PER_IMAGE * len(paths)
    assert seen_missing, "the rows should include an item without a poster"


def test_scores_are_probabilities_independent_of_the_batch(vlm_model):
    model, test = vlm_model
    lengths = (test._dataset.inter_feat["history"] > 0).sum(1)
    rows = torch.cat([torch.arange(4), lengths.argsort(descending=True)[:4]])
    inter = test._dataset[rows]
    batch = model.builders[1](model.samples(inter, *model.history(inter)))
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 1).all()  # left pad
    scores = model.predict(inter)
    assert scores.shape == (len(rows),) and ((scores > 0) & (scores < 1)).all()
    alone = torch.cat([model.predict(test._dataset[rows[i : i + 1]]) for i in range(len(rows))])
    torch.testing.assert_close(scores, alone, atol=1e-4, rtol=0)


def test_cli_run_scores_without_training_or_text_backbone(tiny_root, vlm_dir, poster_dir, tmp_path, monkeypatch,
                                                         caplog):
    from recbole_histllm.model import llm_recommender
    from recbole_histllm.quick_start import run

    def no_text_backbone(*args, **kwargs):
        raise AssertionError("the text backbone must not be loaded when vlm_path is set")

    monkeypatch.setattr(llm_recommender, "load_backbone", no_text_backbone)
    monkeypatch.setattr(llm_recommender, "random_backbone", no_text_backbone)
    out = tmp_path / "out"
    config = {**FAST_LLM, "data_path": str(tiny_root), "vlm_path": str(vlm_dir), "poster_dir": str(poster_dir),
              "show_progress": False}
    with caplog.at_level(logging.WARNING):
        run("ZeroShot", "tiny", config_dict=config, output_dir=out)
    assert caplog.text.count("have no poster") == 1 and "1 of 24 items have no poster" in caplog.text
    result = json.loads((out / "result.json").read_text())
    assert {"auc", "uauc"} <= set(result["test_result"]) and result["test_rows"] > 0
    assert set(result["stages"]) == {"no_training"} and result["best_epoch"] is None
    assert result["config"]["vlm_path"] == str(vlm_dir)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"vlm_path": "/nonexistent/vlm"}, "vlm_path"),
        ({"vlm_path": "VLM"}, "poster_dir"),
        ({"vlm_path": "VLM", "poster_dir": "/nonexistent/posters"}, "poster_dir"),
    ],
)
def test_bad_vlm_settings_name_the_key(overrides, key, tiny_root, vlm_dir, tmp_path):
    overrides = {k: str(vlm_dir) if v == "VLM" else v for k, v in overrides.items()}
    with pytest.raises(UsageError, match=f"`{key}`") as err:
        build(tiny_root, tmp_path, **overrides)
    assert "\n" not in str(err.value)
