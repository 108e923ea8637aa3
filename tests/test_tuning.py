"""`batchsent tune` and `--precision fast` on CPU: measured on this machine for this model, stored, followed.

The rules are tested on a tiny seeded model (real loading, real timing); which variant
wins on it says nothing, so the tests check that what ran is what the stored tuning chose.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from batchsent.cli import app
from batchsent.runtime import tuning
from batchsent.runtime.cpu import CpuInfo
from batchsent.runtime.tune_sample import SAMPLE_ROWS, builtin_sample
from batchsent.runtime.tuning import MIN_ROWS, Measurement, Tuning, TuningStore


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    """Each test starts with no stored tuning (and its own ONNX export cache)."""
    monkeypatch.setenv("BATCHSENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BATCHSENT_ONNX_CACHE", str(tmp_path / "onnx"))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def write_texts(path, count: int):
    path.write_text("text\n" + "".join(f"review number {i} was {'good' if i % 2 else 'bad'}\n" for i in range(count)))
    return path


def test_the_builtin_sample_is_fixed_and_holds_short_and_long_reviews():
    sample = builtin_sample()
    assert len(sample) == SAMPLE_ROWS >= MIN_ROWS and sample == builtin_sample()
    words = sorted(len(text.split()) for text in sample)
    assert words[0] <= 3 and words[-1] > 400  # one word to past 512 tokens
    assert sum(count <= 25 for count in words) > SAMPLE_ROWS // 3


def test_candidates_follow_the_cpu():
    from batchsent.runtime.int8 import fbgemm_available, int8_matmul_available

    avx2 = [c.name for c in tuning.candidates(CpuInfo("EPYC", "x86_64", frozenset({"avx2", "fma"})))]
    assert avx2[0] == "float32" and "bfloat16" not in avx2 and "int8/int_mm" not in avx2
    assert ("int8/fbgemm" in avx2) == fbgemm_available()
    amx = [c.name for c in tuning.candidates(CpuInfo("Xeon", "x86_64", frozenset({"avx2", "avx512_bf16", "amx_int8"})))]
    assert "bfloat16" in amx and ("int8/int_mm" in amx) == int8_matmul_available()
    arm = [c.name for c in tuning.candidates(CpuInfo("Graviton", "aarch64", frozenset({"asimd"})))]
    assert not any(name.startswith(("int8", "bfloat16")) for name in arm)


def scope() -> dict:
    return {"format": 1, "model": "m", "max_length": 8, "threads": 2, "cpu": "c", "cpu_flags": "f"}


def made(*measurements: Measurement) -> Tuning:
    return Tuning(scope(), {"versions": {}, "model": {}}, "s", "t", list(measurements))


def test_the_fastest_variant_that_agrees_on_enough_rows_is_chosen():
    reference = Measurement("float32", 520, 10.0, 1.0)
    assert (
        made(
            reference,
            Measurement("int8/fbgemm", 520, 5.0, 0.996),
            Measurement("onnx int8", 520, 4.0, 0.99),
            Measurement("onnx float32", 520, 8.0, 1.0),
        ).chosen.variant
        == "int8/fbgemm"
    )
    # agreement measured on fewer than 500 rows is not eligible, however fast and however equal
    assert made(reference, Measurement("int8/fbgemm", MIN_ROWS - 1, 1.0, 1.0)).chosen.variant == "float32"
    assert (
        made(reference, Measurement("bfloat16", 520, 2.0, 1.0, "stopped: time cap reached")).chosen.variant == "float32"
    )
    assert made(Measurement("float32", 0, 0.0, None, "stopped: time cap reached")).chosen.variant == "float32"


@pytest.mark.slow
def test_tune_stores_a_table_and_fast_runs_what_it_chose(tmp_path, binary_model):
    result = invoke("tune", "--model", str(binary_model))
    assert result.exit_code == 0, result.stderr
    stored = TuningStore().all()
    assert len(stored) == 1
    chosen = stored[0].chosen.variant
    assert f"--precision fast runs {chosen} here" in result.stdout
    assert all(m.rows == SAMPLE_ROWS for m in stored[0].measurements if m.problem is None)

    source = write_texts(tmp_path / "in.csv", 20)
    output, manifest = tmp_path / "out.csv", tmp_path / "run.json"
    scored = invoke(
        "score",
        str(source),
        "--model",
        str(binary_model),
        "--precision",
        "fast",
        "-o",
        str(output),
        "--manifest",
        str(manifest),
    )
    assert scored.exit_code == 0, scored.stderr
    assert "--precision fast:" not in scored.stderr  # the stored tuning is used as it is
    record = json.loads(manifest.read_text())
    assert record["variant"] == f"{chosen}, --precision fast"
    basis = record["precision_basis"]
    assert basis["variant"] == chosen and basis["measured_at"] == stored[0].measured_at and basis["rows"] == SAMPLE_ROWS

    info = invoke("info")
    assert f"tuning {binary_model.resolve()}" in info.stdout and f"fast runs {chosen}" in info.stdout


@pytest.mark.slow
def test_fast_with_nothing_stored_tunes_once_and_says_so_in_one_line(tmp_path, binary_model):
    source = write_texts(tmp_path / "in.csv", 20)
    first = invoke(
        "score", str(source), "--model", str(binary_model), "--precision", "fast", "-o", str(tmp_path / "a.csv")
    )
    assert first.exit_code == 0, first.stderr
    notes = [line for line in first.stderr.splitlines() if "--precision fast:" in line and "too noisy" not in line]
    assert len(notes) == 1 and "no tuning is stored" in notes[0] and "at most 300 s" in notes[0]  # (a busy machine
    # may add one more: that a variant was faster by the median but not in every round)
    second = invoke(
        "score", str(source), "--model", str(binary_model), "--precision", "fast", "-o", str(tmp_path / "b.csv")
    )
    assert second.exit_code == 0 and "--precision fast:" not in second.stderr
    assert len(TuningStore().all()) == 1


@pytest.mark.slow
def test_a_tuning_from_another_torch_or_model_version_is_ignored_with_a_note(tmp_path, binary_model):
    from batchsent.model.classifier import Classifier

    model = tmp_path / "model"
    shutil.copytree(binary_model, model)
    first = Classifier(str(model), device="cpu", precision="fast")
    store = TuningStore()
    stale = first.tuning
    stale.facts["versions"]["torch"] = "1.0.0"
    stale.measurements = [Measurement("float32", 520, 10.0, 1.0), Measurement("onnx float32", 520, 1.0, 1.0)]
    store.put(stale)  # a result that would choose onnx float32, measured with another torch

    notes: list[str] = []
    again = Classifier(str(model), device="cpu", precision="fast", notes=notes.append)
    notes = [note for note in notes if "too noisy" not in note]  # a busy machine may add that note
    assert len(notes) == 1 and "measured with torch 1.0.0, now " in notes[0] and "ignored" in notes[0]
    assert again.tuning.measured_at >= stale.measured_at and again.tuning.facts["versions"]["torch"] != "1.0.0"
    assert store.all()[0].facts == again.tuning.facts  # replaced, never used

    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {"0": "NEG", "1": "POS"}
    (model / "config.json").write_text(json.dumps(config))
    notes.clear()
    Classifier(str(model), device="cpu", precision="fast", notes=notes.append)
    notes = [note for note in notes if "too noisy" not in note]
    assert len(notes) == 1 and "another version of the model" in notes[0]


def test_a_time_cap_leaves_the_variants_it_cut_unchosen(binary_model):
    from batchsent.model.classifier import Classifier
    from batchsent.settings.options import ModelOptions

    result = tuning.run_tuning(
        ModelOptions(model=str(binary_model), device="cpu"), builtin_sample(), "s", 1e-6, Classifier
    )
    assert result.chosen.variant == "float32"
    assert all(m.problem and "time cap" in m.problem for m in result.measurements)


@pytest.mark.parametrize("rows", [0, MIN_ROWS - 1])
def test_tune_on_a_sample_too_small_is_one_line(tmp_path, binary_model, rows):
    sample = write_texts(tmp_path / "sample.csv", rows)
    result = invoke("tune", "--model", str(binary_model), "--sample", str(sample))
    assert result.exit_code == 2
    assert (
        result.stderr.count("\n") == 1
        and f"{rows} non-blank texts" in result.stderr
        and "at least 500" in result.stderr
    )
    assert not TuningStore().all()


def test_tune_on_a_sample_of_your_own(tmp_path, binary_model):
    sample = write_texts(tmp_path / "sample.csv", MIN_ROWS)
    result = invoke("tune", "--model", str(binary_model), "--sample", str(sample), "--max-length", "16")
    assert result.exit_code == 0, result.stderr
    stored = TuningStore().all()[0]
    assert stored.sample == f"{sample} ({MIN_ROWS} rows)" and stored.scope["max_length"] == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/model"], "/nonexistent/model"),
        (["--time-cap", "0"], "--time-cap must be more than 0"),
        (["--sample", "/nonexistent.csv"], "/nonexistent.csv"),
    ],
)
def test_tune_refusals_are_one_line(binary_model, args, message):
    full = ["tune", "--model", str(binary_model), *args] if args[0] != "--model" else ["tune", *args]
    result = invoke(*full)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr


class _FakeClock:
    """A clock that each variant's predict moves on by the seconds its round is given (no real timing)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("int8_seconds", "chosen", "noisy"),
    [
        ([0.2, 1.0, 1.0], "float32", False),  # one fast outlier round: the median is float32's, so not even noise
        ([0.2, 0.95, 0.2], "float32", True),  # faster by the median, but not by the margin in the middle round
        ([0.8, 0.85, 0.8], "int8/fbgemm", False),  # faster in every round by more than the margin
    ],
)
def test_one_fast_round_does_not_decide(binary_model, monkeypatch, int8_seconds, chosen, noisy):
    """float32 takes 1 s a round; int8 the seconds given. Only a speed-up in every round replaces float32. Each
    variant's first pass, a whole round's rows, takes 100 s and is not timed (the warm-up round)."""
    from batchsent.model.classifier import Classifier
    from batchsent.runtime import tuning as tuning_module
    from batchsent.settings.options import ModelOptions

    # The second variant computes as float32 (so it agrees fully); only the clock tells them apart.
    monkeypatch.setattr(
        tuning_module, "candidates", lambda cpu: [tuning_module.FLOAT32, tuning_module.Candidate("int8/fbgemm")]
    )
    clock, rounds, names, warmups = _FakeClock(), {"float32": 0, "int8/fbgemm": 0}, {}, []
    original = Classifier.predict

    def timed(self, texts, pairs=None):
        scores = original(self, texts, pairs)
        if id(self) not in names:  # the warm-up round, float32 first
            names[id(self)] = ["float32", "int8/fbgemm"][len(names)]
            warmups.append(len(texts))
            clock.now += 100.0
            return scores
        name = names[id(self)]
        clock.now += 1.0 if name == "float32" else int8_seconds[rounds[name]]
        rounds[name] += 1
        return scores

    monkeypatch.setattr(Classifier, "predict", timed)
    texts = [f"a fine film number {i}" for i in range(600)]
    measurements = tuning_module.measure(ModelOptions(model=str(binary_model)), texts, 300, Classifier, clock=clock)
    assert [len(m.rounds) for m in measurements] == [tuning_module.ROUNDS] * 2
    assert warmups == [len(texts[:: tuning_module.ROUNDS])] * 2
    made = tuning_module.Tuning({"cpu": "x", "threads": 1}, {"versions": {}}, "sample", "now", measurements, 0.5)
    assert made.chosen.variant == chosen
    assert bool(made.too_noisy) == noisy
    assert tuning_module.Tuning.from_json(made.to_json()).load_average == 0.5


@pytest.mark.parametrize("threads", [1, None], ids=["threads", "default-threads"])
def test_fast_that_follows_an_onnx_tuning_imports_neither_torch_nor_transformers(binary_model, threads):
    """With --threads or without (the scope then names the CPUs, not torch's count), and on --device auto where
    this torch cannot reach CUDA: the second run finds the ONNX tuning and export and never loads torch."""
    import subprocess
    import sys
    import textwrap

    from batchsent.model.classifier import Classifier
    from batchsent.runtime.cpu import this_cpu
    from batchsent.runtime.device import cuda_impossible

    device = "auto" if cuda_impossible() is not None else "cpu"
    described = Classifier(str(binary_model), device="cpu", weights=False)
    scope = tuning.scope_of(str(binary_model), described.max_length, tuning.scope_threads(threads), this_cpu())
    measured = [Measurement("float32", 520, 10.0, 1.0), Measurement("onnx int8", 520, 1.0, 1.0)]
    TuningStore().put(Tuning(scope, tuning.facts_of(described.identity), "sample", "now", measured, 0.5))
    script = textwrap.dedent(
        """
        import sys
        from batchsent.model.classifier import Classifier
        threads = None if sys.argv[3] == "None" else int(sys.argv[3])
        classifier = Classifier(sys.argv[1], device=sys.argv[2], precision="fast", threads=threads)
        classifier.predict(["a first review", "and a second, longer one"])
        print(classifier.variant.split(",")[0], "torch" in sys.modules, "transformers" in sys.modules)
        """
    )

    def run() -> list[str]:
        command = [sys.executable, "-c", script, str(binary_model), device, str(threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run()[:3] == ["onnx", "int8/per-channel", "True"]  # the first run exports, with torch
    assert run() == ["onnx", "int8/per-channel", "False", "False"]


def test_a_scope_without_threads_names_the_cpus_and_thread_variables_not_torch(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(tuning, "usable_cpus", lambda: 6)
    plain = tuning.scope_threads(None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (plain, tuning.scope_threads(None)) == ("default (6 CPUs)", "default (6 CPUs, OMP_NUM_THREADS=3)")
    assert tuning.scope_threads(4) == 4
    assert tuning.threads_text({"threads": 4}) == "4 threads"
    assert tuning.threads_text({"threads": plain}) == "default threads (6 CPUs)"


def test_the_too_noisy_note_names_the_variant_that_runs(binary_model, monkeypatch):
    from batchsent.model.classifier import Classifier

    measured = [
        Measurement("float32", 520, 10.0, 1.0, rounds=[50.0, 50.0, 50.0]),
        Measurement("bfloat16", 520, 5.0, 1.0, rounds=[50.0, 120.0, 120.0]),  # its first round alone lags
        Measurement("int8/int_mm", 520, 6.0, 1.0, rounds=[80.0, 80.0, 80.0]),
    ]
    monkeypatch.setattr(tuning, "measure", lambda *args, **kwargs: measured)
    notes: list[str] = []
    classifier = Classifier(str(binary_model), device="cpu", precision="fast", notes=notes.append)
    assert classifier.tuning.chosen.variant == "int8/int_mm"
    assert [note for note in notes if "too noisy" in note] == [
        "--precision fast: bfloat16 measured faster than float32 but not in every round; the machine was too noisy "
        "to tell, so int8/int_mm runs (batchsent tune on a quiet machine)"
    ]


def test_a_run_that_waits_for_the_tuning_lock_says_so_before_waiting(tmp_path):
    import threading
    import time

    store, said, entered = TuningStore(tmp_path / "tuning.sqlite"), [], threading.Event()

    def second_run() -> None:
        with store.exclusive(said.append):
            entered.set()

    with store.exclusive():  # another run, tuning
        second = threading.Thread(target=second_run)
        second.start()
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(said) == 1 and "another batchsent run on this machine is tuning" in said[0]
        assert not entered.wait(0.2)  # it waits while the lock is held
    second.join(30)
    assert entered.is_set() and len(said) == 1
    with store.exclusive(said.append):
        pass
    assert len(said) == 1  # a free lock is taken without a word


def test_the_warm_up_round_keeps_to_the_time_cap(binary_model, monkeypatch):
    """A warm-up that uses up the cap leaves the variants after it unwarmed and unmeasured (never chosen)."""
    import time
    import types

    from batchsent.model.classifier import Classifier
    from batchsent.runtime import tuning as tuning_module
    from batchsent.settings.options import ModelOptions

    monkeypatch.setattr(
        tuning_module, "candidates", lambda cpu: [tuning_module.FLOAT32, tuning_module.Candidate("int8/fbgemm")]
    )
    now = [0.0]
    monkeypatch.setattr(
        tuning_module, "time", types.SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter)
    )
    original = Classifier.predict

    def slow_first_pass(self, texts, pairs=None):
        now[0] += 100.0  # every pass takes the whole cap
        return original(self, texts, pairs)

    monkeypatch.setattr(Classifier, "predict", slow_first_pass)
    texts = [f"a fine film number {i}" for i in range(600)]
    measured = tuning_module.measure(ModelOptions(model=str(binary_model)), texts, 50.0, Classifier)
    # float32's warm-up used the cap: int8 is never warmed (without the check it would be, past the cap)
    assert [m.problem for m in measured] == ["stopped: time cap reached", "not measured: time cap reached"]
    assert now[0] == 100.0
