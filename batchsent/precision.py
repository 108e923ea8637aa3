"""``--precision``: exact (float32) or fast (the variant measured fastest on this class of machine).

"fast" is the fastest variant whose labels agreed with float32 on at least 99.5% of the
SST-2 phrases in ``make bench`` on that class of machine; each entry says what it rests on.
A class with no such measurement gets float32: never a guess that could run slower.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cpu import CpuInfo
from .errors import UsageError

PRECISIONS = ("exact", "fast")


@dataclass(frozen=True)
class Variant:
    """What a precision resolves to: Classifier options, and the measurement behind the choice."""

    dtype: str
    quantize: str | None
    basis: str


EXACT = Variant("float32", None, "float32 everywhere: the pipeline's own precision")
FAST = {
    "cuda": Variant(
        "float16", None,
        "H100, MiniLM: float16 2x float32 rows/s, labels 99.98-100% of the float32 pipeline's",
    ),
    "x86-vnni": Variant(
        "float32", "int8",
        "AMD EPYC, AVX-512 VNNI (make bench): per-token int8 (_int_mm) 2.35-2.65x float32 on the DistilBERT "
        "shape, 1.7-1.9x on MiniLM; labels 99.9% of float32 on SST-2",
    ),
    "x86-avx2": Variant(
        "float32", "int8",
        "AVX2 code on an AMD EPYC (make bench-avx2; not yet on AVX2-only hardware): per-token int8 through "
        "fbgemm 1.63x float32 on the DistilBERT shape, 1.3-1.5x on MiniLM; labels 99.8% of float32 on SST-2",
    ),
    "other": Variant("float32", None, "no faster variant measured on this CPU class"),
}


def check_precision_options(precision: str | None, dtype: str, quantize: str | None, backend: str) -> None:
    """Refuse an unknown precision, or one given together with the options it sets itself."""
    if precision is None:
        return
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected exact or fast")
    if dtype != "auto" or quantize is not None or backend != "torch":
        raise UsageError("--precision chooses the dtype and quantization itself; drop --dtype, --quantize and --backend")


def resolve_precision(precision: str, device_type: str, cpu: CpuInfo) -> Variant:
    """The variant ``precision`` means on ``device_type`` with this ``cpu``."""
    if precision == "exact":
        return EXACT
    if device_type == "cuda":
        return FAST["cuda"]
    if device_type == "cpu":
        return FAST[cpu.cpu_class]
    return FAST["other"]
