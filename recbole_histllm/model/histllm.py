"""HistLLM (the paper, Sec. 3): KE descriptions, VMA image token, UHEM history token, CIA ids.

Stage 1 fine-tunes LoRA on the text-only TALLRec prompt (Sec. 3.3, Fig. 6); stage 2 freezes it
and trains the VMA and CIA mapping modules and UHEM on the full prompt (Fig. 3). Switches for
the ablations (Table 3): ``history_encoder: gru | transformer | none`` (none = "w/o UHEM":
descriptions and image tokens inline, Fig. 1), ``use_knowledge`` (False = "w/o KE": titles in
place of descriptions), ``use_visual`` ("w/o VMA"), ``use_collaborative``, ``history_len``.
"""

from __future__ import annotations

from recbole_histllm.llm import TALLREC, PromptTemplate, for_domain, histllm_template
from recbole_histllm.model.llm_recommender import LLMRecommender


class HistLLM(LLMRecommender):
    """HistLLM: an LLM scores P(Yes) for a prompt holding one compressed history token."""

    def build_templates(self) -> dict[int, PromptTemplate]:
        domain = self.config["prompt_domain"]
        full = histllm_template(
            history_encoder=self.config["history_encoder"] != "none",
            visual=self.use_visual,
            collaborative=self.use_collaborative,
            domain=domain,
        )
        return {1: for_domain(TALLREC, domain), 2: full}
