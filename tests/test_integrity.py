"""Nothing lost, nothing mixed, nothing leaked: careless and hostile runs that must end in one line (or succeed
without harm), on both engines where the rule is theirs to share."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
from conftest import build_tiny_model, fail_third_chunk, write_corpus
from test_guarantees import one_error_line, score
from typer.testing import CliRunner

from batchsent.cache.store import PredictionCache
from batchsent.cli import app
from batchsent.engine.summary import RunTotals
from batchsent.settings.options import usable_cpus
from batchsent.state.checkpoint import Checkpoint

ENGINES = ["local", "ray"]

# --- every file a folder run writes is checked against every input, on both engines ------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_folder_output_that_lands_on_an_input_is_refused_and_the_input_kept(
    tmp_path, binary_model, monkeypatch, engine
):
    (tmp_path / "d" / "d").mkdir(parents=True)
    (tmp_path / "d" / "x.csv").write_text("text\nI loved it\n")
    (tmp_path / "d" / "d" / "x.csv").write_text("text\nI hated it\n")
    monkeypatch.chdir(tmp_path)
    result = score("d", "-o", tmp_path, "--overwrite", "--model", binary_model, "--engine", engine)
    one_error_line(result, 2, "the output of d/d/x.csv", "is the input file d/x.csv", "never writes over its input")
    assert (tmp_path / "d" / "x.csv").read_text() == "text\nI loved it\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_an_output_inside_the_input_folder_is_refused(tmp_path, binary_model, engine):
    folder = tmp_path / "in"
    write_corpus(folder / "a.csv" if folder.mkdir() is None else folder, 5, seed=1, longest_words=5)
    result = score(folder, "-o", folder / "out", "--model", binary_model, "--engine", engine)
    one_error_line(result, 2, "lies inside the input folder", "the next run would read it")
    assert sorted(p.name for p in folder.iterdir()) == ["a.csv"]


@pytest.mark.parametrize("engine", ENGINES)
def test_the_input_folder_inside_the_output_folder_is_refused_where_an_output_lands_in_it(
    tmp_path, binary_model, monkeypatch, engine
):
    (tmp_path / "d" / "d").mkdir(parents=True)
    (tmp_path / "d" / "d" / "y.csv").write_text("text\nfine\n")
    monkeypatch.chdir(tmp_path)
    result = score("d", "-o", tmp_path, "--model", binary_model, "--engine", engine)  # d/d/y.csv -> ./d/y.csv
    one_error_line(result, 2, "the output of d/d/y.csv", "lies inside the input folder d")
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "d").rglob("*")) == ["d/d", "d/d/y.csv"]


def test_scoring_the_current_folder_names_its_output_after_it(tmp_path, binary_model, monkeypatch):
    folder = tmp_path / "exports"
    folder.mkdir()
    write_corpus(folder / "a.csv", 4, seed=1, longest_words=5)
    monkeypatch.chdir(folder)
    for spec in (".", "./"):
        result = score(spec, "--model", binary_model, "--overwrite")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "exports.scored" / "a.csv").is_file()


# --- a model is what it claims to be ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_model_folder_without_its_tokenizer_is_one_line(tmp_path, binary_model, engine):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(binary_model / name, bare / name)
    source = write_corpus(tmp_path / "in.csv", 5, seed=1, longest_words=5)
    result = score(source, "--model", bare, "-o", tmp_path / "out.csv", "--engine", engine)  # Ray: before it starts
    one_error_line(result, 2, f"model '{bare}' has no tokenizer", "tokenizer.save_pretrained")
    assert not (tmp_path / "out.csv").exists()


def _hub_cache(root: Path, model: Path, commits: list[str]) -> Path:
    """A Hugging Face cache holding ``org/sentiment`` at each commit (one model folder per commit), main at the first."""
    repository = root / "models--org--sentiment"
    for commit, source in zip(commits, [model] * len(commits)):
        shutil.copytree(source, repository / "snapshots" / commit)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commits[0])
    return root


def test_a_hub_model_is_keyed_by_the_commit_it_loaded_and_resume_refuses_another(
    tmp_path, binary_model, tiny_models, monkeypatch
):
    first, second = "1" * 40, "2" * 40
    cache = _hub_cache(tmp_path / "hub", binary_model, [first, second])
    shutil.rmtree(cache / "models--org--sentiment" / "snapshots" / second)  # main moves to other weights later
    shutil.copytree(tiny_models["three"].parent / "binary", cache / "models--org--sentiment" / "snapshots" / second)
    build_tiny_model(cache / "models--org--sentiment" / "snapshots" / second, "binary", seed=7)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    source = write_corpus(tmp_path / "in.csv", 200, seed=2, longest_words=20)
    output, manifest = tmp_path / "out.csv", tmp_path / "run.json"
    args = [source, "--model", "org/sentiment", "-o", output, "--chunk-rows", "50", "--manifest", manifest]
    fail_third_chunk(monkeypatch, "node rebooted")
    assert score(*args).exit_code == 1
    monkeypatch.undo()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert json.loads(manifest.read_text())["model"]["revision"] == first
    (cache / "models--org--sentiment" / "refs" / "main").write_text(second)
    result = score(*args, "--resume")
    one_error_line(result, 2, "cannot resume", "model.revision", first, second)
    (cache / "models--org--sentiment" / "refs" / "main").write_text(first)
    assert score(*args, "--resume").exit_code == 0


def test_weights_replaced_while_a_cached_run_loads_them_are_refused_and_not_cached(tmp_path, binary_model, monkeypatch):
    from batchsent.model.loading import Pretrained

    model = tmp_path / "model"
    shutil.copytree(binary_model, model)
    other = build_tiny_model(tmp_path / "other", "binary", seed=11)
    original = Pretrained.load_model

    def swapped_first(self):
        shutil.copy(other / "model.safetensors", model / "model.safetensors")  # between the key and the weights
        return original(self)

    monkeypatch.setattr(Pretrained, "load_model", swapped_first)
    source = write_corpus(tmp_path / "in.csv", 20, seed=2, longest_words=10)
    cache = tmp_path / "pc.sqlite"
    result = score(source, "--model", model, "--cache", cache, "-o", tmp_path / "out.csv")
    one_error_line(result, 2, f"model '{model}' changed while this run loaded it", "model.safetensors")
    assert PredictionCache(cache, create=False).stats()["entries"] == 0
    assert not (tmp_path / "out.csv").exists()


# --- inputs are keyed by content --------------------------------------------------------------------------------


def test_resume_refuses_an_input_edited_in_the_middle_with_its_size_and_mtime_kept(tmp_path, binary_model, monkeypatch):
    source = write_corpus(tmp_path / "in.csv", 400, seed=5, longest_words=30)
    output = tmp_path / "out.csv"
    args = [source, "--model", binary_model, "-o", output, "--chunk-rows", "50"]
    fail_third_chunk(monkeypatch, "node rebooted")
    assert score(*args).exit_code == 1
    monkeypatch.undo()
    stat = source.stat()
    data = bytearray(source.read_bytes())
    middle = data.index(b"\n200,") + 5
    data[middle + 1 : middle + 4] = b"zzz" if data[middle + 1 : middle + 4] != b"zzz" else b"yyy"  # same size
    source.write_bytes(bytes(data))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size and source.stat().st_mtime_ns == stat.st_mtime_ns
    one_error_line(score(*args, "--resume"), 2, "cannot resume", "input.sha256")
    assert Checkpoint(output).exists()


# --- credentials in any URL, numbers bounded by the machine --------------------------------------------------------


@pytest.mark.parametrize("where", ["INPUT", "--output", "--manifest", "--report", "--cache"])
@pytest.mark.parametrize(
    "url",
    [
        "https://AK:SEC@RET@host/x.csv",
        "http://u:SEC@RET@h/x.csv",
        "hf://u:SEC@RET@x/y.csv",
        "file://u:SEC@RET@x/y.csv",
        "hdfs://u:SEC@RET@x/y.csv",
    ],
)
def test_an_unsupported_url_is_one_line_that_never_shows_its_credentials(
    tmp_path, binary_model, where, url, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    source = write_corpus(tmp_path / "in.csv", 3, seed=1, longest_words=5)
    manifest = tmp_path / "run.json"
    args = [url] if where == "INPUT" else [source, where, url]
    extra = ["--manifest", manifest] if where != "--manifest" else []
    result = score(*args, "--model", binary_model, *extra)
    line = one_error_line(result, 2, "is not supported", "***@")
    assert "SEC" not in result.output and "RET" not in line
    assert not manifest.exists() or "SEC" not in manifest.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.csv", *(["run.json"] if manifest.exists() else [])]
    )


def test_a_secret_holding_at_signs_is_redacted_whole():
    from batchsent.data.storage import redact

    assert redact("error: s3://AK:SEC@RETX@bkt/x.csv failed") == "error: s3://***@bkt/x.csv failed"
    assert redact("https:/user:pw@host/x (a URL through a path)") == "https:/***@host/x (a URL through a path)"
    assert redact("s3://bucket/a@b.csv") == "s3://bucket/a@b.csv"


@pytest.mark.parametrize(
    "option",
    [
        ["--threads", "100000"],
        ["--chunk-rows", str(10**17)],
        ["--token-budget", str(10**15)],
        ["--batch-size", str(10**15)],
        ["--engine", "ray", "--token-budget", str(10**15)],
        ["--engine", "ray", "--workers", "100000"],
        ["--engine", "ray", "--gpus-per-worker", "1"],
    ],
)
def test_numbers_past_what_the_machine_has_are_one_line(tmp_path, binary_model, option):
    if option[-1] == "1" and __import__("torch").cuda.device_count():
        pytest.skip("this machine has a GPU")
    source = write_corpus(tmp_path / "in.csv", 3, seed=1, longest_words=5)
    result = score(source, "--model", binary_model, *option)
    one_error_line(result, 2, option[-2])
    says_the_bound = ("give at most", str(usable_cpus()), "GPUs", "1,000,000")  # memory, CPUs, GPUs, chunk cap
    assert any(bound in result.output for bound in says_the_bound)


def test_tune_threads_are_bounded_too(binary_model):
    from typer.testing import CliRunner

    from batchsent.cli import app

    result = CliRunner().invoke(app, ["tune", "--model", str(binary_model), "--threads", "100000"])
    one_error_line(result, 2, "--threads 100000", f"at most {usable_cpus()}")


def test_a_ray_address_in_the_environment_that_does_not_answer_is_one_line(tmp_path, binary_model, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    source = write_corpus(tmp_path / "in.csv", 3, seed=1, longest_words=5)
    one_error_line(score(source, "--model", binary_model, "--engine", "ray"), 2, "$RAY_ADDRESS", "cannot reach")


# --- a killed run's leftovers are cleared by the next one ------------------------------------------------------------


def test_a_copy_left_by_a_kill_at_the_final_rename_is_removed_by_the_next_run(tmp_path, binary_model):
    source = write_corpus(tmp_path / "k8.csv", 10, seed=1, longest_words=5)
    output = tmp_path / "out.csv"
    (tmp_path / ".out.csv.abc123.partial").write_text("a whole copy, never renamed")
    assert score(source, "--model", binary_model, "-o", output).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k8.csv", "out.csv"]


# --- object outputs: one writer, a lease; a merge never publishes fewer rows than the input has ------------------


@pytest.fixture
def s3_lease(s3_env, monkeypatch):
    """moto's environment for in-process storage calls, and a short settle time."""
    env, client = s3_env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("batchsent.state.lock.SETTLE_SECONDS", 0.2)
    return client


def test_a_live_lease_refuses_a_second_writer_and_is_gone_after_the_first(s3_lease):
    from batchsent.errors import OutputError
    from batchsent.state.lock import ObjectLease

    with ObjectLease("s3://nightly/out"):
        assert s3_lease.get_object(Bucket="nightly", Key=".out.batchsent-lease.json")["Body"].read()
        with pytest.raises(OutputError, match=r"another batchsent run \(.*pid \d+\) is writing this output"):
            ObjectLease("s3://nightly/out").__enter__()
    assert not s3_lease.list_objects_v2(Bucket="nightly").get("Contents")
    with ObjectLease("s3://nightly/out"):  # free again
        pass


def test_a_lease_left_by_a_dead_run_on_this_host_is_taken_over_at_once(s3_lease):
    import socket
    import subprocess
    import sys

    from batchsent.state.lock import ObjectLease

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    lease = {
        "token": "x",
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "renewed_at": __import__("time").time(),
    }
    s3_lease.put_object(Bucket="nightly", Key=".out.batchsent-lease.json", Body=json.dumps(lease).encode())
    with ObjectLease("s3://nightly/out") as held:
        held.check()


def test_a_lease_taken_over_stops_the_publish(s3_lease, monkeypatch):
    import time

    from batchsent.errors import OutputError
    from batchsent.state.lock import ObjectLease

    monkeypatch.setattr("batchsent.state.lock.RENEW_SECONDS", 0.1)
    with ObjectLease("s3://nightly/out") as held:
        s3_lease.put_object(Bucket="nightly", Key=".out.batchsent-lease.json", Body=b'{"token": "another run"}')
        time.sleep(0.5)
        with pytest.raises(OutputError, match="taken over by another run"):
            held.check()


def test_a_merge_short_of_the_inputs_rows_publishes_nothing(tmp_path):
    import numpy as np
    import pyarrow as pa
    from pyarrow import fs

    from batchsent.data.storage import write_parquet_atomically
    from batchsent.engine.ray import dataset as ray_dataset
    from batchsent.errors import ScoringError

    part = pa.table(
        {
            "text": ["a", "b"],
            "s_label": ["X", "Y"],
            "s_score": pa.array([0.5, 0.6], pa.float32()),
            ray_dataset.FILE: pa.array(np.zeros(2, np.int32)),
            ray_dataset.ROW: pa.array(np.arange(2)),
            ray_dataset.truncated_column(0): pa.array([False, False]),
        }
    )
    write_parquet_atomically(fs.LocalFileSystem(), str(tmp_path / "parts" / "000000"), "000000000000.parquet", part)
    schema = pa.schema([("text", pa.string())])
    added = ray_dataset.added_fields(str(tmp_path / "parts"), 1, [schema])
    assert [field.name for field in added] == ["s_label", "s_score"]
    with pytest.raises(ScoringError, match="hold 2 of its 3 rows"):
        ray_dataset.merge_parts(
            str(tmp_path / "parts"),
            0,
            "in.csv",
            schema,
            added,
            ["s_label"],
            tmp_path / "out.csv",
            3,
            RunTotals(),
        )
    assert not (tmp_path / "out.csv").exists()
    ray_dataset.merge_parts(
        str(tmp_path / "parts"),
        1,
        "empty.csv",
        schema,
        added,
        ["s_label"],
        tmp_path / "empty.csv",
        0,
        RunTotals(),
    )  # a file with no rows gets the prediction columns all the same
    assert (tmp_path / "empty.csv").read_text() == '"text","s_label","s_score"\n'


def test_a_prefix_is_published_with_success_last_and_a_cut_publish_leaves_none(s3_lease, tmp_path, monkeypatch):
    from batchsent.engine.ray import driver as ray_engine
    from batchsent.settings import naming

    client = s3_lease
    for key in ("scored/a.csv", "scored/old-only.csv", "scored/_SUCCESS"):  # an older output under the prefix
        client.put_object(Bucket="nightly", Key=key, Body=b"old")
    staging = naming.staging_folder("s3://nightly/scored")
    assert staging == naming.staging_folder("s3://nightly/scored")  # one name per output: the next run clears it
    (staging / "sub").mkdir(parents=True)
    for name in ("a.csv", "sub/b.csv"):
        (staging / name).write_text(f"new {name}\n")
    uploaded = []
    original = ray_engine.upload

    def cut_after_the_first(local, location):
        if uploaded:
            raise KeyboardInterrupt  # the run is killed while it uploads
        uploaded.append(location.url)
        original(local, location)

    monkeypatch.setattr(ray_engine, "upload", cut_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        ray_engine._publish(staging, "s3://nightly/scored", [Path("a.csv"), Path("sub/b.csv")])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="nightly").get("Contents", [])}
    assert "scored/_SUCCESS" not in keys  # readers that wait for it see no partial set
    monkeypatch.setattr(ray_engine, "upload", original)
    ray_engine._publish(staging, "s3://nightly/scored", [Path("a.csv"), Path("sub/b.csv")])
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="nightly").get("Contents", []) if o["Key"][-1] != "/")
    assert keys == ["scored/_SUCCESS", "scored/a.csv", "scored/sub/b.csv"]  # the older output's object is gone
    assert client.get_object(Bucket="nightly", Key="scored/sub/b.csv")["Body"].read() == b"new sub/b.csv\n"
    shutil.rmtree(staging)


# --- awkward input and careless options: one line, before the model where it can be -------------------------------


@pytest.mark.parametrize("case", ["header-not-utf8", "utf16", "bad-row-not-utf8"])
def test_undecodable_csv_text_is_one_line_naming_its_line(tmp_path, binary_model, case, capfd):
    source = tmp_path / "in.csv"
    if case == "header-not-utf8":
        source.write_bytes(b"te\xffxt,id\nhello,1\n")
    elif case == "utf16":
        source.write_text("text,id\nhello,1\n", encoding="utf-16")
    else:
        source.write_bytes(b'text,id\n"ok",1\n"b\xffad",2,3,4\n')
    result = score(source, "--model", binary_model, "-o", tmp_path / "out.csv")
    fragment = {
        "header-not-utf8": "line 1: bytes that are not valid UTF-8",
        "utf16": "UTF-16 text",
        "bad-row-not-utf8": "line 3: bytes that are not valid UTF-8",
    }[case]
    one_error_line(result, 2, fragment)
    assert "Exception ignored" not in capfd.readouterr().err
    report = CliRunner().invoke(app, ["report", str(source)]) if case == "header-not-utf8" else None
    assert report is None or (report.exit_code == 2 and "Traceback" not in report.output)


@pytest.mark.parametrize("option", ["INPUT", "-o", "--manifest", "--cache"])
def test_a_loop_of_symbolic_links_is_one_line(tmp_path, binary_model, option):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    source = write_corpus(tmp_path / "in.csv", 3, seed=1, longest_words=5)
    args = [tmp_path / "loop1"] if option == "INPUT" else [source, option, tmp_path / "loop1"]
    one_error_line(score(*args, "--model", binary_model), 2, "loop1", "cannot be followed")


@pytest.mark.parametrize("content", [b'in\xffput = "a.csv"\n', bytes(range(256))])
def test_a_job_file_that_is_not_utf8_text_is_one_line(tmp_path, content):
    job = tmp_path / "job.toml"
    job.write_bytes(content)
    one_error_line(CliRunner().invoke(app, ["score", "--config", str(job)]), 2, "not a UTF-8 text file")


def test_a_csv_cell_longer_than_the_parsing_block_is_read_whole(tmp_path, binary_model):
    big = "word " * 600_000  # 3 MB, past pyarrow's 1 MiB block
    source = tmp_path / "in.csv"
    source.write_text(f'id,text\n1,"short"\n2,"{big}"\n3,"another"\n')
    result = score(source, "--model", binary_model, "-o", tmp_path / "out.parquet", "--chunk-rows", "2")
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == ["1", "2", "3"] and table.column("text")[1].as_py() == big


def test_a_huge_cell_is_cut_before_tokenizing_and_scores_as_the_whole_text(binary_classifier):
    import numpy as np

    from batchsent.model.encoding import CUT_CHARS_PER_TOKEN

    limit = binary_classifier.max_length * CUT_CHARS_PER_TOKEN
    texts = [
        "short",
        "great film but boring " * (limit // 5),
        " " * (limit + 10) + "hello world " * 80,
        "x" * (limit - 3) + " fine" * 400,
        "é" * (limit + 1),
    ]
    chunk = binary_classifier.tokenized(texts)
    whole = binary_classifier._encoder.encode_batch(texts, add_special_tokens=True)  # no cut: the reference
    for row, encoding in enumerate(whole):
        start, length = chunk.offsets[row], chunk.lengths[row]
        assert chunk.flat_ids[start : start + length].tolist() == encoding.ids, row
        assert bool(chunk.truncated[row]) == bool(encoding.overflowing), row
    np.testing.assert_allclose(
        binary_classifier.predict(texts).probabilities,
        binary_classifier.predict([t[: limit * 4] for t in texts]).probabilities,
        atol=1e-6,
    )


def test_a_parquet_column_a_csv_cannot_hold_is_refused_before_the_model_loads(tmp_path, binary_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["good", "bad"], "meta": [{"a": 1}, {"a": 2}]}), source)
    result = score(source, "--model", tmp_path / "no-model", "-o", tmp_path / "out.csv")  # no model: checked first
    one_error_line(result, 2, "column 'meta' holds struct", "write .parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
    assert score(source, "--model", binary_model, "-o", tmp_path / "out.parquet").exit_code == 0


def test_fast_reads_a_current_tuning_without_its_lock_and_refuses_a_damaged_store_before_measuring(
    tmp_path, binary_model, monkeypatch
):
    from batchsent.runtime.tuning import TuningStore

    monkeypatch.setenv("BATCHSENT_STATE_DIR", str(tmp_path / "state"))
    source = write_corpus(tmp_path / "in.csv", 5, seed=1, longest_words=5)
    sample = write_corpus(tmp_path / "sample.csv", 520, seed=2, longest_words=30)
    tune = CliRunner().invoke(app, ["tune", "--model", str(binary_model), "--sample", str(sample), "--time-cap", "60"])
    assert tune.exit_code == 0, tune.output
    lock = TuningStore().path.with_name("tuning.lock")
    lock.unlink(missing_ok=True)
    lock.mkdir()  # a lock that cannot be opened, as in a read-only state folder (root writes anywhere)
    assert score(source, "--model", binary_model, "--precision", "fast", "-o", tmp_path / "a.csv").exit_code == 0
    lock.rmdir()
    TuningStore().path.write_bytes(b"not a database" * 100)
    started = __import__("time").monotonic()
    again = CliRunner().invoke(app, ["tune", "--model", str(binary_model), "--sample", str(sample)])
    one_error_line(again, 2, "tuning.sqlite", "tuning store")
    assert __import__("time").monotonic() - started < 60  # refused before the measuring, which takes minutes
    info = CliRunner().invoke(app, ["info"])
    assert info.exit_code == 0 and "tuning store:" in info.output and "move it aside" in info.output


def test_az_without_credentials_is_one_line_naming_the_url(tmp_path, binary_model, monkeypatch, capfd):
    for name in [key for key in os.environ if key.startswith(("AZURE_", "MSI_", "IDENTITY_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "batchsenttest")
    monkeypatch.setenv("PATH", str(tmp_path))  # no `az` CLI to ask
    result = score("az://container/x.csv", "--model", binary_model, "-o", tmp_path / "out.csv")
    assert result.exit_code == 2, result.output
    assert "az://container/x.csv" in result.output and "Traceback" not in result.output
    assert "az: not found" not in capfd.readouterr().err


# --- messages that say what happened ---------------------------------------------------------------------------


def test_a_model_naming_two_classes_alike_says_so(tmp_path, binary_model):
    from conftest import relabelled

    twin = relabelled(binary_model, tmp_path / "twin", ["POS", "POS"])
    source = write_corpus(tmp_path / "in.csv", 3, seed=1, longest_words=5)
    one_error_line(score(source, "--model", twin, "--all-scores"), 2, "gives two of its classes one name")


def test_a_resumed_run_without_cache_counts_repeats_not_cache_hits(tmp_path, binary_model, monkeypatch):
    source = tmp_path / "in.csv"
    source.write_text("text\n" + "".join(f"text number {i % 30}\n" for i in range(200)))
    args = [source, "--model", binary_model, "-o", tmp_path / "out.csv", "--chunk-rows", "50"]
    fail_third_chunk(monkeypatch, "node rebooted")
    assert score(*args).exit_code == 1
    monkeypatch.undo()
    result = score(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "from the cache" not in result.output and "repeated texts" in result.output


def test_a_fully_cached_run_says_it_did_not_load_the_model(tmp_path, binary_model):
    source = write_corpus(tmp_path / "in.csv", 10, seed=1, longest_words=5)
    cache = tmp_path / "pc.sqlite"
    assert score(source, "--model", binary_model, "--cache", cache, "-o", tmp_path / "a.csv").exit_code == 0
    result = score(source, "--model", binary_model, "--cache", cache, "-o", tmp_path / "b.csv")
    assert result.exit_code == 0 and "model not loaded" in result.output and "model load" not in result.output


def test_an_existing_folder_as_output_takes_the_default_name_and_a_bare_name_says_what_to_give(tmp_path, binary_model):
    source = write_corpus(tmp_path / "in.csv", 3, seed=1, longest_words=5)
    (tmp_path / "sub").mkdir()
    assert score(source, "--model", binary_model, "-o", f"{tmp_path / 'sub'}/").exit_code == 0
    assert (tmp_path / "sub" / "in.scored.csv").is_file()
    one_error_line(score(source, "--model", binary_model, "-o", f"{tmp_path / 'nosub'}/"), 2, "no suffix")


def test_a_folder_as_manifest_or_report_is_refused_before_scoring(tmp_path, binary_model):
    source = write_corpus(tmp_path / "in.csv", 3, seed=1, longest_words=5)
    (tmp_path / "d.html").mkdir()
    one_error_line(score(source, "--model", binary_model, "--manifest", tmp_path), 2, "is a folder")
    one_error_line(score(source, "--model", binary_model, "--report", tmp_path / "d.html"), 2, "is a folder")
    assert not (tmp_path / "in.scored.csv").exists()


def test_cache_commands_name_their_own_arguments(tmp_path):
    garbage = tmp_path / "x.sqlite"
    garbage.write_bytes(b"not sqlite" * 100)
    stats = CliRunner().invoke(app, ["cache", "stats", str(garbage)])
    assert stats.exit_code == 2 and "--cache" not in stats.output and "cache " in stats.output
    export = CliRunner().invoke(app, ["cache", "export", str(garbage), str(tmp_path / "shared")])
    assert export.exit_code == 2 and "--cache" not in export.output


def test_a_folder_runs_report_counts_its_nested_and_compressed_outputs(tmp_path, binary_model):
    import gzip

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_corpus(folder / "a.csv", 9, seed=1, longest_words=5)
    (folder / "sub" / "b.csv.gz").write_bytes(
        gzip.compress(write_corpus(tmp_path / "b.csv", 9, seed=2, longest_words=5).read_bytes())
    )
    report = tmp_path / "r.html"
    result = score(folder, "-o", tmp_path / "out", "--model", binary_model, "--report", report)
    assert result.exit_code == 0 and "18 rows" in result.output, result.output
    from batchsent.report.stats import ReportOptions, collect

    assert collect(tmp_path / "out", ReportOptions()).rows == 18  # the report's rows: every output file's


def test_an_output_two_variants_scored_is_refused(tmp_path):
    import json as json_module

    from batchsent.engine.ray.driver import _Progress, _record_actors
    from batchsent.errors import ScoringError
    from batchsent.settings.options import JobConfig

    progress = _Progress(tmp_path / "out")
    (tmp_path / ".out.batchsent-ray" / "actors").mkdir(parents=True)
    for name, where in (("a", "cpu, float32"), ("b", "cpu, int8/fbgemm")):  # a run, then a resume on another CPU
        fact = {
            "node": name,
            "pid": 1,
            "load_seconds": 1.0,
            "models": [
                {
                    "device": "cpu",
                    "dtype": "float32",
                    "variant": where.split(", ")[1],
                    "where": where,
                    "labels": ["NEGATIVE", "POSITIVE"],
                }
            ],
        }
        (tmp_path / ".out.batchsent-ray" / "actors" / f"{name}.json").write_text(json_module.dumps(fact))
    config = JobConfig(input=tmp_path / "in.csv", engine="ray", model="m")
    with pytest.raises(ScoringError, match="scored as cpu, float32 and as cpu, int8/fbgemm"):
        _record_actors(config, progress, {})
