"""MG: Mirror Gradient (Zhong et al., WWW 2024) on BM3 — the table's "MG" row.

MG is a training strategy, not a model: every ``beta``-th batch the trainer takes a
step on ``alpha1 * loss``, recomputes the loss on the same batch and takes a step on
``-alpha2 * loss`` (a gradient step followed by a smaller mirrored one, which steers
training towards flat minima); other batches are plain steps. It is available for
every multimodal model here with ``mirror_gradient: True``
(:class:`recbole_histllm.trainer.multimodal.MultimodalTrainer`).

Base: BM3. MG is meant as a plug-in for any multimodal recommender and its paper names
no single base; its code (a fork of MMRec) reports MG on VBPR, MMGCN, GRCN, DualGNN,
SLMRec, BM3, FREEDOM, DRAGON. Of the HistLLM table's three other baselines only VBPR and
BM3 are among them, and BM3 + MG beats VBPR + MG on both benchmarks of the MG README
(Sports, Elec), so BM3 is the base MG's authors' own results favour. The HistLLM table's
MG row is also within 0.001 AUC of its BM3 row on movie, consistent with BM3 as the base.
Any other base: ``--model=VBPR --mirror_gradient=True`` (or LGMRec).
"""

from __future__ import annotations

import logging

from recbole_histllm.model.bm3 import BM3

logger = logging.getLogger(__name__)


class MG(BM3):
    """BM3 trained with mirror gradient (the trainer reads :attr:`mirror_gradient`)."""

    mirror_gradient = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if not config["mirror_gradient"]:
            logger.warning("MG always trains with mirror gradient; mirror_gradient=False is ignored "
                           "(use --model=BM3 for plain BM3)")
