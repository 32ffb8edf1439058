"""Every shim RecBole 1.2.1 needs on today's numpy, pandas and torch, in one place.

Applied once by ``import recbole_histllm`` (:func:`apply`). Each shim is idempotent and
has a test in ``tests/test_compat.py`` that fails without it.

* numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``; RecBole's
  ``Config.compatibility_settings`` reads them on every Config construction.
* torch >= 2.6 loads checkpoints with ``weights_only=True`` by default; RecBole's
  checkpoints hold a Config object, so ``Trainer.evaluate(load_best_model=True)`` and
  ``Trainer.resume_checkpoint`` fail. The shim gives RecBole's trainer module a torch
  whose ``load`` defaults to ``weights_only=False`` (these files are written by RecBole
  itself); ``torch.load`` everywhere else is untouched.
* ``recbole.quick_start`` imports ray at import time; this package never imports it
  (the pipeline is built in :mod:`recbole_histllm.quick_start`).
* pandas 3 breaks RecBole's token_seq remapping and ``fillna(inplace=True)``: the
  package pins ``pandas<3`` (setup.py) and :func:`check_pandas` fails loudly otherwise.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pandas as pd
import torch

_APPLIED = False

# numpy 2 names that RecBole 1.2.1 reads, and what they were aliases of.
NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}


def patch_numpy_aliases() -> list[str]:
    """Restore the numpy 1 aliases RecBole reads; return the names that were added."""
    added = []
    for name, target in NUMPY_ALIASES.items():
        if not hasattr(np, name):
            setattr(np, name, target)
            added.append(name)
    return added


class _TorchWithTrustedLoad(types.ModuleType):
    """A view of ``torch`` whose ``load`` defaults to ``weights_only=False``."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    @functools.wraps(torch.load)
    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(*args, **kwargs)


def patch_trainer_torch_load() -> None:
    """Let RecBole's trainers reload their own checkpoints under torch >= 2.6."""
    import recbole.trainer.trainer as trainer_module

    if not isinstance(trainer_module.torch, _TorchWithTrustedLoad):
        trainer_module.torch = _TorchWithTrustedLoad()


def check_pandas() -> None:
    """Fail with a clear message on pandas 3, which RecBole 1.2.1 mis-handles silently."""
    major = int(pd.__version__.split(".")[0])
    if major >= 3:
        raise ImportError(
            f"recbole_histllm needs pandas<3 (found {pd.__version__}): RecBole 1.2.1's "
            "token_seq remapping and fillna(inplace=True) break silently on pandas 3. "
            "Run: pip install 'pandas<3'"
        )


def apply() -> None:
    """Apply every shim (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    check_pandas()
    patch_numpy_aliases()
    patch_trainer_torch_load()
    _APPLIED = True
