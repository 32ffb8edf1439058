"""RecBole Config that reads this plugin's properties and looks models up here first.

Priority, later wins: RecBole's own defaults < ``properties/overall.yaml`` <
``properties/dataset/<dataset>.yaml`` < ``properties/model/<model>.yaml`` < user YAML
files < ``config_dict`` (the command-line keys). RecBole's own reading of ``sys.argv`` is
switched off: the CLI parses the command line and passes the keys as ``config_dict``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import argument_list

from recbole_histllm import distributed
from recbole_histllm.utils import PROPERTIES_DIR, UsageError, get_model, model_label

# Keys that are not RecBole's but that the plugin's CLI and pipeline read. The run-using commands' keys
# (run_io, predict, rerank) have no property default: a new default would make every finished run's
# recorded config differ from a fresh one, and the table runner would stop reusing them.
PLUGIN_KEYS = {"output_dir", "config_files", "debug", "model", "dataset",
               "eval_only", "run", "mf_run", "rerank_k", "rerank_users"}


def read_yaml(path: str | os.PathLike, loader=yaml.FullLoader) -> dict:
    """Load one YAML property file; syntax errors become a UsageError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle.read(), Loader=loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def property_files(model: str, dataset: str, model_class: type | None = None) -> list[Path]:
    """The plugin property files that exist for this model and dataset, lowest priority first.

    Model files follow the class hierarchy, base first: ``LLMRecommender.yaml`` holds what every
    LLM model shares, ``HistLLM.yaml`` only what is HistLLM's own.
    """
    names = [cls.__name__ for cls in reversed(model_class.__mro__)] if model_class is not None else []
    names = [name for name in names if name != model] + [model]
    candidates = [
        PROPERTIES_DIR / "overall.yaml",
        PROPERTIES_DIR / "dataset" / f"{dataset}.yaml",
        *(PROPERTIES_DIR / "model" / f"{name}.yaml" for name in names),
    ]
    return [path for path in candidates if path.is_file()]


class Config(RecBoleConfig):
    """RecBole's Config with the plugin's property files and model lookup."""

    def _load_cmd_line(self) -> dict:
        return {}

    def _load_config_files(self, file_list):
        file_config = {}
        self.key_origin = {}  # user-given key -> "cmd" or the YAML file it came from (error messages)
        for file in file_list or []:
            values = read_yaml(file, self.yaml_loader)
            file_config.update(values)
            self.key_origin.update(dict.fromkeys(values, str(file)))
        return file_config

    def _load_variable_config_dict(self, config_dict):
        values = super()._load_variable_config_dict(config_dict)
        self.key_origin = {**getattr(self, "key_origin", {}), **dict.fromkeys(values or {}, "cmd")}
        return values

    def _get_model_and_dataset(self, model, dataset):
        """RecBole's, with the plugin's model lookup; ``config["model"]`` is the user-facing name
        (:func:`~recbole_histllm.utils.model_label`: ``TALLRec-image`` for the class ``TALLRec_image``)."""
        if isinstance(model, str):
            model = get_model(model)
        _, model_class, dataset = super()._get_model_and_dataset(model, dataset)
        return model_label(model_class), model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.plugin_property_files = property_files(model, dataset, model_class)
        for path in self.plugin_property_files:
            values = read_yaml(path, self.yaml_loader)
            self.internal_config_dict.update(values)
            if path.parent.name == "dataset":
                self.parameters["Dataset"] += [k for k in values if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
        data_root = self.final_config_dict.get("data_path", "dataset/")
        super()._set_default_parameters()
        # RecBole points ml-100k at its bundled raw copy; the plugin's CTR version of it
        # is built into the data folder like every other dataset.
        if self.dataset == "ml-100k":
            self.final_config_dict["data_path"] = os.path.join(data_root, self.dataset)

    def _init_device(self):
        """RecBole's device setup, or, under ``torchrun --nproc_per_node=N`` (N > 1), this plugin's:
        join the process group (``ddp_backend``; nccl on GPUs, gloo on CPU), one GPU per local rank
        (``gpu_id`` is applied only when given: its default would hide every GPU but the first),
        logging and progress bars on rank 0 only. ``single_spec`` stays True so RecBole's own DDP
        machinery (padded samplers, DDP wrapper, averaged metrics) stays off: the LLM trainer shards and
        gathers itself (:mod:`recbole_histllm.distributed`)."""
        if distributed.launched_world_size() <= 1:
            return super()._init_device()
        if not getattr(self.model_class, "supports_torchrun", False):  # declared by LLMRecommender
            raise UsageError(f"torchrun (distributed mode) runs the LLM models only; run {self.model} "
                             "as a single process: python run_recbole_histllm.py ...")
        config = self.final_config_dict
        if "gpu_id" in self.external_config_dict:
            gpu_id = config["gpu_id"]
            config["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
            os.environ["CUDA_VISIBLE_DEVICES"] = config["gpu_id"]
        rank = distributed.local_rank()
        device = torch.device("cpu")
        if config.get("use_gpu", True) and torch.cuda.is_available():
            if rank >= torch.cuda.device_count():
                raise UsageError(f"torchrun local rank {rank} has no GPU ({torch.cuda.device_count()} visible): "
                                 "lower --nproc_per_node")
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        distributed.init(device, config.get("ddp_backend"))
        config.update(device=device, local_rank=rank, world_size=distributed.world_size(),
                      nproc=distributed.world_size(), single_spec=True)
        if not distributed.is_main():
            config.update(state="error", show_progress=False, verbose=False)

    def known_keys(self) -> set[str]:
        """Every key a property file or RecBole itself defines, plus the plugin's own."""
        keys = set(self.internal_config_dict) | PLUGIN_KEYS
        for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
            keys |= set(getattr(argument_list, name))
        return keys

    def unknown_keys(self) -> list[str]:
        """User-given keys (files and command line) that nothing defines: likely typos."""
        return sorted(set(self.external_config_dict) - self.known_keys())
