"""The ratio split by whole impressions (MIND): RecBole's ``RS`` split counting impressions, not rows.

With ``IMPRESSION_FIELD`` set (a dataset property: ``properties/dataset/mind.yaml`` sets
``impression_id``), ``eval_args: {split: {RS: [...]}}`` splits the time-ordered impressions of each
user (``group_by: user``; all impressions at once with ``group_by: ~``) by the ratios, with RecBole's
rounding (``Dataset._calcu_split_ids``) applied to the number of impressions, and every row goes
with its impression: one impression never spans two splits, and a user's last impressions are
its test and valid ones. Datasets without the key (ml-100k, movie, netflix) keep RecBole's row split
untouched. :func:`install` patches ``recbole.data.dataset.Dataset.split_by_ratio`` once (idempotent),
so every ``create_dataset`` (the CLI, the benchmarks, the tests) uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from recbole.data.dataset import Dataset

from recbole_histllm.utils import UsageError, config_value


def impression_field(config: Any, fields: Any = None) -> str | None:
    """The configured ``IMPRESSION_FIELD`` (None when unset); with ``fields`` (a dataset's field names or an
    interaction) also None when that field is absent from them."""
    name = config_value(config, "IMPRESSION_FIELD")
    if not name or (fields is not None and name not in fields):
        return None
    return str(name)


def split_units(units: np.ndarray, groups: np.ndarray, ratios: Sequence[float],
                split_ids: Any) -> list[np.ndarray]:
    """Row indices of each part when the rows (in time order) are split by whole ``units``.

    ``units``: each row's impression; ``groups``: each row's group (user, or one value for a global split);
    ``split_ids(tot, ratios)``: RecBole's cut points for ``tot`` units. Within a group the units are ordered
    by their first row; rows keep their order inside each part, group after group (as RecBole's own split).
    Raises UsageError when one impression holds rows of two groups (users).
    """
    uniq, first, unit_of_row = np.unique(units, return_index=True, return_inverse=True)
    unit_group = groups[first]
    if np.any(groups != unit_group[unit_of_row]):
        raise UsageError("IMPRESSION_FIELD: an impression holds rows of several users; the impression ids "
                         "must be unique per user (reconvert the dataset)")
    part_of_unit = np.zeros(len(uniq), dtype=np.int64)
    order = np.lexsort((first, unit_group))  # by group, then by first row (time order)
    bounds = np.flatnonzero(np.r_[True, unit_group[order][1:] != unit_group[order][:-1], True])
    for start, end in zip(bounds[:-1], bounds[1:]):
        cuts = [0, *split_ids(int(end - start), list(ratios)), int(end - start)]
        for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            part_of_unit[order[start + a:start + b]] = k
    row_part = part_of_unit[unit_of_row]
    row_order = np.lexsort((np.arange(len(units)), groups))  # group after group, rows in time order
    return [row_order[row_part[row_order] == k] for k in range(len(ratios))]


_RECBOLE_SPLIT = Dataset.split_by_ratio


def split_by_ratio(self: Dataset, ratios: Sequence[float], group_by: str | None = None) -> list[Dataset]:
    """RecBole's ``split_by_ratio``, by whole impressions when ``IMPRESSION_FIELD`` is set."""
    name = impression_field(self.config)
    if name is None:
        return _RECBOLE_SPLIT(self, ratios, group_by=group_by)
    if name not in self.inter_feat:
        raise UsageError(f"IMPRESSION_FIELD={name}, but {self.dataset_name}.inter has no {name} column: "
                         f"reconvert the dataset (python -m dataset_converters.{self.dataset_name} ...) or set "
                         "IMPRESSION_FIELD to ~")
    total = sum(ratios)
    ratios = [r / total for r in ratios]
    units = self.inter_feat[name].numpy()
    groups = self.inter_feat[group_by].numpy() if group_by else np.zeros(len(units), dtype=np.int64)
    next_index = split_units(units, groups, ratios, self._calcu_split_ids)
    self.logger.info(f"split by whole impressions ({name}), ratios {ratios}, "
                     f"{'per user' if group_by else 'over all impressions'}: rows "
                     f"{[len(i) for i in next_index]}, impressions "
                     f"{[len(np.unique(units[i])) for i in next_index]}")
    self._drop_unused_col()
    return [self.copy(self.inter_feat[index]) for index in next_index]


def install() -> None:
    """Make RecBole's ratio split keep impressions whole when ``IMPRESSION_FIELD`` is set (idempotent)."""
    Dataset.split_by_ratio = split_by_ratio
