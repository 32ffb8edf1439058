"""The project installs as a wheel: properties/ ships inside it and a run works outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_the_properties_and_runs_outside_the_checkout(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("recbole_histllm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"recbole_histllm/properties/{p.relative_to(ROOT / 'properties')}"
                for p in (ROOT / "properties").rglob("*.yaml")}
    assert expected and expected <= names
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "from recbole_histllm.utils import PROPERTIES_DIR; "
                            "print(PROPERTIES_DIR)"], capture_output=True, text=True, cwd=work, env=env)
    assert Path(probe.stdout.strip()) == site / "recbole_histllm" / "properties", probe.stderr
    run = subprocess.run([sys.executable, "-m", "recbole_histllm.quick_start", "--model=MF", "--dataset=ml-100k",
                          "--epochs=1", "--show_progress=False", "--output_dir=out"], capture_output=True, text=True,
                         cwd=work, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((work / "out" / "result.json").read_text())
    assert result["config"]["embedding_size"] == 256 and 0.5 < result["test_result"]["auc"] <= 1.0
    assert (work / "dataset" / "ml-100k" / "ml-100k.inter").is_file()
    script = site / "bin" / "recbole-histllm"  # the console script the wheel declares
    assert script.is_file()
    again = subprocess.run([str(script), "--model=MF", "--dataset=ml-100k", "--epochs=1", "--show_progress=False",
                            "--output_dir=out2"], capture_output=True, text=True, cwd=work, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((work / "out2" / "result.json").read_text())["test_result"]["auc"] > 0.5
