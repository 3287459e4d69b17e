"""
Compiling and loading sb3_trust's C kernels (``sb3_trust/ppo/fused_kernels.c``, ``sb3_trust/common/collect_kernels.c``).

A kernel file is compiled on first use with the system's C compiler (``$CC``, else ``cc``/``gcc``) into a cache
directory (``$SB3_TRUST_CACHE``, else ``$XDG_CACHE_HOME/sb3_trust`` or ``~/.cache/sb3_trust``), keyed by the source,
the compiler, the flags and the CPU, and loaded with ctypes. Without a compiler (or with ``SB3_TRUST_NO_KERNELS=1``)
``compile_and_load`` returns the reason instead, and the callers use their NumPy/torch paths.

Flags: ``-O3 -march=native -ffp-contract=off -fno-math-errno``: no fused multiply-add (every product and sum is
rounded as torch's and NumPy's element-wise kernels round it), ``sqrtf`` vectorises, and no ``-ffast-math`` (NaN and
inf propagate, so that the callers' non-finite checks see them).
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared")
# The C functions' signatures: result, then arguments; p = pointer, i = int64, n = int, d = double, f = float
_TYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int64, "n": ctypes.c_int, "d": ctypes.c_double, "f": ctypes.c_float, "-": None}
# The kernels whose absence was already reported (``warn_unavailable_once``)
_warned: set[str] = set()


def kernels_disabled() -> bool:
    """:return: whether ``SB3_TRUST_NO_KERNELS`` asks for the paths without compiled kernels"""
    return os.environ.get("SB3_TRUST_NO_KERNELS", "") not in ("", "0")


def warn_unavailable_once(what: str, error: str | None, fallback: str) -> None:
    """
    Say once per process and kernel that a slower path replaces it, and why; nothing when it is available or when
    ``SB3_TRUST_NO_KERNELS`` asked for the fallback.

    :param what: the kernel, as the message names it
    :param error: why it cannot be had (``compile_and_load``'s second result)
    :param fallback: what is used instead
    """
    if error is None or what in _warned or kernels_disabled():
        return
    _warned.add(what)
    warnings.warn(f"sb3_trust: {what} unavailable ({error}); {fallback}", stacklevel=3)


def cache_dir() -> Path:
    """:return: where compiled kernels are kept"""
    if os.environ.get("SB3_TRUST_CACHE"):
        return Path(os.environ["SB3_TRUST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sb3_trust"


def _cpu_signature() -> str:
    """:return: a description of the CPU (``-march=native`` code runs only on the CPU it was compiled for)"""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compile(compiler: str, source: Path, target: Path) -> None:
    """
    Compile ``source`` into ``target`` atomically (a temporary file renamed), so that concurrent processes never load a
    partly written library.

    :param compiler: the C compiler
    :param source: the C file
    :param target: the shared library to write
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(descriptor)
    try:
        subprocess.run([compiler, *FLAGS, "-o", temporary, str(source), "-lm"], check=True, capture_output=True, timeout=120)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def compile_and_load(source: Path, signatures: dict[str, str]) -> tuple[ctypes.CDLL | None, str | None]:
    """
    :param source: the C file
    :param signatures: ``{function name: "<result> <arguments>"}`` in the codes of ``_TYPES``
    :return: the loaded library (compiled on first use and cached) and ``None``, or ``None`` and why it cannot be had
        (``SB3_TRUST_NO_KERNELS`` set, no compiler, a failed compilation)
    """
    if kernels_disabled():
        return None, "SB3_TRUST_NO_KERNELS is set"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not sys.platform.startswith("linux"):
        return None, "no C compiler found (set CC)" if compiler is None else f"platform {sys.platform} (Linux only)"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256(
            b"\0".join(part.encode() for part in (source.read_text(), compiler, version, " ".join(FLAGS), _cpu_signature()))
        ).hexdigest()[:16]
        target = cache_dir() / f"{source.stem}-{key}.so"
        if not target.exists():
            _compile(compiler, source, target)
        library = ctypes.CDLL(str(target))
        for name, signature in signatures.items():
            result, arguments = signature.split()
            function = getattr(library, name)
            function.restype = _TYPES[result]
            function.argtypes = [_TYPES[code] for code in arguments]
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        details = getattr(error, "stderr", b"") or b""
        return None, f"compiling {source.name} failed: {error} {details.decode(errors='replace')[-500:]}"
    return library, None
