"""Config values are checked before any work: one line per bad key, exit 2 (recbole_histllm.config_schema);
the converters' and feature tools' options likewise (dataset_converters.cli)."""

from __future__ import annotations

import functools

import pytest
import yaml

from recbole_histllm import quick_start
from recbole_histllm.config import Config
from recbole_histllm.config_schema import (
    KEYS_DOC,
    SCHEMA,
    STAGE_RULES,
    Rule,
    check_values,
    keys_document,
    markdown_table,
    rule_for,
)
from recbole_histllm.utils import PROPERTIES_DIR

MODELS = ("HistLLM", "BinLLM", "ZeroShot", "TALLRec", "MF", "HashMF", "LGMRec", "MG", "VBPR", "BM3")
# RecBole's structural keys, passed to RecBole as they are (field names, file layout, split, metrics)
UNCHECKED = {"field_separator", "seq_separator", "USER_ID_FIELD", "ITEM_ID_FIELD", "LABEL_FIELD", "TIME_FIELD",
             "RATING_FIELD", "threshold", "load_col", "alias_of_item_id", "normalize_all",
             "filter_inter_by_user_or_item", "eval_args", "train_neg_sample_args", "metrics", "valid_metric",
             "HISTORY_FIELD", "topk"}  # topk: RecBole's Config checks it itself (one line, exit 2)


@functools.cache
def known_keys(model: str) -> frozenset[str]:
    return frozenset(Config(model=model, dataset="ml-100k").known_keys())


def model_for(key: str) -> str:
    return next(m for m in MODELS if key in known_keys(m))


def bad_values(rule: Rule) -> list[str]:
    """A value of the wrong type, and one out of range where the rule has a range."""
    wrong = {"int": "abc", "float": "abc", "bool": "maybe", "choice": "nonsense", "str": "", "str_list": "",
             "path": "", "llm_path": "/no/such/model"}[rule.kind]
    if rule.kind == "path":
        wrong = __file__ if rule.exists == "folder" else "/no/such/path"  # a file where a folder goes
    values = [wrong]
    if rule.kind in ("int", "float") and rule.low is not None:
        values.append(str(rule.low if rule.low_open else rule.low - 1))
    if rule.kind in ("int", "float") and rule.high is not None:
        values.append(str(rule.high if rule.high_open else rule.high + 1))
    if rule.kind == "int":
        values.append(f"{(rule.low or 0) + 1.5}")  # a float with a fraction
    return values


def cli(capsys, *args: str) -> tuple[int, list[str], str]:
    code = quick_start.main(["--dataset=ml-100k", *args])
    out = capsys.readouterr()
    return code, out.err.splitlines(), out.out


@pytest.fixture
def no_data(monkeypatch):
    """Fail loudly if a run got past the checks (data loading is the first real work)."""

    def refuse(*_, **__):
        raise AssertionError("the run went past the config checks")

    monkeypatch.setattr(quick_start, "check_dataset", refuse)


ALL_KEYS = [*SCHEMA, *(f"stage2_{name}" for name in STAGE_RULES)]


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_key_rejects_wrong_types_and_ranges_in_one_line(key, capsys, no_data):
    rule, model = rule_for(key), model_for(key)
    for value in bad_values(rule):
        code, err, out = cli(capsys, f"--model={model}", f"--{key}={value}")
        assert code == 2, (key, value)
        assert len(err) == 1 and err[0].startswith(f"error: --{key}=") and "must be" in err[0], (key, value, err)
        assert out == ""


def test_every_property_key_has_a_rule_and_every_default_passes():
    keys = set()
    for path in PROPERTIES_DIR.rglob("*.yaml"):
        keys |= set(yaml.safe_load(path.read_text()) or {})
    assert sorted(k for k in keys - UNCHECKED if rule_for(k) is None) == []
    for model in MODELS:
        for dataset in ("ml-100k", "movie", "mind", "netflix"):
            config = Config(model=model, dataset=dataset)
            fixed, errors = check_values(config.final_config_dict)
            assert errors == [], (model, dataset, errors)


def test_the_issue_table_exits_2_with_one_line(capsys, no_data):
    cases = {
        ("--model=HistLLM", "--llm_path=/no/such/model"): "--llm_path=/no/such/model: no such folder",
        ("--model=HistLLM", "--mf_checkpoint=/no/such.pth"): "--mf_checkpoint=/no/such.pth: no such file",
        ("--model=HistLLM", "--history_encoder=lstm"): "must be one of gru, transformer, none",
        ("--model=MF", "--epochs=abc"): "--epochs=abc: must be an integer >= 1",
        ("--model=HistLLM", "--stage1_batch_size=0"):
            "--stage1_batch_size=0: must be an integer >= 1 (properties/model/LLMRecommender.yaml sets 8)",
        ("--model=MF", "--test_rows=-5"): "--test_rows=-5: must be an integer >= 1 or ~",
        ("--model=VBPR", "--mirror_gradient=maybe"): "--mirror_gradient=maybe: must be true or false",
    }
    for args, expected in cases.items():
        code, err, _ = cli(capsys, *args)
        assert code == 2 and len(err) == 1 and expected in err[0], (args, err)


def test_all_bad_values_are_reported_at_once(capsys, no_data):
    code, err, _ = cli(capsys, "--model=HistLLM", "--stage1_batch_size=0", "--bf16=maybe", "--warmup_ratio=1.5",
                       "--lr_schedule=linear")
    assert code == 2 and len(err) == 4
    assert {line.split("=")[0] for line in err} == {"error: --stage1_batch_size", "error: --bf16",
                                                    "error: --warmup_ratio", "error: --lr_schedule"}


def test_values_from_config_files_name_the_file(tmp_path, capsys, no_data):
    path = tmp_path / "mine.yaml"
    path.write_text("stage2_train_rows: -3\n")
    code, err, _ = cli(capsys, "--model=HistLLM", f"--config_files={path}")
    assert code == 2 and err == [f"error: stage2_train_rows: -3 (in {path}): must be an integer >= 1 or ~ "
                                 "(properties/model/LLMRecommender.yaml sets 1024)"]


def test_debug_keeps_the_traceback(no_data):
    from recbole_histllm.utils import UsageError

    with pytest.raises(UsageError, match="stage1_batch_size"):
        quick_start.main(["--model=HistLLM", "--dataset=ml-100k", "--stage1_batch_size=0", "--debug"])


def test_accepted_values_are_normalised(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mf.pth").write_bytes(b"x")
    fixed, errors = check_values({"bf16": "false", "stage1_train_rows": 8.0, "mf_checkpoint": "~/mf.pth",
                                  "lora_target_modules": "q_proj,v_proj", "ddp_backend": "none",
                                  "history_encoder": "GRU", "valid_rows": "~", "llm_path": "random:tiny"})
    assert errors == []
    assert fixed == {"bf16": False, "stage1_train_rows": 8, "mf_checkpoint": str(tmp_path / "mf.pth"),
                     "lora_target_modules": ["q_proj", "v_proj"], "ddp_backend": None, "history_encoder": "gru",
                     "valid_rows": None, "llm_path": "random:tiny"}
    assert isinstance(fixed["stage1_train_rows"], int)


def test_cross_key_rules():
    _, errors = check_values({"binllm_bits": 12, "binllm_code_format": "dotted"})
    assert errors == ["--binllm_bits=12: must be a multiple of 8 with binllm_code_format: dotted"]


def test_quantization_without_cuda_stops_before_any_data(capsys, no_data):
    code, err, _ = cli(capsys, "--model=HistLLM", "--load_in_8bit=true")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: config key `load_in_8bit` needs a CUDA GPU")


def test_markdown_table_lists_every_key_and_the_doc_is_current():
    table = markdown_table()
    assert all(f"| `{key}` |" in table for key in SCHEMA) and "| `stage{k}_epochs` |" in table
    doc = PROPERTIES_DIR.parent / KEYS_DOC
    assert doc.read_text() == keys_document(), f"regenerate: python -m recbole_histllm.config_schema > {KEYS_DOC}"


# ---- the converters' and feature tools' options ----------------------------------------------------------
@pytest.mark.parametrize("module,args,expected", [
    ("dataset_converters.movie", ["--raw", "{tmp}", "--output_dir", "{tmp}/o", "--user_core=-1"],
     "error: --user_core: must be an integer >= 0, got -1"),
    ("dataset_converters.movie", ["--raw", "/no/dir", "--out", "{tmp}/o"], "error: --raw: no such folder /no/dir"),
    ("dataset_converters.mind", ["--raw", "{tmp}", "--out", "{tmp}/o", "--images=/no/dir"],
     "error: --images: no such folder /no/dir"),
    ("dataset_converters.netflix", ["--raw", "{tmp}", "--out", "{tmp}/o", "--sample_users=0"],
     "error: --sample_users: must be an integer >= 1, got 0"),
    ("dataset_converters.movie", ["--raw", "{tmp}", "--out", "{tmp}/o"],
     "error: none of ratings_small.csv, ratings.csv found in {tmp}"),
    ("recbole_histllm.features.knowledge", ["--dataset=x", "--source=nonsense"],
     "error: --source: invalid choice: 'nonsense'"),
    ("recbole_histllm.features.knowledge", ["--dataset=x", "--data_path={tmp}"],
     "error: no side file {tmp}/x/x.text (run the dataset converter first)"),
    ("recbole_histllm.features.text", ["--dataset=x", "--batch_size=0"],
     "error: --batch_size: must be an integer >= 1, got 0"),
    ("recbole_histllm.features.visual", ["--dataset=x", "--images=/no/dir"],
     "error: --images: no such folder /no/dir"),
])
def test_tool_options_exit_2_with_one_line(module, args, expected, tmp_path, capsys):
    import importlib

    from dataset_converters.cli import run_main

    main = importlib.import_module(module).main
    code = run_main(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(expected.replace("{tmp}", str(tmp_path))), err


def test_table_runner_checks_the_keys_it_would_pass_to_every_run(tmp_path, capsys):
    from recbole_histllm import table

    code = table.main(["--dataset=ml-100k", "--models=MF,Big=MF:embedding_size=0", "--stage1_batch_size=0",
                       f"--output_dir={tmp_path}", "--dry_run"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err == ["error: --stage1_batch_size=0: must be an integer >= 1",
                                 "error: --embedding_size=0: must be an integer >= 1"]
    assert not any(tmp_path.iterdir())
