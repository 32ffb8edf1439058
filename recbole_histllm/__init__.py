"""recbole-histllm: HistLLM and its baselines as a RecBole 1.2 plugin.

Importing the package applies the RecBole compatibility shims (:mod:`.compat`) and
registers UAUC and the impression metrics in RecBole's evaluator, so ``metrics: [AUC, UAUC,
LogLoss]`` works for every model, RecBole's own included; datasets with ``IMPRESSION_FIELD``
(MIND) are split by whole impressions (:mod:`.split`).
"""

from recbole_histllm import compat

compat.apply()

from recbole_histllm import evaluator as _evaluator  # noqa: E402

_evaluator.install()

from recbole_histllm import split as _split  # noqa: E402

_split.install()

__version__ = "0.1.0"
