"""recbole-histllm: HistLLM and its baselines as a RecBole 1.2 plugin.

Importing the package applies the RecBole compatibility shims (:mod:`.compat`) and
registers UAUC in RecBole's evaluator, so ``metrics: [AUC, UAUC, LogLoss]`` works for
every model, RecBole's own included.
"""

from recbole_histllm import compat

compat.apply()

from recbole_histllm import evaluator as _evaluator  # noqa: E402

_evaluator.install()

__version__ = "0.1.0"
