"""Build flashnce: the Python package, the Triton kernels and the compiled extension.

Install against the torch already present:  pip install --no-build-isolation -e .

Compiled extension (skipped with a warning if torch cannot be imported at build time):
  flashnce._C                 op schemas (csrc/ops.cpp), no kernels
  flashnce._C_cpu_<isa>       the CPU kernel (csrc/cpu/), once per ISA in CPU_ISAS; the
                              package imports the best one the running CPU supports, so the
                              shipped binary needs only AVX2 (no -march=native).
  CUDA sources: see cuda_extensions(); compiled only for a CUDA torch with a toolkit.
Environment: FLASHNCE_CUDA=0/1 forces the CUDA part off/on; MAX_JOBS caps ninja's jobs;
FLASHNCE_NO_EXTENSION=1 builds the pure-Python package only.
"""

import os
import sys

from setuptools import find_packages, setup

# Every sub-package of python/flashnce is shipped; new ones need no edit here.
PACKAGES = ["flashnce", "flashnce.triton_kernels"] + [
    "flashnce." + p for p in find_packages("python/flashnce")]
PACKAGE_DIR = {
    "flashnce": "python/flashnce",
    # The top-level name `triton_kernels` clashes with a package Triton ships.
    "flashnce.triton_kernels": "triton_kernels",
}

CSRC = "csrc"
# ISA variants of the CPU kernel: module suffix -> compiler flags. Order = preference.
CPU_ISAS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma",
               "-mf16c", "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}
CXX_FLAGS = ["-O3", "-fopenmp", "-DPy_LIMITED_API=0x030A0000", f"-I{os.path.abspath(CSRC)}"]


def cuda_extensions(torch_ext):
    """The CUDA kernels (csrc/cuda/*.cu): a list of extensions, empty unless torch is a CUDA
    build and a toolkit is found (FLASHNCE_CUDA=0/1 overrides). They share csrc/flashnce/
    (geometry.h, spec.h) and the schemas in csrc/ops.cpp with the CPU kernel."""
    import torch

    flag = os.environ.get("FLASHNCE_CUDA", "")
    enabled = (flag == "1") or (flag != "0" and bool(torch.version.cuda)
                                and torch_ext.CUDA_HOME is not None)
    sources = sorted(os.path.join(CSRC, "cuda", f) for f in os.listdir(os.path.join(CSRC, "cuda"))
                     if f.endswith(".cu")) if os.path.isdir(os.path.join(CSRC, "cuda")) else []
    if not enabled or not sources:
        return []
    # No GPU visible at build time (CI, containers): sm_80 and sm_90 plus PTX for newer GPUs.
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    include = [f"-I{os.path.abspath(CSRC)}", f"-I{os.path.abspath(os.path.join(CSRC, 'cuda'))}"]
    limited = "-DPy_LIMITED_API=0x030A0000"
    # flashnce._C_cuda: the torch binding (TORCH_LIBRARY_IMPL(CUDA) of the tile ops) and the
    # torch-free core (the C API + one kernel file per dtype); csrc/cuda/README.md lists them.
    return [torch_ext.CUDAExtension(
        "flashnce._C_cuda", sources, py_limited_api=True,
        extra_compile_args={"cxx": ["-O3", limited] + include,
                            "nvcc": ["-O3", limited, "--threads", "2"] + include})]


# Commands that compile (an sdist or egg_info needs no torch: it only lists files).
COMPILING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def extensions():
    """(ext_modules, cmdclass) for the compiled part, or ([], {}) for metadata-only commands
    and FLASHNCE_NO_EXTENSION=1. A compiling build without torch fails loudly: a silent
    pure-Python install would run every loss through the slow fallback."""
    if os.environ.get("FLASHNCE_NO_EXTENSION") == "1":
        print("flashnce: FLASHNCE_NO_EXTENSION=1, building the pure-Python package only (the "
              "cpu and cuda backends will be unavailable)", file=sys.stderr)
        return [], {}
    try:
        from torch.utils import cpp_extension as torch_ext
    except ImportError as exc:  # pip without --no-build-isolation, or torch missing
        if COMPILING & set(sys.argv[1:]):
            raise SystemExit(
                f"flashnce: cannot build the compiled extension: torch is not importable "
                f"({exc}).\n  Install torch first, then build against it without isolation:\n"
                f"    pip install torch && pip install --no-build-isolation .\n"
                f"  (or set FLASHNCE_NO_EXTENSION=1 for the pure-Python package, which runs "
                f"every loss through the slow torch backend)")
        return [], {}
    link = ["-fopenmp"]
    exts = [torch_ext.CppExtension("flashnce._C", [os.path.join(CSRC, "ops.cpp")],
                                   extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=link,
                                   py_limited_api=True)]
    for isa, flags in CPU_ISAS.items():
        name = f"_C_cpu_{isa}"
        exts.append(torch_ext.CppExtension(
            f"flashnce.{name}", [os.path.join(CSRC, "cpu", "isa", f"tile_ops_cpu_{isa}.cpp")],
            extra_compile_args={"cxx": CXX_FLAGS + flags + [f"-DFLASHNCE_ISA={isa}",
                                                            f"-DFLASHNCE_MODULE_NAME={name}"]},
            extra_link_args=link, py_limited_api=True))
    exts += cuda_extensions(torch_ext)
    return exts, {"build_ext": torch_ext.BuildExtension.with_options(use_ninja=True)}


EXT_MODULES, CMDCLASS = extensions()


def torch_requirement() -> str:
    """The compiled extension is tied to the torch it was built against (its C++ ABI): pin
    that minor version; without the extension any recent torch works."""
    if EXT_MODULES:
        import torch

        major, minor = torch.__version__.split("+")[0].split(".")[:2]
        return f"torch=={major}.{minor}.*"
    return "torch>=2.4"


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
    install_requires=[torch_requirement(), "numpy"],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "triton": ["triton"],
        "bench": ["matplotlib", "pytest-benchmark"],
    },
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if EXT_MODULES else {},
    entry_points={"console_scripts": ["flashnce-bench=flashnce.bench.cli:main"]},
)
