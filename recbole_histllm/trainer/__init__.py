"""Trainers of this plugin. A model names its trainer: ``<Model>Trainer`` here if there is one, else the
class its model class declares in ``trainer_class`` (every LLM model: :class:`LLMTrainer`; the multimodal
baselines: :class:`MultimodalTrainer`), else RecBole's choice (:func:`recbole_histllm.utils.get_trainer`)."""

from recbole_histllm.trainer.llm_trainer import LLMTrainer
from recbole_histllm.trainer.multimodal import MultimodalTrainer

__all__ = ["LLMTrainer", "MultimodalTrainer"]
