from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="distilblocks",
    version="0.1.0",
    description="NLP models from JSON, made small and fast by knowledge distillation",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["blocks", "blocks.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "transformers>=4.30",
        "safetensors>=0.3",
        "jsonschema>=4.0",
        "nltk>=3.8",
        "tqdm>=4.60",
        "seqeval>=1.2",  # entity-level F1 for tagging (conlleval-compatible)
        "sacrebleu>=2.0",  # BLEU / chrF for generation
        "matplotlib>=3.5",  # learning-curve and teacher-weight plots in run directories
    ],
    extras_require={"test": ["pytest>=7", "scipy", "scikit-learn", "pytorch-crf"],
                    "export": ["onnx", "onnxruntime", "onnxscript"],
                    "tensorboard": ["tensorboard"]},
    entry_points={"console_scripts": ["blocks=blocks.cli:main"]},
)
