"""What this CPU computes fast, read from its flags: the facts behind int8, bfloat16 and ``--precision``.

Pure functions of a flag set (``/proc/cpuinfo``'s ``flags`` on x86, ``Features`` on Arm),
so every CPU class is tested on any machine; only ``this_cpu`` reads the real one. No torch.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

# x86 flags naming an int8 dot-product instruction (VNNI, or AMX's int8 tiles).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
AMX_BF16_FLAGS = frozenset({"amx_bf16"})  # bfloat16 tiles: the CPU bfloat16 batch budget is larger there
# What ``batchsent info`` lists, in this order: (name, flags any of which means yes).
FEATURES = (
    ("AVX2", frozenset({"avx2"})),
    ("AVX-512", frozenset({"avx512f"})),
    ("VNNI", frozenset({"avx512_vnni", "avx_vnni"})),
    ("BF16", BF16_FLAGS),
    ("AMX", frozenset({"amx_tile", "amx_int8", "amx_bf16"})),
    ("NEON", frozenset({"asimd", "neon"})),
    ("dotprod", frozenset({"asimddp"})),
)


@dataclass(frozen=True)
class CpuInfo:
    """A CPU's model name, architecture and flags (None when they cannot be read)."""

    model: str
    machine: str
    flags: frozenset[str] | None

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "i386")

    def has_any(self, names: frozenset[str]) -> bool:
        return self.flags is not None and bool(self.flags & names)

    @property
    def features(self) -> dict[str, bool]:
        return {name: self.has_any(flags) for name, flags in FEATURES}

    @property
    def native_bf16(self) -> bool:
        """bfloat16 in hardware (AVX512-BF16, AMX-BF16, Arm BF16); without it torch emulates, slower than float32.

        Unknown flags (no /proc/cpuinfo, as on macOS) pass: refusing would be a guess too.
        """
        return self.flags is None or self.has_any(BF16_FLAGS)

    @property
    def int8_kernel(self) -> str | None:
        """Which int8 product runs faster than float32 here: "int_mm", "fbgemm", or None.

        ``torch._int_mm`` is fast only with an int8 dot-product instruction (VNNI/AMX);
        without one it runs at 1.5-2.3 GOP/s, 30-50x slower than float32. fbgemm's
        quantized Linear needs AVX2 and reaches 98-134 GOP/s on an AVX2-only EPYC.
        Elsewhere (other architectures, x86 without AVX2) nothing was measured faster.
        """
        if not self.is_x86 or self.flags is None:
            return None
        if self.has_any(INT8_DOT_FLAGS):
            return "int_mm"
        if "avx2" in self.flags:
            return "fbgemm"
        return None

    @property
    def cpu_class(self) -> str:
        """The class ``--precision fast`` chooses by: x86-vnni, x86-avx2 or other."""
        kernel = self.int8_kernel
        return {"int_mm": "x86-vnni", "fbgemm": "x86-avx2"}.get(kernel or "", "other")

    def describe(self) -> str:
        """One line: the model name and which of the relevant features it has."""
        present = [name for name, yes in self.features.items() if yes]
        return f"{self.model} ({self.machine}; {', '.join(present) if present else 'none of ' + ', '.join(n for n, _ in FEATURES)})"


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, frozenset[str] | None]:
    """The model name and flag set of the first CPU in a cpuinfo file (None for what is missing)."""
    model = flags = None
    try:
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = frozenset(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model, flags


FLAGS_ENV = "BATCHSENT_CPU_FLAGS"


@functools.cache
def this_cpu() -> CpuInfo:
    """This machine's CPU (read once per process).

    ``BATCHSENT_CPU_FLAGS`` (space-separated) replaces the flags read from the CPU, to run
    the tests or benchmarks as another CPU class would (``make test-avx2``); the model name
    then says so.
    """
    model, flags = read_cpuinfo()
    model = model or platform.processor() or "unknown CPU"
    if os.environ.get(FLAGS_ENV):
        return CpuInfo(
            f"{model}, as {FLAGS_ENV}={os.environ[FLAGS_ENV]!r}",
            platform.machine(),
            frozenset(os.environ[FLAGS_ENV].split()),
        )
    return CpuInfo(model, platform.machine(), flags)
