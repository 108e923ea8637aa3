"""``--precision``: exact (float32) or fast (the variant measured fastest here, for this model).

On CPU, "fast" follows this machine's tuning for the model (``runtime.tuning``: every variant
timed on at least 500 texts, the fastest with 99.5%+ of float32's labels); the Classifier
reads or makes it once the model's config is known. On CUDA it is float16, measured on an
H100; on other devices, float32: never a guess that could run slower.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchsent.errors import UsageError

PRECISIONS = ("exact", "fast")


@dataclass(frozen=True)
class Variant:
    """What a precision resolves to before the model is known: Classifier options, and what they rest on."""

    dtype: str
    quantize: str | None
    basis: str


EXACT = Variant("float32", None, "float32 everywhere: the pipeline's own precision")
FAST = {
    "cuda": Variant(
        "float16",
        None,
        "H100, MiniLM: float16 2x float32 rows/s, labels 99.98-100% of the float32 pipeline's",
    ),
    "cpu": Variant(
        "float32",
        None,
        "tuned on this machine for each model: the fastest variant with 99.5%+ of float32's labels on 500+ texts "
        "(batchsent tune)",
    ),
    "other": Variant("float32", None, "no faster variant measured on this device"),
}


def check_precision_options(precision: str | None, dtype: str, quantize: str | None, backend: str) -> None:
    """Refuse an unknown precision, or one given together with the options it sets itself."""
    if precision is None:
        return
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected exact or fast")
    if dtype != "auto" or quantize is not None or backend != "torch":
        raise UsageError(
            "--precision chooses the dtype and quantization itself; drop --dtype, --quantize and --backend"
        )


def resolve_precision(precision: str, device_type: str) -> Variant:
    """The variant ``precision`` means on ``device_type`` (on CPU, fast is float32 until the tuning is read)."""
    if precision == "exact":
        return EXACT
    return FAST.get(device_type, FAST["other"])
