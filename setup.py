"""Build fastrnn, with its C++/CUDA extension fastrnn._C when possible.

The extension is a CUDAExtension when a CUDA build of torch and a CUDA toolkit
(CUDA_HOME) are present, whether or not a GPU is visible, else a CPU-only
CppExtension.  Environment:
  FASTRNN_SKIP_EXT=1       pure-Python package, no extension
  FASTRNN_BUILD_CUDA=0/1   force the CPU-only / the CUDA build
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0" without a GPU)
  MAX_JOBS                 parallel compile jobs (ninja)
  FASTRNN_NO_OPENMP=1      build without -fopenmp (at::parallel_for is then serial)
Without any csrc sources, or without torch at build time, the package is
pure Python and the compiled backends report themselves unavailable.
"""
import glob
import os

from setuptools import setup


def env_flag(name):
    v = os.environ.get(name, "").strip().lower()
    return None if v == "" else v not in ("0", "false", "no", "off")


def openmp_ok(torch):
    """torch runs its intra-op threads on OpenMP and the compiler is GCC-like on Linux."""
    import sys
    if env_flag("FASTRNN_NO_OPENMP") or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(torch.backends.openmp.is_available())
    except Exception:
        return False


def extensions():
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if env_flag("FASTRNN_SKIP_EXT") or not cpp:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except ImportError:
        print("fastrnn: torch not importable at build time; building without fastrnn._C")
        return [], {}

    has_toolkit = ce.CUDA_HOME is not None and os.path.exists(
        os.path.join(ce.CUDA_HOME, "include", "cuda_runtime.h"))
    can_cuda = torch.version.cuda is not None and has_toolkit
    cuda = env_flag("FASTRNN_BUILD_CUDA")
    if cuda is None:
        cuda = can_cuda
    elif cuda and not can_cuda:
        raise RuntimeError(
            f"FASTRNN_BUILD_CUDA=1 but torch.version.cuda={torch.version.cuda} and "
            f"CUDA_HOME={ce.CUDA_HOME} (set CUDA_HOME to the toolkit root)")

    cxx = ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-math-errno", "-fno-trapping-math"]
    link = []
    # ATen's at::parallel_for is an inline template that runs serially unless the
    # including file is compiled with OpenMP (_OPENMP), so the extension must be
    # built with -fopenmp to use torch's intra-op threads.  The libgomp.so.1 it
    # links is the one torch has already loaded (same soname): one thread pool.
    if openmp_ok(torch):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kw = dict(name="fastrnn._C", sources=cpp, extra_compile_args={"cxx": cxx},
              extra_link_args=link, py_limited_api=True)
    if cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        kw["sources"] = cpp + sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        kw["extra_compile_args"] = {
            "cxx": cxx + ["-DFASTRNN_WITH_CUDA"],
            # -Xptxas -v: registers, shared memory and spills per kernel, which
            # .ci/check_build.py turns into build/ptxas_report.txt
            "nvcc": ["-O3", "-DFASTRNN_WITH_CUDA", "-Xptxas", "-v", "-lineinfo",
                     "--expt-relaxed-constexpr", "-Xcompiler", "-Wall"],
        }
        ext = ce.CUDAExtension(**kw)
    else:
        ext = ce.CppExtension(**kw)
    print(f"fastrnn: building fastrnn._C ({'CUDA' if cuda else 'CPU only'})")
    build = ce.BuildExtension.with_options(use_ninja=True, no_python_abi_suffix=True)
    return [ext], {"build_ext": build}


ext_modules, cmdclass = extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
