"""Trainers of this plugin, looked up by ``<ModelName>Trainer`` before RecBole's."""

from recbole_histllm.trainer.llm_trainer import LLMTrainer

HistLLMTrainer = LLMTrainer

__all__ = ["HistLLMTrainer", "LLMTrainer"]
