"""Build flashnce: the Python package, the Triton kernels and (later) the compiled extension.

Install against the torch already present:  pip install --no-build-isolation -e .
"""

from setuptools import find_packages, setup

# Every sub-package of python/flashnce is shipped; new ones need no edit here.
PACKAGES = ["flashnce", "flashnce.triton_kernels"] + [
    "flashnce." + p for p in find_packages("python/flashnce")]
PACKAGE_DIR = {
    "flashnce": "python/flashnce",
    # The top-level name `triton_kernels` clashes with a package Triton ships.
    "flashnce.triton_kernels": "triton_kernels",
}

setup(
    name="flashnce",
    version="0.1.0",
    description="Memory-linear fused contrastive losses (InfoNCE/CLIP and family) in every geometry",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "triton": ["triton"],
        "bench": ["matplotlib", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["flashnce-bench=flashnce.bench.cli:main"]},
)
