"""The common base of the plugin's collaborative models (MF and its kin, the multimodal baselines).

RecBole's ``GeneralRecommender`` learns from user-item pairs; here every model is evaluated like a CTR
model on the labeled valid/test rows, so :class:`LabeledRecommender` fixes the RecBole model type to
CONTEXT (pointwise scoring of the given rows) and names the label field. Subclasses set ``input_type``:
what they train on (MF pointwise on the labels, the multimodal baselines pairwise on positive rows).
"""

from __future__ import annotations

from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import ModelType


class LabeledRecommender(GeneralRecommender):
    """A ``GeneralRecommender`` scored pointwise on labeled rows: ``type`` CONTEXT and ``self.LABEL``."""

    type = ModelType.CONTEXT

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.LABEL = config["LABEL_FIELD"]
