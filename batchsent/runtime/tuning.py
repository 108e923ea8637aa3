"""``batchsent tune`` and ``--precision fast`` on CPU: the variant measured fastest here, for this model.

A tuning times every variant this machine can run (torch float32; bfloat16 where the CPU
has it natively; each int8 kernel that is fast here; ONNX Runtime float32 and int8 when
installed) on at least 500 texts, and compares each variant's labels with float32's. The
fastest variant whose labels agree on at least 99.5% of the rows is what ``--precision
fast`` runs; float32 when none does.

Results live in the user's cache folder (``tuning.sqlite`` beside the file-hash memo), one
per scope: model, max length, threads and the CPU (model name and flags). A stored result
whose facts (torch, ONNX Runtime and transformers versions, the model's identity) differ
from now is ignored with one note and never used. Tunings take a lock, so two runs on one
machine do not time each other.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from batchsent.data import formats, readers
from batchsent.errors import BatchsentError, InputError, UsageError, first_line
from batchsent.runtime.cpu import INT8_DOT_FLAGS, CpuInfo, this_cpu
from batchsent.runtime.tune_sample import SAMPLE_ROWS, builtin_sample
from batchsent.settings.options import ModelOptions, usable_cpus
from batchsent.state import sqlite_db
from batchsent.state.identity import digest_memo_path, package_version
from batchsent.state.lock import waiting_lock

MIN_ROWS = 500  # agreement measured on fewer rows is not evidence enough
AGREEMENT_FLOOR = 0.995
AUTO_TIME_CAP_S = 300.0  # what --precision fast may spend tuning when nothing is stored
ROUNDS = 3  # the sample is scored in this many interleaved rounds: every variant scores round r's rows in turn
# Environment variables that change torch's default thread count (a scope without --threads names them).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
SPEEDUP_MARGIN = 1.10  # a variant replaces float32 only when at least this much faster in every round
# Each variant first scores one round's rows untimed, all variants loaded. Less did not do: on a 2-core Xeon with
# AMX, MiniLM's bfloat16 scored its first timed round at 87-97 rows/s against 138-200 in the next two, after a
# warm-up on 16 rows, on every 4th or 8th row, or on the 16 longest (never when only two or three variants were
# loaded), so a first tuning hardly ever chose it; after a whole round it scored 142-200 in its first.
WARMUP_ROUND = 0
# Bump when what a tuning measures changes: older results are then ignored (3: ONNX graphs fused, int8 per channel;
# 4: bfloat16 at its own, larger batch budget on AMX).
FORMAT = 4
BUILTIN_SAMPLE = f"built-in review mix ({SAMPLE_ROWS} rows)"

Notes = Callable[[str], None]


class BuildClassifier(Protocol):
    """Builds the classifier a candidate's options describe (``Classifier``, passed in by the model part): a
    tuning measures classifiers without importing the model part, which imports this module."""

    def __call__(self, options: ModelOptions, /, *, weights: bool = True) -> Any: ...


@dataclass(frozen=True)
class Candidate:
    """One variant a tuning times: the Classifier options that run it."""

    name: str
    backend: str = "torch"
    dtype: str = "float32"
    quantize: str | None = None
    int8_kernel: str | None = None

    def options(self, base: ModelOptions) -> ModelOptions:
        return replace(
            base.model_options(),
            precision=None,
            backend=self.backend,
            dtype=self.dtype,
            quantize=self.quantize,
            int8_kernel=self.int8_kernel,
        )


FLOAT32 = Candidate("float32")


def candidates(cpu: CpuInfo, torch_int8: bool = True) -> list[Candidate]:
    """Every variant worth timing on ``cpu``, float32 (the reference) first.

    bfloat16 only with native support, and ``_int_mm`` only with an int8 dot-product
    instruction: elsewhere they run, but 3-50x slower than float32, and would spend the
    time cap on a result known in advance. ``torch_int8=False`` leaves out the torch int8
    kernels, whose probe imports torch (a run that follows an ONNX tuning never needs it).
    """
    import importlib.util

    found = [FLOAT32]
    if cpu.flags is not None and cpu.native_bf16:
        found.append(Candidate("bfloat16", dtype="bfloat16"))
    if torch_int8:
        from batchsent.runtime.int8 import fbgemm_available, int8_matmul_available

        if cpu.is_x86 and cpu.has_any(INT8_DOT_FLAGS) and int8_matmul_available():
            found.append(Candidate("int8/int_mm", quantize="int8", int8_kernel="int_mm"))
        if cpu.is_x86 and cpu.has_any(frozenset({"avx2"})) and fbgemm_available():
            found.append(Candidate("int8/fbgemm", quantize="int8", int8_kernel="fbgemm"))
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        found += [Candidate("onnx float32", backend="onnx"), Candidate("onnx int8", backend="onnx", quantize="int8")]
    return found


@dataclass
class Measurement:
    """One variant's rows/s on the sample and the share of its labels equal to float32's."""

    variant: str
    rows: int = 0
    seconds: float = 0.0
    agreement: float | None = None
    problem: str | None = None  # why it was not (fully) measured
    rounds: list[float] = field(default_factory=list)  # rows/s in each round, in round order

    @property
    def rows_per_second(self) -> float:
        """The median of the rounds' rows/s: one round a busy machine slowed or sped up does not decide."""
        if self.rounds:
            return float(statistics.median(self.rounds))
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def eligible(self) -> bool:
        return self.problem is None and self.rows >= MIN_ROWS and (self.agreement or 0.0) >= AGREEMENT_FLOOR


@dataclass
class Tuning:
    """A stored tuning: where it holds (scope), what it was measured with (facts), and what it found."""

    scope: dict[str, Any]
    facts: dict[str, Any]
    sample: str
    measured_at: str
    measurements: list[Measurement] = field(default_factory=list)
    load_average: float | None = None  # the machine's 1-minute load average when the tuning began

    @property
    def reference(self) -> Measurement:
        return next((m for m in self.measurements if m.variant == FLOAT32.name), Measurement(FLOAT32.name))

    def beats_float32(self, measurement: Measurement) -> bool:
        """Faster than float32 by SPEEDUP_MARGIN in every round both ran (the rounds interleave, so a round that
        was slow for one was slow for all); a variant measured without rounds is compared by its mean."""
        reference = self.reference
        if measurement is reference or not measurement.eligible:
            return False
        pairs = list(zip(measurement.rounds, reference.rounds))
        if not pairs:
            return measurement.rows_per_second >= SPEEDUP_MARGIN * reference.rows_per_second > 0
        return all(ours >= SPEEDUP_MARGIN * theirs for ours, theirs in pairs)

    @property
    def chosen(self) -> Measurement:
        """The fastest variant (by median) that beats float32 in every round; float32 when none does."""
        winners = [m for m in self.measurements if self.beats_float32(m)]
        return max(winners, key=lambda m: m.rows_per_second) if winners else self.reference

    @property
    def too_noisy(self) -> list[str]:
        """Eligible variants faster than float32 by the median, but not in every round: the machine was too
        noisy to tell, so float32 (or the chosen variant) stays."""
        reference = self.reference.rows_per_second
        return [
            m.variant
            for m in self.measurements
            if m.eligible
            and m is not self.reference
            and not self.beats_float32(m)
            and m.rows_per_second >= SPEEDUP_MARGIN * reference > 0
        ]

    def candidate(self) -> Candidate:
        """The chosen variant's options, or float32 where this machine can no longer run it."""
        chosen = self.chosen.variant
        here = candidates(this_cpu(), torch_int8=chosen.startswith("int8/"))
        return next((c for c in here if c.name == chosen), FLOAT32)

    def speedup(self, measurement: Measurement) -> float | None:
        reference = next((m for m in self.measurements if m.variant == FLOAT32.name), None)
        if reference is None or not reference.rows_per_second or not measurement.rows_per_second:
            return None
        return measurement.rows_per_second / reference.rows_per_second

    def basis(self) -> dict[str, Any]:
        """What the manifest records: the variant and the measurement it came from."""
        chosen = self.chosen
        speedup = self.speedup(chosen)
        return {
            "variant": chosen.variant,
            "measured_at": self.measured_at,
            "sample": self.sample,
            "rows": chosen.rows,
            "rows_per_second": round(chosen.rows_per_second, 2),
            "vs_float32": None if speedup is None else round(speedup, 3),
            "agreement_with_float32": chosen.agreement,
            "cpu": self.scope["cpu"],
            "threads": self.scope["threads"],
            "versions": self.facts["versions"],
            "load_average": self.load_average,
            "rounds": len(chosen.rounds),
            "too_noisy": self.too_noisy,
        }

    def table(self) -> list[str]:
        """One line per variant, as ``batchsent tune`` and ``batchsent info`` print them."""
        chosen = self.chosen.variant
        lines = []
        for m in self.measurements:
            speedup = self.speedup(m)
            agreement = (
                "reference"
                if m.variant == FLOAT32.name
                else ("-" if m.agreement is None else f"{m.agreement:.2%} agree")
            )
            state = (
                "chosen"
                if m.variant == chosen
                else (
                    ("too noisy to tell: not faster in every round" if m.variant in self.too_noisy else "eligible")
                    if m.eligible
                    else _why_not(m)
                )
            )
            rate = f"{m.rows_per_second:,.1f} rows/s" if m.rows else "-"
            ratio = f"{speedup:.2f}x" if speedup is not None else "-"
            lines.append(f"  {m.variant:<13} {rate:>16} {ratio:>6}  {agreement:<14} {m.rows:>5} rows  {state}")
        return lines

    def to_json(self) -> str:
        return json.dumps(
            {
                "scope": self.scope,
                "facts": self.facts,
                "sample": self.sample,
                "measured_at": self.measured_at,
                "load_average": self.load_average,
                "measurements": [asdict(m) for m in self.measurements],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Tuning:
        data = json.loads(text)
        return cls(
            data["scope"],
            data["facts"],
            data["sample"],
            data["measured_at"],
            [Measurement(**m) for m in data["measurements"]],
            data.get("load_average"),
        )


def _why_not(m: Measurement) -> str:
    if m.problem:
        return m.problem
    if m.rows < MIN_ROWS:
        return f"not eligible: measured on {m.rows} rows (fewer than {MIN_ROWS})"
    return f"not eligible: below {AGREEMENT_FLOOR:.1%} agreement"


def model_scope_ref(model_ref: str) -> str:
    """A local model folder by its absolute path, a Hub id as given."""
    path = Path(model_ref).expanduser()
    return str(path.resolve()) if path.is_dir() else model_ref


def scope_of(model_ref: str, max_length: int, threads: int | str, cpu: CpuInfo) -> dict[str, Any]:
    """Where a tuning holds: this model at this max length, with this many threads, on this CPU."""
    flags = hashlib.sha256(" ".join(sorted(cpu.flags or ())).encode()).hexdigest()[:16]
    return {
        "format": FORMAT,
        "model": model_scope_ref(model_ref),
        "max_length": max_length,
        "threads": threads,
        "cpu": f"{cpu.model} ({cpu.machine})",
        "cpu_flags": flags,
    }


def scope_threads(threads: int | None) -> int | str:
    """The threads a tuning's scope names: --threads, else what the libraries' default count follows from (the
    CPUs this process may use and the thread variables set), so that a run without --threads need not import
    torch to find its tuning (an ONNX Runtime variant then runs without it)."""
    if threads is not None:
        return threads
    variables = "".join(f", {name}={os.environ[name]}" for name in THREAD_VARIABLES if name in os.environ)
    return f"default ({usable_cpus()} CPUs{variables})"


def threads_text(scope: dict[str, Any]) -> str:
    """A scope's threads as a reader says them: "2 threads", "default threads (2 CPUs)"."""
    threads = scope["threads"]
    return f"{threads} threads" if isinstance(threads, int) else str(threads).replace("default", "default threads", 1)


def facts_of(identity: dict[str, Any]) -> dict[str, Any]:
    """What a tuning was measured with: library versions and the model's identity (its files' content)."""
    versions = {name: package_version(name) for name in ("torch", "onnxruntime", "transformers")}
    return {"versions": versions, "model": identity}


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two tunings' facts, in words: "torch 2.12.0, now 2.13.0" or "the model's files"."""
    changes = [
        f"{name} {old['versions'].get(name) or 'absent'}, now {version or 'absent'}"
        for name, version in new["versions"].items()
        if old["versions"].get(name) != version
    ]
    if old.get("model") != new["model"]:
        changes.append("another version of the model")
    return "; ".join(changes) or "other facts"


def tuning_store_path() -> Path:
    return digest_memo_path().with_name("tuning.sqlite")


class TuningStore:
    """The stored tunings of this user: one row per scope (SQLite, in the user's cache folder)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or tuning_store_path()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite_db.connect(self.path)
            connection.execute("CREATE TABLE IF NOT EXISTS tunings (scope TEXT PRIMARY KEY, tuning TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as error:
            raise UsageError(f"{self.path}: cannot open the tuning store ({first_line(error)})") from None
        try:
            yield connection
        except sqlite3.Error as error:
            raise UsageError(f"{self.path}: cannot read or write the tuning store ({first_line(error)})") from None
        finally:
            connection.close()

    @staticmethod
    def _key(scope: dict[str, Any]) -> str:
        return json.dumps(scope, sort_keys=True)

    def get(self, scope: dict[str, Any]) -> Tuning | None:
        with self._connect() as connection:
            row = connection.execute("SELECT tuning FROM tunings WHERE scope = ?", (self._key(scope),)).fetchone()
        if row is None:
            return None
        try:
            return Tuning.from_json(row[0])
        except (ValueError, KeyError, TypeError):
            return None  # a row this version cannot read is as good as none

    def put(self, tuning: Tuning) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO tunings VALUES (?, ?)", (self._key(tuning.scope), tuning.to_json())
            )

    def all(self) -> list[Tuning]:
        if not self.path.is_file():
            return []
        with self._connect() as connection:
            rows = connection.execute("SELECT tuning FROM tunings ORDER BY scope").fetchall()
        found = []
        for (text,) in rows:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                found.append(Tuning.from_json(text))
        return found

    def check_writable(self) -> None:
        """Refuse, before minutes of measuring, a store that cannot take the result (damaged, read-only)."""
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock: fails where no write could succeed
            connection.execute("ROLLBACK")

    @contextlib.contextmanager
    def exclusive(self, notes: Notes | None = None) -> Iterator[None]:
        """Held while a tuning runs: a second run on this machine waits, saying so in one note, then finds the
        stored result."""
        lock = self.path.with_name("tuning.lock")

        def waiting() -> None:
            if notes is not None:
                notes(
                    f"another batchsent run on this machine is tuning (it holds {lock}); waiting for it, at most "
                    f"{AUTO_TIME_CAP_S:.0f} s when it is a --precision fast run"
                )

        with contextlib.ExitStack() as held:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                held.enter_context(waiting_lock(lock, waiting))
            except OSError as error:
                raise UsageError(
                    f"{lock}: cannot take the tuning lock ({first_line(error)}); set BATCHSENT_STATE_DIR to "
                    "a folder this user can write"
                ) from None
            yield


def sample_texts(path: str | None, column: str = "text") -> tuple[list[str], str]:
    """The texts to tune on (blank rows dropped) and how to name them; at least MIN_ROWS or a UsageError."""
    if path is None:
        return builtin_sample(), BUILTIN_SAMPLE
    from batchsent.data.storage import is_url, redact

    source: Path | str = path if is_url(path) else Path(path)
    formats.check_input(source)
    reader = readers.open_reader(source)
    try:
        index = reader.text_column(column)
        texts = [
            text
            for batch in reader.batches(4096)
            for text in readers.text_values(batch.column(index))
            if text is not None and text.strip()
        ]
    finally:
        reader.close()
    shown = redact(path)  # credentials in a URL are never printed or stored
    if len(texts) < MIN_ROWS:
        raise UsageError(
            f"{shown}: {len(texts)} non-blank texts in column {column!r}; tuning needs at least {MIN_ROWS}, "
            "so that agreement with float32 means something"
        )
    return texts, f"{shown} ({len(texts)} rows)"


def measure(
    base: ModelOptions,
    texts: Sequence[str],
    time_cap: float,
    build: BuildClassifier,
    notes: Notes | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Measurement]:
    """Time every candidate on ``texts`` and compare its labels with float32's, within ``time_cap`` seconds.

    The texts are dealt into ROUNDS slices; in each round every candidate scores that round's slice, the order
    turning by one each round, so a burst of load elsewhere on the machine slows every variant of a round alike
    and each variant's speed is the median of its rounds (``Tuning.beats_float32`` compares them round by round).
    """
    deadline = time.monotonic() + time_cap
    measurements = [Measurement(candidate.name) for candidate in candidates(this_cpu())]
    loaded: dict[str, Any] = {}
    labels: dict[str, list[list[int]]] = {m.variant: [] for m in measurements}
    for candidate, measurement in zip(candidates(this_cpu()), measurements):
        if time.monotonic() >= deadline:
            measurement.problem = "not measured: time cap reached"
            continue
        try:
            loaded[candidate.name] = build(candidate.options(base))
        except BatchsentError as error:
            measurement.problem = f"cannot run here: {first_line(error)}"
    order = [m for m in measurements if m.variant in loaded]
    for measurement in order:  # an untimed round first: a variant's first batches are slow (see WARMUP_ROUND)
        if time.monotonic() >= deadline:
            measurement.problem = "not measured: time cap reached"
            continue
        try:
            loaded[measurement.variant].predict(list(texts[WARMUP_ROUND::ROUNDS]))
        except BatchsentError as error:
            measurement.problem = f"cannot run here: {first_line(error)}"
    for round_index in range(ROUNDS):
        turn = round_index % len(order) if order else 0
        for measurement in order[turn:] + order[:turn]:
            if measurement.problem:
                continue
            if time.monotonic() >= deadline:
                measurement.problem = "stopped: time cap reached"
                continue
            rows = list(texts[round_index::ROUNDS])
            began = clock()
            scores = loaded[measurement.variant].predict(rows)
            seconds = clock() - began
            measurement.seconds += seconds
            measurement.rounds.append(len(rows) / seconds if seconds > 0 else 0.0)
            labels[measurement.variant].append(scores.probabilities.argmax(axis=1).tolist())
    loaded.clear()
    gc.collect()
    reference = labels[FLOAT32.name]
    for measurement in measurements:
        ours = labels[measurement.variant]
        measurement.rows = sum(len(part) for part in ours)
        if measurement.variant == FLOAT32.name:
            measurement.agreement = 1.0 if ours else None
        elif reference:
            both = [(a, b) for mine, theirs in zip(ours, reference) for a, b in zip(mine, theirs)]
            measurement.agreement = sum(a == b for a, b in both) / len(both) if both else None
            measurement.rows = len(both)
        if notes is not None and measurement.rounds:
            notes(
                f"tune: {measurement.variant} {measurement.rows_per_second:,.1f} rows/s (median of "
                f"{len(measurement.rounds)} rounds)"
            )
    return measurements


def load_average() -> float | None:
    """The 1-minute load average (None where the system does not say): stored with a tuning, to judge it by."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_tuning(
    base: ModelOptions,
    texts: Sequence[str],
    sample: str,
    time_cap: float,
    build: BuildClassifier,
    notes: Notes | None = None,
) -> Tuning:
    """Measure the candidates for ``base``'s model and store the result (replacing the scope's old one)."""
    if len(texts) < MIN_ROWS:
        raise InputError(f"tuning needs at least {MIN_ROWS} texts, got {len(texts)}")
    described = build(FLOAT32.options(base), weights=False)  # tokenizer and config: the scope and facts
    scope = scope_of(base.model, described.max_length, scope_threads(base.threads), this_cpu())
    facts = facts_of(described.identity)
    fixed = replace(base.model_options(), max_length=described.max_length)
    if notes is not None:
        notes(f"measuring the variants of {base.model} on {sample}, at most {time_cap:g} s")
    store = TuningStore()
    store.check_writable()
    with store.exclusive(notes):
        load = load_average()
        measurements = measure(fixed, texts, time_cap, build, notes)
        tuning = Tuning(scope, facts, sample, datetime.now(UTC).isoformat(timespec="seconds"), measurements, load)
        store.put(tuning)
    return tuning


def fast_variant(
    base: ModelOptions, identity: dict[str, Any], max_length: int, build: BuildClassifier, notes: Notes | None = None
) -> Tuning:
    """The tuning ``--precision fast`` follows for ``base``'s model on this CPU: stored, or measured now.

    Measured now (once, within AUTO_TIME_CAP_S, on the built-in sample) when nothing is
    stored for this scope or what is stored was measured with other versions; one note says so.
    """
    scope = scope_of(base.model, max_length, scope_threads(base.threads), this_cpu())
    facts = facts_of(identity)
    store = TuningStore()
    stored = store.get(scope)  # a current tuning needs no lock (and no write: a read-only state folder serves it)
    if stored is not None and stored.facts == facts:
        return stored
    store.check_writable()
    with store.exclusive(notes):
        stored = store.get(scope)  # another run may have measured it while this one waited
        if stored is not None and stored.facts == facts:
            return stored
        why = (
            f"the stored tuning was measured with {describe_change(stored.facts, facts)}, so it is ignored"
            if stored is not None
            else "no tuning is stored for it on this CPU"
        )
        if notes is not None:
            notes(
                f"--precision fast: {why}; measuring the variants of {base.model} on the {BUILTIN_SAMPLE}, "
                f"at most {AUTO_TIME_CAP_S:.0f} s, once (batchsent tune does this ahead of time)"
            )
        fixed = replace(base.model_options(), precision=None, max_length=max_length)
        load = load_average()
        measurements = measure(fixed, builtin_sample(), AUTO_TIME_CAP_S, build)
        tuning = Tuning(
            scope, facts, BUILTIN_SAMPLE, datetime.now(UTC).isoformat(timespec="seconds"), measurements, load
        )
        if notes is not None and tuning.too_noisy:
            notes(
                f"--precision fast: {', '.join(tuning.too_noisy)} measured faster than float32 but not in every "
                f"round; the machine was too noisy to tell, so {tuning.chosen.variant} runs (batchsent tune on a quiet "
                "machine)"
            )
        store.put(tuning)
        return tuning
