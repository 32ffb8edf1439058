"""BinLLM [31] and BinLLM-image: collaborative information as TEXT, binary codes in the prompt.

Stage 0 trains BinLLM's hashing model (:class:`~recbole_histllm.model.hashmf.HashMF`) on the
labels; its user and target-item codes fill Fig. 11's ``<UserID>`` and ``<TargetItemID>`` as bit
strings (``binllm_code_format: binary``, e.g. ``0110...``) or, compressed, as dotted decimals of
8-bit groups (``dotted``, e.g. ``201.12.3.77``). As BinLLM's recipe: stage 1 tunes LoRA on the
text-only prompt (Fig. 6), stage 2 keeps tuning LoRA on the prompt with the codes. BinLLM-image
(Fig. 12, the framework of Fig. 1) adds a projected image token after every history title and the
target title, its VMA mapping module trained with LoRA in stage 2.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recbole_histllm.llm import BINLLM, BINLLM_IMAGE, TALLREC, PromptSample, PromptTemplate
from recbole_histllm.model.hashmf import HashMF, load_hash_codes
from recbole_histllm.model.llm_recommender import LORA, CollaborativeModel, LLMRecommender
from recbole_histllm.utils import InputError

CODE_FORMATS = ("binary", "dotted")


def code_text(code: torch.Tensor | list[float], code_format: str = "binary") -> str:
    """A {-1, +1} code as BinLLM's text: ``"0110..."`` (+1 -> 1) or dotted decimal of 8-bit groups."""
    bits = "".join("1" if float(v) > 0 else "0" for v in code)
    if code_format == "binary":
        return bits
    if code_format == "dotted":
        if len(bits) % 8:
            raise ValueError(f"dotted codes need a multiple of 8 bits, got {len(bits)}")
        return ".".join(str(int(bits[i : i + 8], 2)) for i in range(0, len(bits), 8))
    raise ValueError(f"binllm_code_format must be one of {CODE_FORMATS}, got {code_format!r}")


class BinLLM(LLMRecommender):
    """BinLLM (Fig. 11): hashing-model codes written into the prompt as text, LoRA fine-tuning."""

    visual_variant = False
    stage_trainable = {1: (LORA,), 2: (LORA, "vma")}

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.bits = int(config["binllm_bits"])
        self.code_format = str(config["binllm_code_format"])
        code_text([1.0] * self.bits, self.code_format)  # fail early on a bad format / bit count
        # +1 everywhere until stage 0 loads the hashing model's codes; saved with the checkpoints
        self.register_buffer("user_codes", torch.ones(self.n_users, self.bits))
        self.register_buffer("item_codes", torch.ones(self.n_items, self.bits))

    def build_templates(self) -> dict[int, PromptTemplate]:
        return {1: self.prompt(TALLREC), 2: self.prompt(BINLLM_IMAGE if self.use_visual else BINLLM)}

    def collaborative_model(self) -> CollaborativeModel:
        return CollaborativeModel(HashMF, "hash_checkpoint")

    def load_collaborative(self, checkpoint: str | Path, dataset) -> None:
        user, item = load_hash_codes(checkpoint, dataset)
        if user.shape[1] != self.bits:
            raise InputError(f"config key `hash_checkpoint`: {checkpoint} holds {user.shape[1]}-bit codes, "
                             f"but binllm_bits is {self.bits}")
        self.user_codes.copy_(user.to(self.user_codes))
        self.item_codes.copy_(item.to(self.item_codes))

    def samples(self, interaction, hist_ids: torch.Tensor, hist_mask: torch.Tensor) -> list[PromptSample]:
        """The shared text fields plus the user's and target item's codes as text."""
        rows = super().samples(interaction, hist_ids, hist_mask)
        users = self.user_codes[interaction[self.USER_ID]].tolist()
        items = self.item_codes[interaction[self.ITEM_ID]].tolist()
        for row, user, item in zip(rows, users, items, strict=True):
            row.fields = {**row.fields, "UserID": code_text(user, self.code_format),
                          "TargetItemID": code_text(item, self.code_format)}
        return rows


class BinLLM_image(BinLLM):
    """BinLLM-image (Fig. 12): BinLLM with one image token per history item and the target."""

    paper_name = "BinLLM-image"  # --model, config["model"], result labels and file names

    visual_variant = True
