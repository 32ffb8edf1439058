"""Small shared helpers at the bottom of the package: model and trainer lookup (this plugin first, then RecBole,
as RecBole-GNN does), :func:`config_value`, the properties folder, and :func:`run_command` (user errors as one
line and exit 2)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from dataset_converters.errors import InputError as InputError  # re-exported: defined once, in the data layer
from dataset_converters.errors import UsageError as UsageError

PACKAGE_ROOT = Path(__file__).resolve().parent
# the source tree's top-level properties/, or the copy an installed wheel carries inside the package (setup.py)
PROPERTIES_DIR = next((p for p in (PACKAGE_ROOT.parent / "properties", PACKAGE_ROOT / "properties") if p.is_dir()),
                      PACKAGE_ROOT.parent / "properties")




def config_value(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]``, or ``default`` when the key is unset (absent or null): the one way this plugin reads an
    optional key from a RecBole ``Config`` (which has ``in`` and ``[]`` but no ``get``) or a plain dict."""
    value = config[key] if key in config else None
    return default if value is None else value


def model_module_name(model_name: str) -> str:
    """Module file for a model name: ``TALLRec-image`` -> ``tallrec_image``."""
    return model_name.lower().replace("-", "_")


def get_model(model_name: str) -> type:
    """Return the model class named ``model_name`` from this plugin, else from RecBole.

    Looked up in ``recbole_histllm.model.<name>`` and then in the family's module (the part before
    the first ``-``: ``TALLRec-image`` lives beside ``TALLRec`` in ``tallrec.py``).
    """
    modules = dict.fromkeys((model_module_name(model_name), model_module_name(model_name.split("-")[0])))
    for module_name in modules:
        module_path = f"recbole_histllm.model.{module_name}"
        if importlib.util.find_spec(module_path) is None:
            continue
        cls = getattr(importlib.import_module(module_path), model_name.replace("-", "_"), None)
        if cls is not None:
            return cls
    try:
        return recbole_get_model(model_name)
    except (ValueError, AttributeError, ImportError):
        # (ImportError: RecBole's lookup walks into exlib_recommender, which needs lightgbm.)
        raise UsageError(f"unknown model '{model_name}': neither recbole_histllm.model nor RecBole has it") from None


def model_label(model_class: type) -> str:
    """The user-facing name of a model class: its ``paper_name`` (``TALLRec-image``, a name Python cannot
    spell) or its class name."""
    return getattr(model_class, "paper_name", None) or model_class.__name__


def get_trainer(model_type, model_name: str) -> type:
    """``<Model>Trainer`` from this plugin's trainer package, else the trainer the model class declares
    (``trainer_class``: a name in that package), else RecBole's choice."""
    module = importlib.import_module("recbole_histllm.trainer")
    name = model_name.replace("-", "_") + "Trainer"
    if hasattr(module, name):
        return getattr(module, name)
    try:
        declared = getattr(get_model(model_name), "trainer_class", None)
    except UsageError:
        declared = None
    if declared:
        return getattr(module, declared)
    return recbole_get_trainer(model_type, model_name)


def wants_debug(argv: Sequence[str]) -> bool:
    """``--debug`` (or ``--debug=True``) among command-line arguments: keep tracebacks."""
    return "--debug" in argv or "--debug=True" in argv


def run_command(body: Callable[[], int], debug: bool = False) -> int:
    """Exit code of a command: ``body()``'s, or 2 after one ``error: ...`` line per line of a
    :class:`UsageError` on stderr (re-raised with ``debug``)."""
    try:
        code = body()
    except UsageError as err:
        if debug:
            raise
        for line in str(err).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    logging.shutdown()
    return code
