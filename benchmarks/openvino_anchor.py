"""OpenVINO float32 and NNCF int8 against batchsent's variants on the same batches, with each one's share of the
CPU's GEMM peak (issue 30 item 4: ``make bench-openvino``).

For MiniLM (``../shared/models/minilm-sst2``, skipped when absent) and the DistilBERT shape, every runner gets
the batches batchsent's Classifier plans for the built-in tuning sample (length-sorted, right-padded), so only
the model differs: tokenizing and post-processing are left out. The runners:

- batchsent float32 (what ``batchsent score`` runs: the kept trace or the model), bfloat16 where the CPU has
  it natively, ``--backend onnx`` (attention fused) and ``--backend onnx --quantize int8``;
- OpenVINO on batchsent's plain ONNX export: at float32 (``INFERENCE_PRECISION_HINT=f32``), at its default
  precision (bfloat16 on CPUs with AMX or AVX-512 BF16), and int8 from NNCF's post-training quantization
  (``ModelType.TRANSFORMER``, calibrated on the sample's own batches).

Batches run in 3 interleaved rounds; figures are the median rows/s (rows: the sample's distinct texts, which
is what runs), the ratio to batchsent float32 in each round, the share of labels equal to batchsent float32's,
and the model's arithmetic rate (2 x multiply-adds of every Linear layer and of attention over the padded
tokens, per second) against this CPU's measured GEMM peak at the same threads: float32 ``torch.mm``, bfloat16 ``torch.mm`` and int8 ``torch._int_mm`` of 2048^3.

  pip install 'batchsent[openvino]'   # optional: never a runtime dependency
  python benchmarks/openvino_anchor.py [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, torch_model
from ctranslate2_anchor import planned_batches
from e2e import machine
from onnx_variants import ROUNDS, interleaved, over_models

from batchsent.model.classifier import Classifier
from batchsent.runtime import backends
from batchsent.runtime.cpu import this_cpu
from batchsent.runtime.tune_sample import builtin_sample

REFERENCE = "batchsent float32"
PEAK_SIZE = 2048
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def gemm_peaks(threads: int) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matrix product here, at ``threads``: float32, bfloat16 (native only) and int8."""
    torch.set_num_threads(threads)
    peaks = {}
    operands = {"float32": torch.float32}
    if this_cpu().native_bf16:
        operands["bfloat16"] = torch.bfloat16
    for name, dtype in operands.items():
        a, b = torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype), torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype)
        peaks[name] = best_rate(lambda a=a, b=b: torch.mm(a, b))
    if hasattr(torch, "_int_mm"):
        a = torch.randint(-128, 127, (PEAK_SIZE, PEAK_SIZE), dtype=torch.int8)
        b = torch.randint(-128, 127, (PEAK_SIZE, PEAK_SIZE), dtype=torch.int8)
        peaks["int8"] = best_rate(lambda: torch._int_mm(a, b))
    return {name: round(rate, 1) for name, rate in peaks.items()}


def best_rate(product: Callable[[], object], repeats: int = 5) -> float:
    product()
    best = min(timed_once(product) for _ in range(repeats))
    return 2 * PEAK_SIZE**3 / best / 1e9


def timed_once(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def model_flops(model: torch.nn.Module, batches: list[dict[str, np.ndarray]]) -> float:
    """2 x the multiply-adds of the encoder's Linear layers and attention over every padded token of ``batches``."""
    config = model.config
    linear = sum(m.in_features * m.out_features for m in model.base_model.modules() if isinstance(m, torch.nn.Linear))
    hidden = getattr(config, "hidden_size", None) or config.dim
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    total = 0.0
    for batch in batches:
        rows, width = batch["input_ids"].shape
        total += 2 * rows * width * linear + layers * 2 * 2 * rows * width * width * hidden
    return total


class OpenVinoRunner:
    """An OpenVINO compiled model called like batchsent's runners: padded numpy inputs in, logits out."""

    def __init__(self, model, threads: int, precision: str | None) -> None:
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.names = {port.get_any_name() for port in self.compiled.inputs}
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = str(getattr(hint, "type_name", hint))

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        result = self.compiled({name: value for name, value in inputs.items() if name in self.names})
        return np.asarray(result[self.compiled.outputs[0]], dtype=np.float32)


def openvino_runners(onnx_path: Path, batches: list[dict[str, np.ndarray]], threads: int) -> dict[str, Runner]:
    """OpenVINO at float32, at its default precision, and NNCF int8 (calibrated on ``batches``)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    names = {port.get_any_name() for port in model.inputs}
    found: dict[str, Runner] = {"OpenVINO float32": OpenVinoRunner(model, threads, "f32")}
    default = OpenVinoRunner(model, threads, None)
    found[f"OpenVINO default ({default.precision})"] = default
    calibration = nncf.Dataset(batches, lambda batch: {name: batch[name] for name in names})
    quantized = nncf.quantize(
        model, calibration, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches), fast_bias_correction=True
    )
    found["OpenVINO int8 (NNCF)"] = OpenVinoRunner(quantized, threads, "f32")
    return found


def measure(model: str, threads: int, folder: Path, peaks: dict[str, float]) -> dict:
    texts = builtin_sample()
    reference = Classifier(model, device="cpu", threads=threads)
    onnx = Classifier(model, device="cpu", backend="onnx", threads=threads)
    runners: dict[str, Runner] = {REFERENCE: reference._runner}
    if this_cpu().native_bf16:
        runners["batchsent bfloat16"] = Classifier(model, device="cpu", dtype="bfloat16", threads=threads)._runner
    runners["batchsent --backend onnx"] = onnx._runner
    runners["batchsent --backend onnx --quantize int8"] = Classifier(
        model, device="cpu", backend="onnx", quantize="int8", threads=threads
    )._runner
    batches = planned_batches(reference, texts)
    example, _ = onnx._sample_batches()
    plain = folder / "plain.onnx"
    encoder = torch_model(onnx)
    backends._export(encoder, example, plain)  # OpenVINO reads standard operators, not ONNX Runtime's fused ones
    runners |= openvino_runners(plain, batches, threads)
    torch.set_num_threads(threads)

    def on_batches(runner: Runner) -> Callable[[int], tuple[int, np.ndarray]]:
        def run(round_: int) -> tuple[int, np.ndarray]:
            share = batches[round_::ROUNDS]
            found = [np.asarray(runner(batch), dtype=np.float32).argmax(1) for batch in share]
            return sum(len(batch["input_ids"]) for batch in share), np.concatenate(found)

        return run

    figures = interleaved({name: on_batches(runner) for name, runner in runners.items()})
    flops = model_flops(encoder, batches)
    for name, figure in figures.items():
        rate = flops / figure["seconds"] / 1e9
        peak_name = "int8" if "int8" in name else "bfloat16" if ("bfloat16" in name or "bf16" in name) else "float32"
        peak = peaks.get(peak_name)
        figure["gflops"] = round(rate, 1)
        figure["share_of_gemm_peak"] = None if not peak else f"{100 * rate / peak:.0f}% of {peak_name} {peak} GFLOP/s"
    distinct = sum(len(batch["input_ids"]) for batch in batches)  # a text repeated in the sample is run once
    return {
        "rows": len(texts),
        "distinct_rows_run": distinct,
        "batches": len(batches),
        "model_gflop": round(flops / 1e9, 1),
        "variants": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/openvino-<cpu class>.json")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers' hints
    where = machine("cpu")
    out = args.out or RESULTS / f"openvino-{where['cpu_class']}.json"
    peaks = gemm_peaks(args.threads)
    import nncf
    import openvino

    report = {
        "benchmark": "openvino",
        "command": " ".join(["python", "benchmarks/openvino_anchor.py", *sys.argv[1:]]),
        "threads": args.threads,
        "rounds": ROUNDS,
        "machine": where,
        "versions": {"openvino": openvino.__version__, "nncf": nncf.__version__},
        "gemm_peak_gflops": peaks,
        "models": {},
    }
    print(f"GEMM peak at {args.threads} threads, GFLOP/s: {peaks} [{where['cpu']}]")

    def one(name: str, model: str, scratch: Path) -> dict:
        folder = scratch / f"openvino-{name}"
        folder.mkdir()
        result = measure(model, args.threads, folder, peaks)
        print(f"== {name}, {result['rows']} rows, {result['model_gflop']} GFLOP, median of {ROUNDS} rounds")
        return result

    over_models(report, out, one)


if __name__ == "__main__":
    main()
