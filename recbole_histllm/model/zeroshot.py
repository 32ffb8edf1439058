"""ZeroShot: the instruction prompt scored by an instruct LLM or a vision-language model, no training.

Stands in the place of Rec-GPT4V [17] (Table 2), which prompts a vision-language model without
training or fine-tuning. Without ``vlm_path``: the paper's Fig. 6 (titles of the liked items and
the target title) inside the backbone's chat template (``use_chat_template: True``), scored by
P(Yes) (Eq. 13). With ``vlm_path`` (a local image-text-to-text model folder) and ``poster_dir``:
Fig. 7, a poster after every history title and after the target title, as one interleaved chat
message through the model's processor (:mod:`recbole_histllm.llm.vlm`); the text backbone
(``llm_path``) is then not loaded. No stage runs, no adapters are added.
"""

from __future__ import annotations

from recbole_histllm.llm import TALLREC, TALLREC_IMAGE, PromptBuilder, PromptSample, PromptTemplate, autocast
from recbole_histllm.llm.backbone import quantization_config
from recbole_histllm.llm.vlm import VLMPromptBuilder, find_posters, load_vlm, vlm_settings, vlm_yes_no_logits
from recbole_histllm.model.llm_recommender import LLMRecommender


class ZeroShot(LLMRecommender):
    """Zero-shot P(Yes) over Fig. 6 (text backbone) or Fig. 7 (VLM with posters); nothing trains."""

    visual_variant = False  # never image features (VMA): a VLM reads the posters itself
    stage_trainable: dict[int, tuple[str, ...]] = {}

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)  # loads the VLM through _load_llm when vlm_path is set
        self.posters, self.missing_posters = None, 0
        if self.processor is not None:
            self.posters = find_posters(self.poster_dir, dataset.field2id_token[self.ITEM_ID])
            self.missing_posters = sum(p is None for p in self.posters[1:])

    def _load_llm(self, config):
        """The VLM in the backbone's place when ``vlm_path`` is set (``llm_dtype``, ``load_in_*bit``)."""
        settings = vlm_settings(config)
        self.processor = None
        if settings is None:
            return super()._load_llm(config)
        path, self.poster_dir = settings
        quantization = quantization_config(bool(config["load_in_8bit"]), bool(config["load_in_4bit"]),
                                           config["device"])
        model, self.processor = load_vlm(path, config["llm_dtype"], config["device"], quantization)
        return model.requires_grad_(False), self.processor.tokenizer

    def build_templates(self) -> dict[int, PromptTemplate]:
        return {1: self.prompt(TALLREC if self.processor is None else TALLREC_IMAGE)}

    def make_builder(self, template: PromptTemplate) -> PromptBuilder | VLMPromptBuilder:
        return super().make_builder(template) if self.processor is None else VLMPromptBuilder(self.processor, template)

    def samples(self, interaction, hist_ids, hist_mask) -> list[PromptSample]:
        """The text fields, plus each item's poster path (None without one) when a VLM scores."""
        rows = super().samples(interaction, hist_ids, hist_mask)
        if self.posters is None:
            return rows
        for row, item, ids, mask in zip(rows, interaction[self.ITEM_ID].tolist(), hist_ids.tolist(),
                                        hist_mask.tolist()):
            row.fields["TargetItemImage"] = self.posters[item]
            for entry, i in zip(row.history, [i for i, m in zip(ids, mask) if m]):
                entry["Image"] = self.posters[i]
        return rows

    def _vlm_inputs(self, interaction):
        hist_ids, hist_mask = self.history(interaction)
        return self.builders[self.stage](self.samples(interaction, hist_ids, hist_mask))

    def forward(self, interaction):
        if self.processor is None:
            return super().forward(interaction)
        inputs = self._vlm_inputs(interaction).to(self.device)
        with autocast(self.device, enabled=self.bf16):
            return vlm_yes_no_logits(self.llm, inputs, self.builders[self.stage].answer_tokens)

    def prompt_lengths(self, interaction):
        if self.processor is None:
            return super().prompt_lengths(interaction)
        return self._vlm_inputs(interaction)["attention_mask"].sum(1).numpy()
