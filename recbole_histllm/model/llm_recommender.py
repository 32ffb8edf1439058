"""The RecBole side of the shared LLM plumbing: one base class for HistLLM and every LLM baseline.

A subclass only chooses its prompts per training stage (:meth:`LLMRecommender.build_templates`),
what trains in each stage (``stage_trainable``), its collaborative model (stage 0,
:meth:`LLMRecommender.collaborative_model`) and its switches; everything else lives here once:
the backbone with LoRA, the item side tables (titles, KE descriptions, image embeddings, MF
embeddings), turning a RecBole batch into prompt samples, filling every embedding slot a template
can hold, and P(Yes) scoring (Eq. 13-14).

Slots a template may use, and what fills them:

==========================  ====================================================
``Image``, ``TargetItemImage``   VMA: mapping of the target item's image (Eq. 3)
``Item_iImage``                  VMA: mapping of each history item's image
``UserID``                       CIA: mapping of the MF user embedding (Eq. 11)
``ItemID``, ``TargetItemID``     CIA: mapping of the MF item embedding (Eq. 12)
``HistoryInteractions``          UHEM: the compressed history token (Eq. 8)
==========================  ====================================================
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType
from torch import nn

from dataset_converters.core import read_text_table
from recbole_histllm.llm import (
    PrefixKV,
    PromptBuilder,
    PromptSample,
    PromptTemplate,
    QuantizationUnavailableError,
    apply_lora,
    attention_kernel,
    autocast,
    bf16_supported,
    bypass_adapters,
    compute_prefix_kv,
    enable_gradient_checkpointing,
    encode_item_texts,
    for_domain,
    load_backbone,
    load_tokenizer,
    prefix_cache_supported,
    quantization_config,
    random_backbone,
    score_batch,
    set_lora_trainable,
    yes_no_bce,
    yes_probability,
)
from recbole_histllm.llm.prompt import HISTORY_LIST, ITEM_PREFIX
from recbole_histllm.model.mf import MF, load_mf_embeddings
from recbole_histllm.model.modules import CIA, UHEM, VMA, token_embedding_stats
from recbole_histllm.utils import model_label

logger = logging.getLogger(__name__)

IMAGE_SLOTS = ("Image", "TargetItemImage", "Item_iImage")
USER_SLOTS = ("UserID",)
ITEM_SLOTS = ("ItemID", "TargetItemID")
HISTORY_SLOT = "HistoryInteractions"
LORA = "lora"


@dataclass(frozen=True)
class CollaborativeModel:
    """What the trainer's stage 0 fits for a model: the RecBole model class ``model`` (MF, HashMF) trained on
    the train split, unless config key ``checkpoint_key`` names a finished one."""

    model: type
    checkpoint_key: str

    @property
    def name(self) -> str:
        return self.model.__name__


class ItemSide:
    """Per-item text (titles, KE descriptions) by internal item id, read from ``<name>.text``."""

    def __init__(self, dataset, use_knowledge: bool = True) -> None:
        field = dataset.iid_field
        tokens = dataset.field2id_token[field]
        self.titles = [str(t) for t in tokens]
        self.descriptions = list(self.titles)
        path = Path(dataset.config["data_path"]) / f"{dataset.dataset_name}.text"
        if not path.is_file():
            logger.warning(f"{path} not found: item ids stand in for titles")
            self.missing_text = len(tokens) - 1
            self.missing_description = len(tokens) - 1
            return
        table = read_text_table(path)
        token2id = dataset.field2token_id[field]
        has_desc = "description" in table.columns
        seen, with_desc = set(), 0
        for row in table.itertuples(index=False):
            idx = token2id.get(row.item_id)
            if idx is None:
                continue
            seen.add(idx)
            title = row.title.strip() or row.item_id
            self.titles[idx] = title
            desc = row.description.strip() if has_desc else ""
            if desc and use_knowledge:
                self.descriptions[idx] = desc
                with_desc += 1
            else:
                self.descriptions[idx] = title
        self.missing_text = len(tokens) - 1 - len(seen)
        self.missing_description = len(tokens) - 1 - with_desc
        if self.missing_text:
            logger.warning(f"{path}: {self.missing_text} items have no row; their ids stand in for titles")
        if use_knowledge and self.missing_description:
            logger.warning(
                f"{path}: {self.missing_description} of {len(tokens) - 1} items have no KE description; "
                "their titles are used (run python -m recbole_histllm.features.knowledge)"
            )


def last_items(history: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``n`` items (oldest first) of right-padded id sequences: ``(ids (B, n), mask (B, n))``."""
    lengths = (history > 0).sum(1)
    start = (lengths - n).clamp(min=0)
    idx = start[:, None] + torch.arange(n, device=history.device)[None, :]
    mask = idx < lengths[:, None]
    ids = history.gather(1, idx.clamp(max=max(history.shape[1] - 1, 0))) * mask
    return ids, mask


def float32_advice(config: Mapping[str, Any]) -> str:
    """What float32 (a CPU without native bf16) did to this run's kind of config on ml-100k, for the warning.

    Without ``token_moments`` float32 on an AVX2 CPU trained the CPU profile 0.037 AUC below bf16 at the default
    stage-2 learning rate and like bf16 at half of it; with it (HistLLM's default) like bf16 at the default
    (README, 'Precision and the CPU')."""
    if config["token_moments"]:
        return ("with token_moments (HistLLM's default) float32 trained HistLLM there like bf16 at the default "
                "learning rate (ml-100k, seeds 2020-2022; other models not measured with it; README, 'Precision "
                "and the CPU')")
    return ("without token_moments float32 on an AVX2 CPU trained the CPU profile worse than bf16 at the default "
            "stage2_learning_rate and like bf16 at --stage2_learning_rate=5e-4 (HistLLM, ml-100k; README, "
            "'Precision and the CPU')")


class LLMRecommender(AbstractRecommender):
    """Base of every LLM recommender: a prompt per stage over one shared backbone.

    By default (HistLLM, CoLLM) stage 1 trains LoRA (Eq. 15-16) and stage 2 freezes it and trains
    the mapping modules and UHEM (Eq. 17). A subclass declares its own split in ``stage_trainable``
    (stage -> parameter groups: ``"lora"`` or a name of :meth:`trainable_modules`); stages with a
    template but nothing to train are not run (zero-shot). ``visual_variant`` fixes ``use_visual``
    for model families whose image variant is a separate model name (``TALLRec``/``TALLRec-image``).
    """

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    stage_trainable: ClassVar[dict[int, tuple[str, ...]]] = {1: (LORA,), 2: ("vma", "cia", "uhem")}
    visual_variant: ClassVar[bool | None] = None
    trainer_class: ClassVar[str] = "LLMTrainer"  # recbole_histllm.trainer: the staged trainer
    supports_torchrun: ClassVar[bool] = True  # the LLM trainer shards and gathers itself (config._init_device)

    def __init__(self, config, dataset) -> None:
        super().__init__()
        self.config = config
        self.device = config["device"]
        self.USER_ID, self.ITEM_ID = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.LABEL = config["LABEL_FIELD"]
        self.HISTORY = config["HISTORY_FIELD"] or "history"
        self.history_len = int(config["history_len"])
        self.n_users, self.n_items = dataset.num(self.USER_ID), dataset.num(self.ITEM_ID)
        self.bf16 = bool(config["bf16"])  # asked for; :func:`autocast` applies it where it pays off (``precision``)
        if self.bf16 and not bf16_supported(self.device):
            cpu = torch.backends.cpu.get_cpu_capability()
            why = ("this GPU has no bf16" if torch.device(self.device).type == "cuda" else
                   f"this CPU has no native bf16 (torch's CPU capability: {cpu}; no AVX-512 or AMX), where emulated"
                   " bf16 autocast measured 5-22x slower than float32")
            logger.warning(f"bf16: True, but {why}: the LLM runs in float32; {float32_advice(config)}")

        self.llm, self.tokenizer = self._load_llm(config)
        self.bypass_zero_lora = True  # backbone_speedups; the speed benchmark switches it off to compare
        self.hidden = self.llm.get_input_embeddings().embedding_dim
        self.items = ItemSide(dataset, use_knowledge=bool(config["use_knowledge"]))
        image_table = self._image_table(dataset)
        want_visual = self._visual_switch(config)
        self.use_visual = want_visual and image_table is not None
        if want_visual and image_table is None:
            logger.warning(f"{dataset.dataset_name} has no image features: visual slots (VMA) are switched off"
                           f" ({type(self).__name__} runs without image tokens)")
        self.use_collaborative = bool(config["use_collaborative"])

        self.templates = self.build_templates()
        self.builders = {stage: self.make_builder(template) for stage, template in self.templates.items()}
        slots = {name for t in self.templates.values() for name in t.slots}
        self.vma = self.cia = self.uhem = None
        # token_scale: standardised inputs, outputs at the token-embedding RMS, or with token_moments at the
        # table's per-dimension mean and std (beyond the paper's text)
        embedding = self.llm.get_input_embeddings()
        rms = token_embedding_stats(embedding, bool(config["token_moments"])) if config["token_scale"] else None
        mapping = {"hidden": config["mapping_hidden"], "layers": config["mapping_layers"], "token_rms": rms}
        if self.use_visual and (slots & set(IMAGE_SLOTS) or HISTORY_SLOT in slots):
            self.vma = VMA(image_table, self.hidden, **mapping)
        if slots & set(USER_SLOTS + ITEM_SLOTS):
            self.cia = CIA(self.n_users, self.n_items, int(config["mf_embedding_size"]), self.hidden, **mapping,
                           interaction=bool(config["cia_interaction"]), residual=bool(config["cia_residual"]))
        if HISTORY_SLOT in slots:
            self.uhem = UHEM(self.hidden, config["history_encoder"], config["uhem_layers"], config["uhem_heads"],
                             token_rms=rms)
            self.uhem.set_descriptions(*encode_item_texts(self.tokenizer, self.items.descriptions,
                                                          int(config["desc_max_tokens"])))
        groups = {g for stage in self.templates for g in self.stage_trainable.get(stage, ())}
        unknown = groups - {LORA} - set(self.trainable_modules())
        if unknown:
            raise ValueError(f"{type(self).__name__}.stage_trainable names unknown groups {sorted(unknown)}")
        self.stage = max(self.templates)
        self.set_stage(self.stage)

    # ---- construction hooks ---------------------------------------------------------------
    @property
    def precision(self) -> str:
        """What the LLM's body computes in: ``"bf16 autocast"`` where ``bf16`` asks for it and the device runs it
        natively, else ``"float32"`` (the Yes/No readout is float32 either way)."""
        return "bf16 autocast" if self.bf16 and bf16_supported(self.device) else "float32"

    def build_templates(self) -> dict[int, PromptTemplate]:
        """Prompt per training stage (1: LoRA, 2: mapping modules / UHEM). Subclasses override."""
        raise NotImplementedError

    def make_builder(self, template: PromptTemplate) -> PromptBuilder:
        """The renderer of one stage's prompt (``max_prompt_tokens``, ``use_chat_template``)."""
        return PromptBuilder(self.tokenizer, template, max_prompt_tokens=self.config["max_prompt_tokens"],
                             use_chat_template=bool(self.config["use_chat_template"]))

    def prompt(self, template: PromptTemplate) -> PromptTemplate:
        """``template`` in the dataset's wording (``prompt_domain``: movie or news)."""
        return for_domain(template, self.config["prompt_domain"] or "movie")

    @classmethod
    def uses_lora(cls) -> bool:
        """Whether any stage trains LoRA (models that never do, e.g. zero-shot, get no adapters)."""
        return any(LORA in groups for groups in cls.stage_trainable.values())

    def _visual_switch(self, config) -> bool:
        """``use_visual``, unless the class fixes it (``visual_variant``): then a contradicting user
        value is reported and ignored, so a result labelled ``TALLRec`` never holds image tokens."""
        if self.visual_variant is None:
            return bool(config["use_visual"])
        given = getattr(config, "external_config_dict", {}).get("use_visual")
        if given is not None and bool(given) != self.visual_variant:
            name = model_label(type(self))
            other = f"{name}-image" if self.visual_variant is False else name.removesuffix("-image")
            logger.warning(f"{name} ignores use_visual={given}: run --model={other} for the other variant")
        return self.visual_variant

    def _load_llm(self, config):
        """Backbone (``llm_path``, ``llm_dtype``, ``load_in_8bit`` / ``load_in_4bit``), LoRA, and
        ``gradient_checkpointing``."""
        path = str(config["llm_path"] or "")
        quantization = quantization_config(bool(config["load_in_8bit"]), bool(config["load_in_4bit"]),
                                           config["device"])
        if path.startswith("random:"):  # a real backbone's shape, random weights (tests, speed runs)
            if quantization is not None:
                raise QuantizationUnavailableError(
                    f"config keys `load_in_8bit` / `load_in_4bit` need a pretrained `llm_path`, not {path}")
            tokenizer = load_tokenizer(None, config["llm_cache_dir"])
            model = random_backbone(path.split(":", 1)[1], tokenizer, config["llm_dtype"], config["device"],
                                    seed=int(config["seed"]))
        else:
            model, tokenizer = load_backbone(config["llm_path"], config["llm_cache_dir"], dtype=config["llm_dtype"],
                                             device=config["device"] if quantization is not None else None,
                                             quantization=quantization)
        if self.uses_lora():
            model = apply_lora(model, config["lora_r"], config["lora_alpha"], config["lora_dropout"],
                               config["lora_target_modules"])
        else:  # no adapters: the backbone stays frozen (peft freezes it otherwise)
            model.requires_grad_(False)
        if config["gradient_checkpointing"]:
            enable_gradient_checkpointing(model)
        return model, tokenizer

    @staticmethod
    def _image_table(dataset) -> torch.Tensor | None:
        if "image" not in dataset.field2type:
            return None
        feature = dataset.get_item_feature()
        table = feature["image"].float()
        if table.dim() != 2 or float(table.abs().sum()) == 0.0:
            return None
        return table

    # ---- stages -----------------------------------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module | None]:
        """Modules ``stage_trainable`` may name (VMA phi, CIA omega, UHEM beta; None where absent)."""
        return {"vma": self.vma, "cia": self.cia, "uhem": self.uhem}

    def training_stages(self) -> list[int]:
        """Stages the trainer runs, in order: those with a template and something to train."""
        return [s for s in sorted(self.templates) if self.stage_trainable.get(s)]

    def set_stage(self, stage: int) -> None:
        """Switch prompt and trainable parameters to ``stage`` (``stage_trainable[stage]``)."""
        if stage not in self.templates:
            raise ValueError(f"{type(self).__name__} has no stage {stage} (stages: {sorted(self.templates)})")
        self.stage = stage
        self.invalidate_prefix_cache()
        groups = self.stage_trainable.get(stage, ())
        set_lora_trainable(self.llm, LORA in groups)
        for name, module in self.trainable_modules().items():
            if module is not None:
                module.requires_grad_(name in groups)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen backbone: LoRA, mapping modules, UHEM, MF tables."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("llm.") or "lora_" in k}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.checkpoint_state()) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}")
        self.load_state_dict(state, strict=False)
        self.invalidate_prefix_cache()

    def collaborative_model(self) -> CollaborativeModel | None:
        """The model stage 0 trains for this one: MF (CoLLM, HistLLM's CIA) when a prompt has
        collaborative slots, else None (no stage 0). BinLLM declares its hashing model."""
        return CollaborativeModel(MF, "mf_checkpoint") if self.cia is not None else None

    def load_collaborative(self, checkpoint: str | Path, dataset) -> None:
        """Take what this model needs from a finished stage-0 checkpoint (MF: the embeddings)."""
        self.set_collaborative_embeddings(*load_mf_embeddings(checkpoint, dataset))

    def set_collaborative_embeddings(self, user: torch.Tensor, item: torch.Tensor) -> None:
        """Load MF embeddings (Eq. 9-10); rows follow this dataset's internal ids."""
        if self.cia is not None:
            self.cia.load(user, item)

    # ---- prompts ----------------------------------------------------------------------------
    def history(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``history_len`` liked items of each row (ids, mask), oldest first."""
        return last_items(interaction[self.HISTORY], self.history_len)

    def samples(self, interaction, hist_ids: torch.Tensor, hist_mask: torch.Tensor) -> list[PromptSample]:
        """Text fields of every row: target title/description and per history item title/description."""
        titles, descs = self.items.titles, self.items.descriptions
        items = interaction[self.ITEM_ID].tolist()
        rows = []
        for item, ids, mask in zip(items, hist_ids.tolist(), hist_mask.tolist()):
            history = [{"Title": titles[i], "Desc": descs[i]} for i, m in zip(ids, mask) if m]
            fields = {"TargetItemTitle": titles[item], "TargetItemDesc": descs[item], "ItemDescription": descs[item]}
            rows.append(PromptSample(fields=fields, history=history))
        return rows

    def slot_vectors(self, names, interaction, hist_ids, hist_mask) -> dict[str, torch.Tensor]:
        """Embeddings for every slot ``names`` of the current prompt."""
        vectors = {}
        item = interaction[self.ITEM_ID]
        for name in names:
            if name in ("Image", "TargetItemImage"):
                vectors[name] = self.vma.tokens(item)
            elif name == "Item_iImage":
                vectors[name] = self.vma.tokens(hist_ids)
            elif name in USER_SLOTS:
                vectors[name] = self.cia.user_tokens(interaction[self.USER_ID])
            elif name in ITEM_SLOTS:
                vectors[name] = self.cia.item_tokens(item, interaction[self.USER_ID])
            elif name == HISTORY_SLOT:
                images = self.vma.tokens(hist_ids) if self.use_visual else None
                vectors[name] = self.uhem.encode(hist_ids, hist_mask, self.llm.get_input_embeddings(), images)
            else:
                raise KeyError(f"{type(self).__name__} cannot fill prompt slot <{name}>")
        return vectors

    # ---- RecBole interface ------------------------------------------------------------------
    def forward(self, interaction) -> torch.Tensor:
        """Yes/No logits ``(B, 2)`` at the answer position (Eq. 13); with ``cia_residual``, in a prompt with
        collaborative slots, MF's weighted logit is added to the Yes logit (:meth:`CIA.mf_logit`)."""
        hist_ids, hist_mask = self.history(interaction)
        builder = self.builders[self.stage]
        batch = builder(self.samples(interaction, hist_ids, hist_mask)).to(self.device)
        names = [name for name, index in batch.slots.items() if len(index)]
        with autocast(self.device, enabled=self.bf16), self.backbone_speedups():
            vectors = self.slot_vectors(names, interaction, hist_ids, hist_mask)
            prefix = self.prefix_states(builder, batch)
            logits = score_batch(self.llm, batch, builder.answer_tokens, vectors, prefix=prefix)
        residual = (self.cia.mf_logit(interaction[self.USER_ID], interaction[self.ITEM_ID])
                    if self.cia is not None and set(names) & set(USER_SLOTS + ITEM_SLOTS) else None)
        if residual is None:
            return logits
        logits = logits.float()
        return torch.stack([logits[:, 0] + residual, logits[:, 1]], dim=1)

    def backbone_speedups(self) -> contextlib.ExitStack:
        """Contexts that make the backbone cheaper: LoRA adapters that add exactly zero are bypassed (the same outputs;
        :func:`~recbole_histllm.llm.bypass_adapters`, unless ``bypass_zero_lora`` is False); with
        ``cpu_train_attention: math`` (or ``eager``), CPU training steps run the math SDPA kernel (or transformers'
        eager attention; :func:`~recbole_histllm.llm.attention_kernel`: same attention, other bf16 rounding).
        Neither under ``gradient_checkpointing``: its backward recomputes the forward outside these contexts."""
        stack = contextlib.ExitStack()
        if self.config["gradient_checkpointing"]:
            return stack
        stack.enter_context(attention_kernel(self.device, self.config["cpu_train_attention"], self.llm))
        if self.bypass_zero_lora:
            stack.enter_context(bypass_adapters(self.llm))
        return stack

    def calculate_loss(self, interaction) -> torch.Tensor:
        """BCE between the label and P(Yes) (Eq. 14)."""
        return yes_no_bce(self.forward(interaction), interaction[self.LABEL])

    def predict(self, interaction) -> torch.Tensor:
        return yes_probability(self.forward(interaction))

    def prompt_lengths(self, interaction) -> np.ndarray:
        """LLM input tokens per row in the current stage (for the efficiency benchmark)."""
        hist_ids, hist_mask = self.history(interaction)
        batch = self.builders[self.stage](self.samples(interaction, hist_ids, hist_mask))
        return batch.lengths.numpy()

    # ---- speed: prefix key/value cache (config key prefix_cache) ------------------------------
    def _backbone_version(self) -> int:
        """Changes whenever a backbone weight (LoRA included) is modified in place (optimiser steps,
        ``load_state_dict``): a cached prefix is never read against other weights."""
        return sum(p._version for p in self.llm.parameters())

    def invalidate_prefix_cache(self) -> None:
        """Drop the prefix key/value states cached for frozen-backbone scoring."""
        self.__dict__["_prefix_cache"] = {}

    def train(self, mode: bool = True):
        """``nn.Module.train``; a switch while LoRA is trainable drops the cached prefix states."""
        llm = self._modules.get("llm")
        if llm is not None and mode != self.training and any(p.requires_grad for p in llm.parameters()):
            self.invalidate_prefix_cache()
        return super().train(mode)

    def prefix_states(self, builder: PromptBuilder, batch) -> PrefixKV | None:
        """Key/value states of the prompt's fixed prefix (``PromptBuilder.prefix_ids``: the question
        text before the first row-dependent token) when ``prefix_cache`` is on, else None (plain path).

        No trainable backbone weight in this stage (stage 2: LoRA frozen; or eval mode under no_grad):
        computed once, in eval mode (no LoRA dropout), and cached on the model until the stage, the
        train/eval mode with LoRA trainable, or any backbone weight changes. LoRA training (stage 1):
        computed per batch at batch size 1 with gradients, expanded over the batch by
        :func:`~recbole_histllm.llm.score_batch`. Unsupported backbones (sliding window, activation
        checkpointing in training, no Cache API) and batches without a shared prefix take the plain path.
        """
        if not self.config["prefix_cache"] or not getattr(batch, "prefix_len", 0):
            return None
        if not prefix_cache_supported(self.llm):
            return None
        ids = builder.prefix_ids[: batch.prefix_len]
        trainable = any(p.requires_grad for p in self.llm.parameters())
        if trainable and (self.training or torch.is_grad_enabled()):
            return compute_prefix_kv(self.llm, ids)
        device = self.llm.get_input_embeddings().weight.device
        cast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        version = self._backbone_version()
        key = (tuple(ids), str(device), cast, version)
        cache = self.__dict__.setdefault("_prefix_cache", {})
        if key not in cache:
            if any(k[3] != version for k in cache):  # weights changed since: older states are stale
                cache.clear()
            was_training = self.llm.training
            self.llm.eval()  # a fixed context: no dropout in its states
            try:
                with torch.inference_mode(False), torch.no_grad():
                    cache[key] = compute_prefix_kv(self.llm, ids)
            finally:
                self.llm.train(was_training)
        return cache[key]

    # ---- speed: prompt lengths for length-bucketed batches (config key length_buckets) -------
    def _text_token_counts(self) -> dict[str, np.ndarray]:
        """Tokens of every item's title and description (``Title``/``Desc`` per item), computed once."""
        counts = self.__dict__.get("_item_token_counts")
        if counts is None:
            def count(texts):
                encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
                return np.array([len(ids) for ids in encoded], dtype=np.int64)

            counts = {"Title": count(self.items.titles), "Desc": count(self.items.descriptions)}
            self.__dict__["_item_token_counts"] = counts
        return counts

    def _length_plan(self, stage: int) -> dict:
        """The template's fixed tokens, measured once per stage by rendering skeleton rows (every text
        field empty) with 0, 1 and 2 history items; and which item texts fill its text fields."""
        plans = self.__dict__.setdefault("_length_plans", {})
        if stage not in plans:
            builder = self.builders[stage]
            empty = defaultdict(str)
            sizes = [len(builder.encode(PromptSample(empty, [empty] * n))[0]) for n in (0, 1, 2)]
            template = builder.template
            item_fields = [name[len(ITEM_PREFIX):] for name in template.text_fields()
                           if name.startswith(ITEM_PREFIX) and name[len(ITEM_PREFIX):] in ("Title", "Desc")]
            target = {"TargetItemTitle": "Title", "TargetItemDesc": "Desc", "ItemDescription": "Desc"}
            target_fields = [target[name] for name in template.text_fields() if name in target]
            lists_history = any(is_ph and v == HISTORY_LIST for is_ph, v in builder._main)
            plans[stage] = {"empty": sizes[0], "first": sizes[1], "per_item": sizes[2] - sizes[1],
                            "item_fields": item_fields if lists_history else [], "target_fields": target_fields,
                            "history": lists_history}
        return plans[stage]

    def row_lengths(self, dataset, rows) -> np.ndarray:
        """Approximate LLM input tokens of ``dataset[rows]`` in the current stage, for grouping rows of
        similar length (``length_buckets``): the template's fixed tokens plus the cached token counts of
        each row's target and history texts, capped at ``max_prompt_tokens``. No prompt is rendered
        (a tokenizer may merge a token or two across text boundaries: close enough for bucketing)."""
        rows = np.asarray(rows)
        if len(rows) == 0:
            return np.zeros(0, dtype=np.int64)
        inter = dataset[torch.as_tensor(rows)]
        if not isinstance(self.builders[self.stage], PromptBuilder):  # e.g. a VLM processor: render
            return np.asarray(self.prompt_lengths(inter), dtype=np.int64)
        plan, counts = self._length_plan(self.stage), self._text_token_counts()
        hist_ids, hist_mask = self.history(inter)
        ids, mask = hist_ids.cpu().numpy(), hist_mask.cpu().numpy()
        items = inter[self.ITEM_ID].cpu().numpy()
        n = mask.sum(1) if plan["history"] else np.zeros(len(rows), dtype=np.int64)
        length = np.where(n > 0, plan["first"] + (n - 1) * plan["per_item"], plan["empty"]).astype(np.int64)
        for name in plan["target_fields"]:
            length += counts[name][items]
        for name in plan["item_fields"]:
            length += (counts[name][ids] * mask).sum(1)
        limit = self.config["max_prompt_tokens"]
        return np.minimum(length, int(limit)) if limit else length
