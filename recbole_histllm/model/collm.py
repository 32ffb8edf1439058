"""CoLLM [32] and CoLLM-image: MF embeddings mapped into the prompt as ``<UserID>``/``<TargetItemID>``.

CoLLM's two steps on the shared stages: stage 0 trains MF on the labels (BCE), stage 1 tunes LoRA
on the text-only prompt (Fig. 6), stage 2 freezes LoRA and trains the mapping module of the
collaborative embeddings on Fig. 11. CoLLM-image (Fig. 12, the framework of Fig. 1) adds a
projected image token after every history title and the target title; its VMA mapping module
trains in stage 2 beside CoLLM's.
"""

from __future__ import annotations

from recbole_histllm.llm import COLLM, COLLM_IMAGE, TALLREC, PromptTemplate
from recbole_histllm.model.llm_recommender import LORA, LLMRecommender


class CoLLM(LLMRecommender):
    """CoLLM (Fig. 11): stage 1 LoRA on text, stage 2 the collaborative mapping, LoRA frozen."""

    visual_variant = False
    stage_trainable = {1: (LORA,), 2: ("cia", "vma")}

    def build_templates(self) -> dict[int, PromptTemplate]:
        return {1: self.prompt(TALLREC), 2: self.prompt(COLLM_IMAGE if self.use_visual else COLLM)}


class CoLLM_image(CoLLM):
    """CoLLM-image (Fig. 12): CoLLM with one image token per history item and the target."""

    paper_name = "CoLLM-image"  # --model, config["model"], result labels and file names

    visual_variant = True
