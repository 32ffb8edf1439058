"""Trainers of this plugin, looked up by ``<ModelName>Trainer`` before RecBole's."""

from recbole_histllm.trainer.llm_trainer import LLMTrainer

HistLLMTrainer = LLMTrainer

__all__ = ["HistLLMTrainer", "LLMTrainer"]
from recbole_histllm.trainer.multimodal import (  # noqa: E402  (multimodal baselines, issue #4)
    BM3Trainer,
    LGMRecTrainer,
    MGTrainer,
    MultimodalTrainer,
    VBPRTrainer,
)

__all__ += ["BM3Trainer", "LGMRecTrainer", "MGTrainer", "MultimodalTrainer", "VBPRTrainer"]
