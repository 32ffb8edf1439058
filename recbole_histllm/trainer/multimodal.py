"""Trainer of the multimodal baselines: positive-only pairwise batches and mirror gradient.

The harness hands every trainer RecBole's loaders of the labeled split: the train
loader yields all train rows, label 0 and 1. :class:`MultimodalTrainer` trains
instead on :class:`PositivePairLoader`, ``(user, positive item, negative item)``
triples built from the train rows with label 1 and a negative drawn uniformly from
the items the user has no positive train row with (as MMRec samples), fresh every
epoch. Validation and test stay the harness's labeled loaders, scored pointwise.

``mirror_gradient: True`` (or a model whose class sets ``mirror_gradient = True``,
e.g. MG) applies Mirror Gradient (Zhong et al., WWW 2024) as MMRec's trainer does:
on every ``beta``-th batch a step on ``alpha1 * loss``, then the loss is recomputed on
the same batch and a step is taken on ``-alpha2 * loss``; other batches take a plain
step.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils.clip_grad import clip_grad_norm_
from tqdm import tqdm

from recbole_histllm.model.multimodal import positive_pairs


class PositivePairLoader:
    """Shuffled batches of positive train pairs, each with one uniformly sampled negative item.

    ``dataset`` is the train split (its ``label`` column decides the positives); the
    loader exposes it as ``dataset`` / ``_dataset`` like RecBole's loaders (the
    evaluation collector reads item and user counts from it).
    """

    shuffle = True

    def __init__(self, config, dataset, batch_size: int, seed: int, max_rounds: int = 100):
        self.dataset = self._dataset = dataset
        self.batch_size = int(batch_size)
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.neg_field = config["NEG_PREFIX"] + self.iid_field
        self.users, self.items = positive_pairs(dataset, config["LABEL_FIELD"])
        self.n_items = dataset.item_num
        self.known = np.sort(self.users * self.n_items + self.items)  # (user, item) keys to avoid as negatives
        self.rng = np.random.default_rng(seed)
        self.max_rounds = max_rounds

    def __len__(self) -> int:
        return (len(self.users) + self.batch_size - 1) // self.batch_size

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        """One item per user, uniform over real items (id >= 1) that are not the user's train positives."""
        negatives = self.rng.integers(1, self.n_items, size=len(users))
        for _ in range(self.max_rounds):
            keys = users * self.n_items + negatives
            pos = np.searchsorted(self.known, keys)
            clash = (pos < len(self.known)) & (self.known[np.minimum(pos, len(self.known) - 1)] == keys)
            if not clash.any():
                break
            negatives[clash] = self.rng.integers(1, self.n_items, size=int(clash.sum()))
        return negatives

    def __iter__(self):
        order = self.rng.permutation(len(self.users))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            users, items = self.users[index], self.items[index]
            yield Interaction(
                {
                    self.uid_field: torch.from_numpy(users),
                    self.iid_field: torch.from_numpy(items),
                    self.neg_field: torch.from_numpy(self.sample_negatives(users)),
                }
            )


class MultimodalTrainer(Trainer):
    """RecBole's Trainer on positive pairs with sampled negatives, with optional mirror gradient."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.mirror_gradient = bool(config["mirror_gradient"]) or bool(getattr(model, "mirror_gradient", False))
        self.alpha1 = float(config["alpha1"] if config["alpha1"] is not None else 1.0)
        self.alpha2 = float(config["alpha2"] if config["alpha2"] is not None else 0.1)
        self.beta = int(config["beta"] or 3)
        if self.mirror_gradient:
            self.logger.info(
                f"mirror gradient on: every {self.beta}th batch a step on {self.alpha1} * loss, "
                f"then a step on -{self.alpha2} * loss"
            )

    def positive_loader(self, train_data) -> PositivePairLoader:
        """The pairwise loader built from the harness's train loader (its dataset is the train split)."""
        if isinstance(train_data, PositivePairLoader):
            return train_data
        dataset = getattr(train_data, "_dataset", None)
        dataset = train_data.dataset if dataset is None else dataset
        return PositivePairLoader(self.config, dataset, self.config["train_batch_size"], self.config["seed"])

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        pairs = self.positive_loader(train_data)
        self.logger.info(
            f"{self.config['model']}: training on {len(pairs.users)} positive train pairs "
            f"({len(pairs)} batches of {pairs.batch_size}) with uniformly sampled negatives"
        )
        return super().fit(pairs, valid_data, verbose, saved, show_progress, callback_fn)

    def _step(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
        self.optimizer.step()

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        total = 0.0
        batches = (
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
            if show_progress
            else train_data
        )
        for batch_idx, interaction in enumerate(batches):
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            loss = loss_func(interaction)
            self._check_nan(loss)
            total += loss.item()
            if self.mirror_gradient and batch_idx % self.beta == 0:
                self._step(self.alpha1 * loss)
                self.optimizer.zero_grad()
                mirrored = loss_func(interaction)
                self._check_nan(mirrored)
                self._step(-self.alpha2 * mirrored)
            else:
                self._step(loss)
        return total


