"""
The threads of the accelerator's BLAS: as many as torch's (``th.get_num_threads()``).

The kernels' matrix products go through SciPy's BLAS (Numba calls ``scipy.linalg.cython_blas``), whose thread pool
``th.set_num_threads`` does not reach. Its products here are small (a minibatch, or a rollout through a 64- or 256-wide
layer), and with more threads than cores free they wait on each other: on a busy 2-core machine a Fisher-vector product
took 20 times longer with OpenBLAS's default of one thread per core. So the accelerator gives SciPy's BLAS the thread
count the user gave torch, through threadpoolctl, and leaves every other library (NumPy's own BLAS included) alone.
SciPy's BLAS is found by its file being inside SciPy's installation; a SciPy that uses a system BLAS is left as it is.
"""

import os
from typing import Any

import torch as th

_state: dict[str, Any] = {}


def _scipy_blas() -> Any:
    """:return: a threadpoolctl controller of the BLAS libraries shipped inside SciPy (found once per process)"""
    if "controller" not in _state:
        import scipy
        import scipy.linalg.cython_blas  # loads SciPy's BLAS, as the kernels do
        from threadpoolctl import ThreadpoolController

        root = os.path.realpath(os.path.dirname(scipy.__file__))  # .../scipy; its libraries: scipy.libs, scipy/.dylibs
        controller = ThreadpoolController()
        paths = [info["filepath"] for info in controller.info() if os.path.realpath(info["filepath"]).startswith(root)]
        _state["controller"] = controller.select(filepath=paths)
    return _state["controller"]


def match_torch_threads() -> None:
    """Give SciPy's BLAS torch's current number of threads (cheap when it already has it)."""
    threads = th.get_num_threads()
    if _state.get("threads") != threads:
        _scipy_blas().limit(limits=threads)  # not used as a context manager: the limit stays
        _state["threads"] = threads


def scipy_blas_threads() -> list[int]:
    """:return: the number of threads of each BLAS library shipped inside SciPy (for tests)"""
    return [info["num_threads"] for info in _scipy_blas().info()]
