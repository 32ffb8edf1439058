"""TALLRec [2] and TALLRec-image: LoRA fine-tuning on the titles of the user's liked items.

TALLRec's prompt is the paper's Fig. 6; TALLRec-image (Fig. 7, the framework of Fig. 1) adds a
projected image token (the VMA mapping module, Eq. 3) after every history title and after the
target title, and trains that mapping module together with LoRA in the single stage.
"""

from __future__ import annotations

from recbole_histllm.llm import TALLREC, TALLREC_DESC, TALLREC_IMAGE, PromptTemplate
from recbole_histllm.model.llm_recommender import LORA, LLMRecommender


class TALLRec(LLMRecommender):
    """TALLRec (Fig. 6): one stage, LoRA on the text prompt; ``tallrec_desc: True`` is the paper's
    TALLRec_desc (Fig. 8: KE descriptions in place of titles)."""

    visual_variant = False
    stage_trainable = {1: (LORA, "vma")}  # "vma" exists only in the image variant

    def build_templates(self) -> dict[int, PromptTemplate]:
        if self.use_visual:
            return {1: self.prompt(TALLREC_IMAGE)}
        return {1: self.prompt(TALLREC_DESC if self.config["tallrec_desc"] else TALLREC)}


class TALLRec_image(TALLRec):
    """TALLRec-image (Fig. 7): TALLRec with one image token per history item and the target."""

    paper_name = "TALLRec-image"  # --model, config["model"], result labels and file names

    visual_variant = True
