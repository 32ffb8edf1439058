"""The LLM baselines (TALLRec, CoLLM, BinLLM, their -image variants, ZeroShot) on the shared plumbing.

Prompts are checked against the paper's appendix (A.1 Fig. 6/7, A.3 Fig. 11/12), the trainable set
of every stage against each method's recipe, BinLLM's hashing model and ZeroShot's no-training run.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import FAST_LLM
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_histllm.config import Config
from recbole_histllm.llm import PromptSample
from recbole_histllm.model.binllm import code_text
from recbole_histllm.model.hashmf import HashMF, binarize, load_hash_codes
from recbole_histllm.trainer import LLMTrainer
from recbole_histllm.utils import get_model, get_trainer, model_label

torch.set_num_threads(1)

FAST = {**FAST_LLM, "stage2_epochs": 1}
MODELS = ("TALLRec", "TALLRec-image", "CoLLM", "CoLLM-image", "BinLLM", "BinLLM-image", "ZeroShot")

# The appendix figures verbatim (A.1, A.3), the figure's "\n" as the escape it stands for.
FIG6 = (
    "#Question: A user has given high ratings to the following movies: <Item_1Title...<Item_nTitle>. Leverage "
    "the information to predict whether the user would enjoy the movie titled <TargetItemTitle> Answer with "
    '"Yes" or "No". \\n#Answer:'
)
FIG7 = (
    "#Question: A user has given high ratings to the following movies: <Item_1Title><Item_1Image>..."
    "<Item_nTitle><Item_nImage>. Leverage the information to predict whether the user would enjoy the movie "
    'titled <TargetItemTitle><TargetItemImage> Answer with "Yes" or "No". \\n#Answer:'
)
FIG11 = (
    "#Question: A user has given high ratings to the following movies: <Item_1Title...<Item_nTitle>. "
    "Additionally, we have information about the user's preferences encoded in the feature <UserID>. Using all "
    "available information, make a prediction about whether the user would enjoy the movie titled "
    '<TargetItemTitle> with the feature <TargetItemID>? Answer with "Yes" or "No". \\n#Answer:'
)
FIG12 = (
    "#Question: A user has given high ratings to the following movies: <Item_1Title><Item_1Image>..."
    "<Item_nTitle><Item_nImage>. Additionally, we have information about the user's preferences encoded in the "
    "feature <UserID>. Using all available information, make a prediction about whether the user would enjoy "
    'the movie titled <TargetItemTitle><TargetItemImage> with the feature <TargetItemID>? Answer with "Yes" or '
    '"No". \\n#Answer:'
)
# model -> {stage: figure}
FIGURES = {
    "TALLRec": {1: FIG6},
    "TALLRec-image": {1: FIG7},
    "CoLLM": {1: FIG6, 2: FIG11},
    "CoLLM-image": {1: FIG6, 2: FIG12},
    "BinLLM": {1: FIG6, 2: FIG11},
    "BinLLM-image": {1: FIG6, 2: FIG12},
}
# model -> {stage: parameter groups that must change in it}; every other group must stay bit-identical
RECIPES = {
    "TALLRec": {1: {"lora"}},
    "TALLRec-image": {1: {"lora", "vma"}},  # VMA trained with LoRA in TALLRec's single stage
    "CoLLM": {1: {"lora"}, 2: {"cia"}},  # CoLLM's two steps: LoRA, then the mapping with LoRA frozen
    "CoLLM-image": {1: {"lora"}, 2: {"cia", "vma"}},
    "BinLLM": {1: {"lora"}, 2: {"lora"}},  # codes are text: LoRA tunes in both steps
    "BinLLM-image": {1: {"lora"}, 2: {"lora", "vma"}},
    "ZeroShot": {},
}


def paper_text(figure: str, n_items: int) -> str:
    """A figure with its history ``<Item_1Title>...<Item_nTitle>`` written out for ``n_items`` items the
    way the templates list them (quoted titles, comma separated), image slots as ``<Item_iImage>``."""
    image = "<Item_1Image>" in figure
    pattern = "<Item_1Title><Item_1Image>...<Item_nTitle><Item_nImage>" if image else "<Item_1Title...<Item_nTitle>"
    assert pattern in figure
    items = ", ".join(f'"<Item_{k}Title>"' + ("<Item_iImage>" if image else "") for k in range(1, n_items + 1))
    return figure.replace(pattern, items).replace("\\n", "\n")  # the figures' escaped newline, space kept


def placeholder_sample(n_items: int) -> PromptSample:
    """Text fields filled with their own placeholder names (so text and slots render alike)."""
    fields = {name: f"<{name}>" for name in ("TargetItemTitle", "UserID", "TargetItemID")}
    return PromptSample(fields, [{"Title": f"<Item_{k}Title>"} for k in range(1, n_items + 1)])


def build(name, root, checkpoint_dir, dataset="tiny", **overrides):
    config = Config(model=name, dataset=dataset,
                    config_dict={**FAST, "data_path": str(root), "checkpoint_dir": str(checkpoint_dir), **overrides})
    init_seed(config["seed"], True)
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    return config, get_model(name)(config, train._dataset), train, valid, test


def first_rows(loader, n=6):
    return loader._dataset[torch.arange(n)]


def mixed_rows(loader, n=6):
    """The first rows (short histories) and the rows with the longest histories."""
    lengths = (loader._dataset.inter_feat["history"] > 0).sum(1)
    longest = lengths.argsort(descending=True)[: n // 2]
    return loader._dataset[torch.cat([torch.arange(n - len(longest)), longest])]


@pytest.mark.parametrize("name", MODELS)
def test_names_configs_and_trainers(name):
    cls = get_model(name)
    assert model_label(cls) == name  # the paper's label reaches config["model"], result.json, file names
    assert get_trainer(cls.type, name) is LLMTrainer
    config = Config(model=name, dataset="tiny", config_dict={"llm_path": "random:tiny"})
    assert config["model"] == name
    files = [p.name for p in config.plugin_property_files]
    assert "LLMRecommender.yaml" in files and f"{name.split('-')[0]}.yaml" in files


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_prompts_match_the_paper_appendix(name, tiny_root, tmp_path):
    _, model, _, _, _ = build(name, tiny_root, tmp_path)
    assert sorted(model.templates) == sorted(FIGURES[name])
    for stage, figure in FIGURES[name].items():
        for n in (1, 3):
            assert model.builders[stage].render_text(placeholder_sample(n)) == paper_text(figure, n), (stage, n)


def test_tallrec_desc_prompt_is_fig8(tiny_root, tmp_path):
    """``tallrec_desc: True`` is the paper's TALLRec_desc (Fig. 8, A.1): descriptions for titles."""
    fig8 = ("#Question: A user has given high ratings to the following movies: <Item_1Desc>...<Item_nDesc>. "
            "Leverage the information to predict whether the user would enjoy the movie with the description as "
            'follows: <TargetItemDesc> Answer with "Yes" or "No". \\n#Answer:')
    _, model, _, _, _ = build("TALLRec", tiny_root, tmp_path, tallrec_desc=True)
    sample = PromptSample({"TargetItemDesc": "<TargetItemDesc>"}, [{"Desc": f"<Item_{k}Desc>"} for k in (1, 2, 3)])
    expected = fig8.replace("<Item_1Desc>...<Item_nDesc>", '"<Item_1Desc>", "<Item_2Desc>", "<Item_3Desc>"')
    assert model.builders[1].render_text(sample) == expected.replace("\\n", "\n")


def test_zeroshot_prompt_is_fig6_in_the_chat_template(tiny_root, tmp_path):
    _, model, train, _, _ = build("ZeroShot", tiny_root, tmp_path)
    builder = model.builders[1]
    assert builder.use_chat_template
    body = paper_text(FIG6, 2).removeprefix("#Question: ").removesuffix(" \n#Answer:")
    text = builder.render_text(placeholder_sample(2))
    assert body in text and text.endswith("<|im_start|>assistant\n#Answer:") and text.startswith("<|im_start|>")


@pytest.mark.parametrize("name", ["TALLRec-image", "CoLLM-image", "BinLLM-image"])
def test_image_variants_place_one_image_token_per_item(name, tiny_root, tmp_path):
    _, model, train, _, _ = build(name, tiny_root, tmp_path)
    inter = mixed_rows(train)
    hist_ids, hist_mask = model.history(inter)
    stage = max(model.templates)
    batch = model.builders[stage](model.samples(inter, hist_ids, hist_mask))
    rows = len(hist_ids)
    per_row = torch.bincount(batch.slots["Item_iImage"].batch_idx, minlength=rows)
    assert per_row.tolist() == hist_mask.sum(1).tolist() and hist_mask.sum() > rows  # one per history item
    items = batch.slots["Item_iImage"].item_idx
    assert all(sorted(items[batch.slots["Item_iImage"].batch_idx == b].tolist()) == list(range(int(per_row[b])))
               for b in range(rows))
    assert sorted(batch.slots["TargetItemImage"].batch_idx.tolist()) == list(range(rows))  # one for the target
    assert model.use_visual and model.vma is not None
    text_model = build(name.removesuffix("-image"), tiny_root, tmp_path)[1]
    assert text_model.vma is None and not any("Image" in s for t in text_model.templates.values() for s in t.slots)


def test_image_variant_without_image_features_warns_and_runs_text_only(tiny_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _, model, train, _, _ = build("TALLRec-image", tiny_root, tmp_path, dataset="tinytext")
    assert "no image features" in caplog.text and model.vma is None
    assert model.predict(first_rows(train)).shape == (6,)


def test_use_visual_does_not_relabel_a_variant(tiny_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _, model, _, _, _ = build("TALLRec", tiny_root, tmp_path, use_visual=True)
    assert model.use_visual is False and "--model=TALLRec-image" in caplog.text


def group_state(model) -> dict[str, dict[str, torch.Tensor]]:
    """Snapshot of every parameter group a stage may train."""
    groups = {"lora": {k: v.detach().clone() for k, v in model.llm.named_parameters() if "lora_" in k}}
    for name, module in model.trainable_modules().items():
        if module is not None:
            # parameters only: input statistics (buffers) are set from MF when stage 0 loads it
            groups[name] = {k: v.detach().clone() for k, v in module.named_parameters()}
    return {k: v for k, v in groups.items() if v}


def changed(before, after) -> set[str]:
    return {g for g in before if any(not torch.equal(before[g][k], after[g][k]) for k in before[g])}


@pytest.mark.parametrize("name", MODELS)
def test_one_tiny_epoch_trains_exactly_the_declared_groups(name, tiny_root, tmp_path):
    config, model, train, valid, test = build(name, tiny_root, tmp_path)
    trainer = LLMTrainer(config, model)
    snapshots = {0: group_state(model)}
    everything = {k: v.clone() for k, v in model.state_dict().items()}
    original = trainer._run_stage

    def spy(stage, *args, **kwargs):
        summary = original(stage, *args, **kwargs)  # sets the stage's trainable set, trains
        snapshots[stage] = group_state(model)
        snapshots[f"trainable{stage}"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return summary

    trainer._run_stage = spy
    score, result = trainer.fit(train, valid)
    assert set(result) == {"auc", "uauc"}
    recipe = RECIPES[name]
    assert model.training_stages() == sorted(recipe)
    for stage in sorted(recipe):
        before = snapshots[stage - 1]
        assert changed(before, snapshots[stage]) == recipe[stage], stage
        trained_modules = {n.split(".")[0] for n in snapshots[f"trainable{stage}"]}
        assert ("llm" in trained_modules) == ("lora" in recipe[stage])
        assert trained_modules - {"llm"} == recipe[stage] - {"lora"}, stage  # only the declared modules
        assert all("lora_" in n for n in snapshots[f"trainable{stage}"] if n.startswith("llm."))
        assert (tmp_path / f"{name}-stage{stage}.pth").is_file()  # files carry the paper's label
    if not recipe:  # ZeroShot: nothing trained, no adapters, only scored
        assert "no_training" in trainer.stage_summaries and not model.uses_lora()
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in everything.items())
        assert not any("lora_" in n or p.requires_grad for n, p in model.named_parameters())
    collaborative = {"CoLLM": "MF", "CoLLM-image": "MF", "BinLLM": "HashMF", "BinLLM-image": "HashMF"}
    assert trainer.stage_summaries.get("stage0", {}).get("model") == collaborative.get(name)
    result = trainer.evaluate(test, load_best_model=True)
    assert {"auc", "uauc"} <= set(result)
    scores = model.predict(first_rows(test, 4))
    assert ((scores > 0) & (scores < 1)).all()


# ---- BinLLM ---------------------------------------------------------------------------------------
def test_sign_has_a_straight_through_gradient():
    x = torch.tensor([-0.3, 0.0, 0.2, -2.0], requires_grad=True)
    codes = binarize(x)
    assert codes.tolist() == [-1.0, 1.0, 1.0, -1.0]
    (codes * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_hash_model_codes_and_gradients_reach_the_embeddings(tiny_root, tmp_path):
    config = Config(model="HashMF", dataset="tiny",
                    config_dict={"data_path": str(tiny_root), "binllm_bits": 16, "embedding_size": 8})
    init_seed(config["seed"], True)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = HashMF(config, train._dataset)
    inter = train._dataset[torch.randperm(len(train._dataset), generator=torch.Generator().manual_seed(0))[:32]]
    codes = model.user_codes(inter["user_id"])
    assert codes.shape == (32, 16) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    model.calculate_loss(inter).backward()
    for table in (model.user_embedding, model.item_embedding, model.user_hash, model.item_hash):
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0


def test_code_text_formats():
    code = torch.tensor([1.0, -1, 1, 1, -1, -1, -1, 1] * 2 + [-1.0] * 8 + [1.0] * 8)
    assert code_text(code) == "10110001" * 2 + "0" * 8 + "1" * 8
    assert code_text(code, "dotted") == "177.177.0.255"
    with pytest.raises(ValueError, match="binllm_code_format"):
        code_text(code, "hex")
    with pytest.raises(ValueError, match="multiple of 8"):
        code_text(code[:12], "dotted")


@pytest.mark.parametrize("code_format", ["binary", "dotted"])
def test_binllm_writes_the_hash_codes_into_the_prompt_as_text(code_format, tiny_root, tmp_path):
    config, model, train, valid, _ = build("BinLLM", tiny_root, tmp_path, binllm_code_format=code_format,
                                           stage1_train_rows=8, stage2_train_rows=8)
    assert model.templates[2].slots == {}  # the codes are text, not embedding slots
    trainer = LLMTrainer(config, model)
    trainer.fit(train, valid)
    bits = config["binllm_bits"]
    assert bits == 32 and model.user_codes.shape[1] == bits
    assert set(model.user_codes.unique().tolist()) == {-1.0, 1.0}  # the hashing model's codes were loaded
    user, item = load_hash_codes(trainer.stage_summaries["stage0"]["checkpoint"], train._dataset)
    assert torch.equal(user, model.user_codes) and torch.equal(item, model.item_codes)
    inter = first_rows(train, 3)
    hist_ids, hist_mask = model.history(inter)
    samples = model.samples(inter, hist_ids, hist_mask)
    for row, sample in enumerate(samples):
        u, i = int(inter["user_id"][row]), int(inter["item_id"][row])
        user_text, item_text = sample.fields["UserID"], sample.fields["TargetItemID"]
        if code_format == "binary":
            assert len(user_text) == bits and set(user_text) <= {"0", "1"}
        else:
            assert len(user_text.split(".")) == bits // 8 and all(0 <= int(g) < 256 for g in user_text.split("."))
        assert user_text == code_text(model.user_codes[u], code_format)
        assert item_text == code_text(model.item_codes[i], code_format)
        text = model.builders[2].render_text(sample)
        assert f"encoded in the feature {user_text}." in text and f"with the feature {item_text}?" in text
    # the codes travel with the checkpoint
    saved = torch.load(trainer.saved_model_file, weights_only=False)["state_dict"]
    assert torch.equal(saved["user_codes"], model.user_codes)


def test_binllm_rejects_a_mf_checkpoint_as_hash_checkpoint(tiny_root, tmp_path):
    config, model, train, valid, _ = build("CoLLM", tiny_root, tmp_path, stage1_train_rows=8, stage2_train_rows=8,
                                           stage2_epochs=0, stage1_epochs=0)
    trainer = LLMTrainer(config, model)
    trainer._stage0(train, valid)
    mf_file = trainer.stage_summaries["stage0"]["checkpoint"]
    config, model, train, valid, _ = build("BinLLM", tiny_root, tmp_path / "b", hash_checkpoint=mf_file)
    with pytest.raises(ValueError, match="not a HashMF checkpoint"):
        LLMTrainer(config, model)._stage0(train, valid)


@pytest.mark.parametrize("name", ["BinLLM-image", "ZeroShot"])
def test_cli_labels_results_with_the_paper_name(name, tiny_root, tmp_path):
    from recbole_histllm.quick_start import main

    out = tmp_path / "out"
    args = [f"--{k}={v}" for k, v in FAST.items() if v is not None]
    assert main([f"--model={name}", "--dataset=tiny", f"--data_path={tiny_root}", f"--output_dir={out}",
                 "--valid_rows=~", *args]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["model"] == result["config"]["model"] == name
    assert result["precision"] in ("float32", "bf16 autocast")  # what the LLM computed in, on this CPU
    assert {"auc", "uauc"} <= set(result["test_result"]) and result["test_rows"] > 0
    assert (out / f"{name}-best.pth").is_file()
    if name == "BinLLM-image":
        assert result["stages"]["stage0"]["model"] == "HashMF" and (out / "HashMF-stage0.pth").is_file()
        assert (out / f"{name}-stage2.pth").is_file() and result["best_valid_result"]
    else:
        assert set(result["stages"]) == {"no_training"} and result["best_epoch"] is None
