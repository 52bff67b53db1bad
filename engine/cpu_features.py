"""What this CPU can do, asked once: every CPU fast path chooses itself from `cpu_features()` alone.

Tests force the "not supported" answers by monkeypatching `cpu_features` (the decision functions
below look it up at call time), and run whole processes as an AVX2-only machine with
`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`: oneDNN and ATen then refuse the AVX-512 paths
exactly as they do on such a CPU, and these checks see it.
"""

from __future__ import annotations

import functools
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class CpuFeatures:
    """The answers of torch's own checks, which also honour the ISA caps set in the environment."""

    isa: str  # ATen's kernel level: "AVX512", "AVX2", "DEFAULT" (lowered by ATEN_CPU_CAPABILITY)
    onednn: bool  # oneDNN is built in: packed linear weights (fp32 everywhere oneDNN runs)
    onednn_bf16: bool  # oneDNN's bf16 kernels run here (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)
    avx512_bf16: bool  # AVX512-BF16 (a bf16 dot product in hardware), where the kernel level is AVX512
    amx: bool  # AMX tiles, where the kernel level is AVX512
    vnni: bool  # AVX512-VNNI or AVX-VNNI (int8 dot products)
    avx2: bool = False  # ATen's AVX2 level or above; ATen asks FMA with it, and every AVX2 CPU has F16C

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware (AVX512-BF16 or AMX, reachable through oneDNN): where bf16 pays at any batch."""
        return self.onednn_bf16 and (self.avx512_bf16 or self.amx)

    def describe(self) -> str:
        """One phrase: the kernel level and the extensions that matter here."""
        extras = [name for name, on in (("avx512_bf16", self.avx512_bf16), ("amx", self.amx), ("vnni", self.vnni),
                                         ("oneDNN bf16", self.onednn_bf16)) if on]
        return f"{self.isa}" + (f" ({', '.join(extras)})" if extras else "")


@functools.cache
def cpu_features() -> CpuFeatures:
    """This process's CPU, as torch sees it (cached: the answer cannot change while it runs)."""
    mkldnn = torch.backends.mkldnn.is_available()
    isa = torch.backends.cpu.get_cpu_capability()
    return CpuFeatures(
        isa=isa,
        onednn=mkldnn,
        onednn_bf16=mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        # The flags below read the hardware; a kernel level capped below AVX512 puts them out of reach.
        avx512_bf16=isa == "AVX512" and torch.cpu._is_avx512_bf16_supported(),
        amx=isa == "AVX512" and torch.cpu._is_amx_tile_supported(),
        vnni=torch.cpu._is_vnni_supported(),
        avx2=isa in ("AVX2", "AVX512"),
    )


def linear_path(dtype: torch.dtype, want_prepack: bool = True) -> tuple[bool, str]:
    """Whether CPU linears in `dtype` are packed for oneDNN, and the reason in a few words."""
    cpu = cpu_features()
    if not want_prepack:
        return False, "plain F.linear (--no-prepack-weights)"
    if not cpu.onednn:
        return False, "plain F.linear (torch built without oneDNN)"
    if dtype == torch.float32:
        return True, "oneDNN-packed"
    if dtype == torch.bfloat16:
        if cpu.onednn_bf16:
            return True, "oneDNN-packed" + ("" if cpu.native_bf16 else " (no AVX512-BF16/AMX: converted to fp32 math)")
        return False, "plain F.linear (oneDNN's bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)"
    return False, "plain F.linear (oneDNN packs only float32 and bfloat16)"


def quant_kernel_path() -> tuple[bool, str]:
    """Whether the AVX2 C++ kernels (8- and 16-bit weights in engine.model.cpu_quant, decode attention in
    engine.attention.cpu_decode) can run here, and why not."""
    if not cpu_features().avx2:
        return False, "no AVX2: 8/16-bit weights served dequantized to the activation dtype"
    if shutil.which("c++") is None or shutil.which("ninja") is None:
        return False, "no C++ compiler or ninja to build the kernels: 8/16-bit weights served dequantized"
    return True, "AVX2 kernels"


# -fopenmp: at::parallel_for is OpenMP in the headers (serial without it); libgomp.so.1 resolves to the copy
# torch already loaded, so the kernels share torch's thread pool.
KERNEL_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]


def load_cpu_kernels(name: str, source: Path) -> bool:
    """Compile (first use ~20 s, then cached under TORCH_EXTENSIONS_DIR) and load one C++ file of AVX2 ops into
    torch.ops; False, with a warning, when that fails. Callers check quant_kernel_path() first."""
    from torch.utils import cpp_extension  # imports setuptools: only where a kernel is wanted

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the loader's notes on compiler versions, not ours to act on
            cpp_extension.load(name=name, sources=[str(source)], extra_cflags=KERNEL_FLAGS,
                               extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except (OSError, RuntimeError, ImportError) as exc:
        logger.warning("CPU kernels %s failed to build (%s): the torch path serves instead", name, exc)
        return False
    return True


def log_cpu_paths(dtype: torch.dtype, want_prepack: bool) -> None:
    """One start-up line: the CPU, the linear path each dtype would get, and the dtype served."""
    paths = "; ".join(f"{_name(d)} {linear_path(d, want_prepack)[1]}" for d in CPU_DTYPES)
    advice = ""
    if dtype == torch.bfloat16 and not cpu_features().native_bf16:
        advice = (" bfloat16 without AVX512-BF16/AMX: faster than float32 at one stream, slower in batches "
                  "(README, Performance on CPU).")
    logger.info("CPU %s; linears: %s; serving %s.%s", cpu_features().describe(), paths, _name(dtype), advice)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
