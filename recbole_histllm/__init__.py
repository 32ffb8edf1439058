"""recbole-histllm: HistLLM and its baselines as a RecBole 1.2 plugin.

Importing the package applies the RecBole compatibility shims (:mod:`.compat`) and
registers UAUC and the impression metrics in RecBole's evaluator, so ``metrics: [AUC, UAUC,
LogLoss]`` works for every model, RecBole's own included; datasets with ``IMPRESSION_FIELD``
(MIND) are split by whole impressions (:mod:`.split`). ``from recbole_histllm import load_run``
reloads a finished run (:mod:`.run_io`).
"""

from recbole_histllm import compat

compat.apply()

from recbole_histllm import evaluator as _evaluator  # noqa: E402

_evaluator.install()

from recbole_histllm import split as _split  # noqa: E402

_split.install()

__version__ = "0.1.0"


def __getattr__(name: str):
    """``load_run`` / ``Run`` (:mod:`.run_io`), imported on first use: ``import recbole_histllm`` stays light."""
    if name in ("load_run", "Run"):
        from recbole_histllm import run_io

        return getattr(run_io, name)
    raise AttributeError(f"module 'recbole_histllm' has no attribute {name!r}")
