"""Install mindpet_lite: `pip install -e .` (extras: test, mindformers, interop, data)."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "mindpet_lite", "_version.py"), encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="mindpet_lite",
    version=VERSION,
    description="A small, fast, checked LoRA toolkit for MindSpore (drop-in for MindPet's LoRADense)",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["mindpet_lite", "mindpet_lite.*"]),
    install_requires=[
        # 2.9.x is what MindFormers 1.9.0 pins and what CI tests; 2.10 is allowed.
        "mindspore>=2.9.0,<2.11",
        "numpy",
        "pyyaml",
        "safetensors",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist"],  # README's test command runs on 2 workers (-n 2 --dist loadgroup)
        "data": ["sentencepiece"],
        "plot": ["matplotlib"],
        "mindformers": ["mindformers==1.9.0"],
        # install torch==2.13.0 first: any other version pulls multi-GB CUDA packages
        "interop": ["torch==2.13.0", "transformers", "peft"],
    },
    entry_points={"console_scripts": ["mindpet-lite=mindpet_lite.cli:main"]},
)
