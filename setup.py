from setuptools import find_packages, setup

setup(
    name="gmvq_kernels",
    version="0.1.0",
    description="Fused Triton kernels for Gaussian Mixture Vector Quantization (GM-VQ) with the ALBO objective",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gmvq_kernels", "gmvq_kernels.*"]),
    python_requires=">=3.10",
    # torch is bounded: an unbounded requirement pulls a multi-GB CUDA build where no torch is installed.
    # Up to the newest releases run here (torch 2.15 with the triton 3.9 it requires): a bound below a
    # user's torch makes pip replace it to satisfy ours (seen 2026-12-01: 2.14.1+cu130 replaced by
    # 2.13.0+cpu while the bound stopped at triton 3.7).
    install_requires=["torch>=2.11,<2.16", "triton>=3.6,<3.10", "numpy>=1.24"],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "scikit-learn>=1.3", "matplotlib>=3.7",
                 "vector-quantize-pytorch>=1.14"],
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.7", "scikit-learn>=1.3"],
        # drop-in comparisons against vector-quantize-pytorch (tests/test_dropin.py, speed.py --cpu-step)
        "compare": ["vector-quantize-pytorch>=1.14"],
    },
)
