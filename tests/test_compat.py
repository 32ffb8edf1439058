"""Each compatibility shim, with a check that would fail without it."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import recbole_histllm  # noqa: F401
from recbole_histllm import compat


def test_numpy_aliases_needed_by_recbole_config():
    from recbole.config import Config as RecBoleConfig

    removed = {name: getattr(np, name) for name in compat.NUMPY_ALIASES}
    try:
        for name in removed:
            delattr(np, name)
        with pytest.raises(AttributeError):
            RecBoleConfig.compatibility_settings(None)
        assert sorted(compat.patch_numpy_aliases()) == sorted(removed)
        RecBoleConfig.compatibility_settings(None)  # works again
    finally:
        for name, value in removed.items():
            setattr(np, name, value)


class _NotATensor:
    """Stands for the Config object RecBole pickles into every checkpoint."""

    value = 3


def test_trainer_reloads_checkpoints_holding_objects(tmp_path):
    import recbole.trainer.trainer as trainer_module

    path = tmp_path / "ckpt.pth"
    torch.save({"config": _NotATensor(), "state_dict": {}}, path)
    with pytest.raises(Exception, match="weights_only"):
        torch.load(path)  # torch >= 2.6 default: what RecBole 1.2.1 would call
    assert isinstance(trainer_module.torch.load(path)["config"], _NotATensor)
    assert torch.load is not trainer_module.torch.load  # global torch.load untouched
    assert trainer_module.torch.nn is torch.nn


def test_import_does_not_import_ray():
    code = "import sys, recbole_histllm, recbole_histllm.quick_start; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pandas_3_is_refused(monkeypatch):
    monkeypatch.setattr(compat.pd, "__version__", "3.0.0")
    with pytest.raises(ImportError, match="pandas<3"):
        compat.check_pandas()
