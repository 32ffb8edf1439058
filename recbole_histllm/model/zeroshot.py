"""ZeroShot: the instruction prompt scored by an instruct LLM without any training.

Stands in the place of Rec-GPT4V [17] (Table 2), which prompts a vision-language model without
training or fine-tuning. The prompt is the paper's Fig. 6 (titles of the liked items and the
target title) inside the backbone's chat template (``use_chat_template: True``), scored by P(Yes)
(Eq. 13); no stage runs, no adapters are added. Posters through a vision-language model
(``vlm_path``) are not supported: the shared plumbing feeds one causal LM, not a VLM processor.
"""

from __future__ import annotations

from recbole_histllm.llm import TALLREC, PromptTemplate
from recbole_histllm.model.llm_recommender import LLMRecommender
from recbole_histllm.utils import UsageError


class ZeroShot(LLMRecommender):
    """Zero-shot P(Yes) over the Fig. 6 prompt; nothing trains."""

    visual_variant = False
    stage_trainable: dict[int, tuple[str, ...]] = {}

    def __init__(self, config, dataset) -> None:
        vlm = config["vlm_path"]
        if vlm not in (None, "", "~", "None", "null"):  # ("~" stays a string on the command line)
            raise UsageError(
                f"ZeroShot: vlm_path={vlm} (posters through a vision-language model, as "
                "Rec-GPT4V) is not supported; unset vlm_path to score the text prompt with llm_path"
            )
        super().__init__(config, dataset)

    def build_templates(self) -> dict[int, PromptTemplate]:
        return {1: self.prompt(TALLREC)}
