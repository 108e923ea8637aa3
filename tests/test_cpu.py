"""CPU flags, --precision and `batchsent info`: pure choices tested for every CPU class on any machine."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from batchsent.cli import app
from batchsent.errors import UsageError
from batchsent.runtime.cpu import CpuInfo, read_cpuinfo, this_cpu
from batchsent.runtime.precision import EXACT, FAST, check_precision_options, resolve_precision

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse4_2 avx avx2 fma
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes crc32 asimddp bf16
"""
VNNI = CpuInfo("EPYC 9004", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
AVX2 = CpuInfo("EPYC 7B12", "x86_64", frozenset({"avx2", "fma"}))
ARM = CpuInfo("Graviton", "aarch64", frozenset({"asimd", "asimddp", "bf16"}))


def test_cpuinfo_is_read_on_x86_and_arm(tmp_path):
    (tmp_path / "x86").write_text(X86_CPUINFO)
    (tmp_path / "arm").write_text(ARM_CPUINFO)
    assert read_cpuinfo(str(tmp_path / "x86")) == ("AMD EPYC 7B12", frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"}))
    model, flags = read_cpuinfo(str(tmp_path / "arm"))
    assert model is None and {"asimd", "asimddp", "bf16"} <= flags
    assert read_cpuinfo(str(tmp_path / "missing")) == (None, None)


def test_features_and_classes():
    assert VNNI.features == {
        "AVX2": True,
        "AVX-512": True,
        "VNNI": True,
        "BF16": True,
        "AMX": False,
        "NEON": False,
        "dotprod": False,
    }
    assert AVX2.features["AVX2"] and not AVX2.features["VNNI"] and not AVX2.native_bf16
    assert ARM.features["NEON"] and ARM.features["dotprod"] and ARM.native_bf16
    assert (VNNI.cpu_class, AVX2.cpu_class, ARM.cpu_class) == ("x86-vnni", "x86-avx2", "other")
    assert CpuInfo("?", "x86_64", None).native_bf16  # unknown flags: not refused on a guess
    assert "AVX2" in AVX2.describe() and "EPYC 7B12" in AVX2.describe()


def test_fast_precision_per_device():
    assert resolve_precision("fast", "cuda") == FAST["cuda"] and FAST["cuda"].dtype == "float16"
    cpu = resolve_precision("fast", "cpu")  # float32 until the Classifier reads this machine's tuning
    assert cpu.dtype == "float32" and cpu.quantize is None and "tuned on this machine" in cpu.basis
    assert resolve_precision("fast", "mps") == FAST["other"]
    assert resolve_precision("exact", "cuda") == EXACT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("turbo", "auto", None, "torch"), "--precision 'turbo': expected exact or fast"),
        (("fast", "bfloat16", None, "torch"), "drop --dtype, --quantize and --backend"),
        (("exact", "auto", "int8", "torch"), "drop --dtype"),
        (("fast", "auto", None, "onnx"), "drop --dtype"),
    ],
)
def test_precision_refusals(args, message):
    with pytest.raises(UsageError, match=message):
        check_precision_options(*args)
    check_precision_options(None, "bfloat16", None, "torch")  # no --precision: other options stand alone


@pytest.mark.parametrize("args", [["--precision", "turbo"], ["--precision", "fast", "--quantize", "int8"]])
def test_bad_precision_is_one_line_before_the_model_loads(tmp_path, args):
    source = tmp_path / "in.csv"
    source.write_text("text\ngood\n")
    result = CliRunner().invoke(app, ["score", str(source), "--model", "never-loaded", *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--precision" in result.stderr
    assert not (tmp_path / "in.scored.csv").exists()


def test_the_cpu_refusing_int8_is_one_line_exit_2_before_loading(tmp_path, monkeypatch):
    import batchsent.runtime.backends as backends

    monkeypatch.setattr(backends, "this_cpu", lambda: CpuInfo("Old Xeon", "x86_64", frozenset({"avx"})))
    source = tmp_path / "in.csv"
    source.write_text("text\ngood\n")
    result = CliRunner().invoke(app, ["score", str(source), "--model", "never-loaded", "--quantize", "int8"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --quantize int8 would be slower than float32 on this CPU (Old Xeon): it needs AVX2 (x86); "
        "use --precision fast, or float32\n"
    )


@pytest.mark.slow
def test_fast_precision_runs_and_is_reported(binary_model):
    from conftest import varied_texts

    from batchsent.model.classifier import Classifier

    texts = varied_texts(20, seed=4)
    exact = Classifier(str(binary_model), device="cpu", precision="exact")
    fast = Classifier(str(binary_model), device="cpu", precision="fast")
    assert exact.variant == "float32, --precision exact"
    assert exact.tuning is None and fast.tuning is not None  # this machine's tuning for the model (made now)
    assert fast.variant == f"{fast.tuning.chosen.variant}, --precision fast"
    assert abs(fast.predict(texts).probabilities - exact.predict(texts).probabilities).max() < 0.1


def test_info_names_the_cpu_and_what_runs_here():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0
    assert f"cpu: {this_cpu().model}" in result.stdout and "variant torch int8:" in result.stdout
    assert "--precision fast here:" in result.stdout
    data = json.loads(CliRunner().invoke(app, ["info", "--json"]).stdout)
    assert data["cpu"]["class"] == this_cpu().cpu_class and set(data["cpu"]["features"]) >= {"AVX2", "VNNI", "AMX"}


def test_the_flags_can_be_replaced_to_act_as_another_cpu_class(monkeypatch):
    from batchsent.runtime import cpu

    if not this_cpu().is_x86:
        pytest.skip(f"the pretended flags are x86 flags; this is {this_cpu().machine}")
    monkeypatch.setenv(cpu.FLAGS_ENV, "avx avx2 fma")
    cpu.this_cpu.cache_clear()
    try:
        pretended = cpu.this_cpu()
        assert pretended.cpu_class == "x86-avx2" and not pretended.native_bf16 and cpu.FLAGS_ENV in pretended.model
    finally:
        monkeypatch.delenv(cpu.FLAGS_ENV)
        cpu.this_cpu.cache_clear()
