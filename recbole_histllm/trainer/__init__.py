"""Trainers of this plugin, looked up by ``<ModelName>Trainer`` before RecBole's."""

from recbole_histllm.trainer.llm_trainer import LLMTrainer

# Every LLM model trains with LLMTrainer (``-`` in a model name reads ``_`` here).
HistLLMTrainer = TALLRecTrainer = TALLRec_imageTrainer = LLMTrainer
CoLLMTrainer = CoLLM_imageTrainer = BinLLMTrainer = BinLLM_imageTrainer = ZeroShotTrainer = LLMTrainer

__all__ = [
    "BinLLMTrainer",
    "BinLLM_imageTrainer",
    "CoLLMTrainer",
    "CoLLM_imageTrainer",
    "HistLLMTrainer",
    "LLMTrainer",
    "TALLRecTrainer",
    "TALLRec_imageTrainer",
    "ZeroShotTrainer",
]
from recbole_histllm.trainer.multimodal import (  # noqa: E402  (multimodal baselines, issue #4)
    BM3Trainer,
    LGMRecTrainer,
    MGTrainer,
    MultimodalTrainer,
    VBPRTrainer,
)

__all__ += ["BM3Trainer", "LGMRecTrainer", "MGTrainer", "MultimodalTrainer", "VBPRTrainer"]
