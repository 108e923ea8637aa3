"""Object storage against a real S3-compatible server on loopback: moto's standalone server, started here."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fail_third_chunk, varied_texts
from typer.testing import CliRunner

from batchsent import score_file
from batchsent.cli import app

boto3 = pytest.importorskip("boto3", reason="install the test extra (moto[server], boto3)")
pytest.importorskip("moto.server", reason="install the test extra (moto[server])")

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_s3_server(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``moto_server -H 127.0.0.1 -p PORT`` in a child process; returns it and its endpoint once it answers."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("moto's S3 server did not start")


@pytest.fixture(scope="module")
def s3_server():
    process, endpoint = start_s3_server()
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the loopback server, and the standard AWS environment pointing at it."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"nightly-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def csv_bytes(count: int, seed: int) -> bytes:
    texts = varied_texts(count, seed=seed, longest_words=40)
    return ("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts))).encode()


def keys(client, bucket: str) -> list[str]:
    """The bucket's objects, less folder markers (``scored/``): pyarrow's S3 filesystem makes one for the parent
    of every object it deletes (an output's released lease), as the AWS console does; readers see a folder."""
    return sorted(
        o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []) if not o["Key"].endswith("/")
    )


def test_an_object_in_and_out_scores_like_the_local_file(s3, tmp_path, binary_model):
    client, bucket = s3
    data = csv_bytes(120, seed=1)
    client.put_object(Bucket=bucket, Key="exports/reviews.csv.gz", Body=gzip.compress(data))
    (tmp_path / "reviews.csv").write_bytes(data)
    score_file(tmp_path / "reviews.csv", tmp_path / "local.parquet", model=str(binary_model), chunk_rows=32, quiet=True)

    result = runner.invoke(
        app,
        [
            "score",
            f"s3://{bucket}/exports/reviews.csv.gz",
            "-o",
            f"s3://{bucket}/scored/reviews.parquet",
            "--model",
            str(binary_model),
            "--chunk-rows",
            "32",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    uploaded = client.get_object(Bucket=bucket, Key="scored/reviews.parquet")["Body"].read()
    assert uploaded == (tmp_path / "local.parquet").read_bytes()
    local = score_file(
        f"s3://{bucket}/exports/reviews.csv.gz",
        tmp_path / "from-s3.parquet",
        model=str(binary_model),
        chunk_rows=32,
        quiet=True,
    )
    assert local.rows == 120 and (tmp_path / "from-s3.parquet").read_bytes() == uploaded
    assert keys(client, bucket) == ["exports/reviews.csv.gz", "scored/reviews.parquet"]


def test_a_prefix_of_part_files_scores_into_a_local_folder(s3, tmp_path, binary_model):
    client, bucket = s3
    parts = {"exports/part-0.csv": csv_bytes(40, 2), "exports/day=2/part-1.csv": csv_bytes(30, 3)}
    for key, body in parts.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    client.put_object(Bucket=bucket, Key="exports/_SUCCESS", Body=b"")
    result = runner.invoke(
        app, ["score", f"s3://{bucket}/exports/", "-o", str(tmp_path / "scored"), "--model", str(binary_model), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "70 rows" in result.output
    for key, body in parts.items():
        relative = key.removeprefix("exports/")
        alone = tmp_path / "alone" / relative
        alone.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in.csv").write_bytes(body)
        score_file(tmp_path / "in.csv", alone, model=str(binary_model), quiet=True)
        assert (tmp_path / "scored" / relative).read_bytes() == alone.read_bytes()
    glob_run = runner.invoke(
        app,
        [
            "score",
            f"s3://{bucket}/exports/*/part-*.csv",
            "-o",
            str(tmp_path / "glob"),
            "--model",
            str(binary_model),
            "-q",
        ],
    )
    assert glob_run.exit_code == 0 and (tmp_path / "glob" / "day=2" / "part-1.csv").is_file()


@pytest.mark.slow
def test_a_folder_scores_into_an_object_storage_prefix(s3, tmp_path, binary_model, exports_folder):
    client, bucket = s3
    result = runner.invoke(
        app, ["score", str(exports_folder), "-o", f"s3://{bucket}/scored/", "--model", str(binary_model), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert keys(client, bucket) == ["scored/day=2/part-1.csv.gz", "scored/part-0.csv"]
    local = tmp_path / "local"
    score_file(exports_folder, local, model=str(binary_model), quiet=True)
    assert (
        client.get_object(Bucket=bucket, Key="scored/part-0.csv")["Body"].read() == (local / "part-0.csv").read_bytes()
    )
    packed = client.get_object(Bucket=bucket, Key="scored/day=2/part-1.csv.gz")["Body"].read()
    assert gzip.decompress(packed) == gzip.decompress((local / "day=2" / "part-1.csv.gz").read_bytes())
    again = runner.invoke(
        app, ["score", str(exports_folder), "-o", f"s3://{bucket}/scored", "--model", str(binary_model)]
    )
    assert again.exit_code == 2 and f"s3://{bucket}/scored/day=2/part-1.csv.gz: already exists" in again.output


@pytest.fixture
def exports_folder(tmp_path) -> Path:
    folder = tmp_path / "exports"
    (folder / "day=2").mkdir(parents=True)
    (folder / "part-0.csv").write_bytes(csv_bytes(30, 8))
    (folder / "day=2" / "part-1.csv.gz").write_bytes(gzip.compress(csv_bytes(20, 9)))
    return folder


@pytest.mark.slow
def test_a_failed_run_leaves_no_object_under_the_output_name(s3, tmp_path, binary_model, monkeypatch):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="in.csv", Body=csv_bytes(200, 4))
    from batchsent.model.classifier import Classifier

    working = Classifier.run
    fail_third_chunk(monkeypatch, "CUDA error: out of memory")
    result = runner.invoke(
        app,
        [
            "score",
            f"s3://{bucket}/in.csv",
            "-o",
            f"s3://{bucket}/out.csv",
            "--model",
            str(binary_model),
            "--chunk-rows",
            "50",
        ],
    )
    assert result.exit_code == 1 and "out of memory" in result.output
    assert "nothing was uploaded: run the same command again" in result.output and "--resume" not in result.output
    assert keys(client, bucket) == ["in.csv"]
    monkeypatch.setattr(Classifier, "run", working)
    again = runner.invoke(
        app,
        [
            "score",
            f"s3://{bucket}/in.csv",
            "-o",
            f"s3://{bucket}/out.csv",
            "--model",
            str(binary_model),
            "--chunk-rows",
            "50",
        ],
    )  # the advice, as given
    assert again.exit_code == 0, again.output
    assert keys(client, bucket) == ["in.csv", "out.csv"]


@pytest.mark.slow
def test_an_interrupted_object_output_advises_what_works(s3, tmp_path, binary_model):
    from batchsent import JobConfig, run
    from batchsent.errors import Interrupted

    client, bucket = s3
    client.put_object(Bucket=bucket, Key="in.csv", Body=csv_bytes(200, 4))
    config = JobConfig(
        input=f"s3://{bucket}/in.csv",
        output=f"s3://{bucket}/out.csv",
        model=str(binary_model),
        chunk_rows=50,
        quiet=True,
    )
    batches = {"n": 0}

    def stop_after_a_while() -> bool:  # as SIGTERM does: stop at the next batch boundary
        batches["n"] += 1
        return batches["n"] > 3

    with pytest.raises(Interrupted, match="nothing was uploaded: run the same command again") as stopped:
        run(config, stop=stop_after_a_while)
    assert "--resume" not in str(stopped.value) and keys(client, bucket) == ["in.csv"]
    assert run(config).rows == 200


def test_credentials_in_a_url_are_never_printed_or_recorded(s3, tmp_path, binary_model, monkeypatch):
    client, bucket = s3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-4711")
    client.put_object(Bucket=bucket, Key="x.csv", Body=csv_bytes(20, 6))
    url = f"s3://KEYID:url-secret-0815@{bucket}"
    manifest = tmp_path / "run.json"
    done = runner.invoke(
        app,
        [
            "score",
            f"{url}/x.csv",
            "-o",
            str(tmp_path / "out.csv"),
            "--model",
            str(binary_model),
            "--manifest",
            str(manifest),
            "--log-format",
            "json",
        ],
    )
    assert done.exit_code == 0, done.output
    failed = runner.invoke(
        app,
        [
            "score",
            f"{url}/missing.csv",
            "-o",
            str(tmp_path / "o2.csv"),
            "--model",
            str(binary_model),
            "--manifest",
            str(tmp_path / "failed.json"),
        ],
    )
    assert failed.exit_code == 2 and "missing.csv: no such object" in failed.output
    recorded = json.loads((tmp_path / "failed.json").read_text())
    assert "missing.csv" in recorded["error"] and f"s3://***@{bucket}/x.csv" in manifest.read_text()
    for text in (done.output, failed.output, manifest.read_text(), (tmp_path / "failed.json").read_text()):
        for secret in ("url-secret-0815", "KEYID", "env-secret-4711"):
            assert secret not in text


@pytest.mark.parametrize(
    ("input_key", "output", "message"),
    [
        ("missing.csv", "{tmp}/x.csv", "s3://{bucket}/missing.csv: no such object"),
        ("in.csv", "s3://{bucket}/in.csv.out/exists.csv", "already exists; pass --overwrite"),
        ("in.csv", "s3://no-such-bucket-here/x.csv", "no such bucket or container 'no-such-bucket-here'"),
        ("in.csv", "s3://{bucket}/x.csv --resume", "--resume needs a local output"),
    ],
)
def test_bad_object_paths_are_one_line_and_exit_2(s3, tmp_path, binary_model, input_key, output, message):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="in.csv", Body=csv_bytes(5, 5))
    client.put_object(Bucket=bucket, Key="in.csv.out/exists.csv", Body=b"old")
    arguments = output.format(tmp=tmp_path, bucket=bucket).split()
    result = runner.invoke(app, ["score", f"s3://{bucket}/{input_key}", "-o", *arguments, "--model", str(binary_model)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message.format(bucket=bucket) in errors[0], result.output
    assert client.get_object(Bucket=bucket, Key="in.csv.out/exists.csv")["Body"].read() == b"old"


def test_a_missing_bucket_as_input_names_it(s3, tmp_path, binary_model):
    result = runner.invoke(
        app, ["score", "s3://no-such-bucket-here/in.csv", "-o", str(tmp_path / "x.csv"), "--model", str(binary_model)]
    )
    assert result.exit_code == 2 and "no such bucket or container 'no-such-bucket-here'" in result.output


def test_denied_credentials_are_one_line_and_exit_2(tmp_path, binary_model, monkeypatch):
    # moto checks credentials against its own IAM after the first N requests: ours are not known to it
    process, endpoint = start_s3_server({"INITIAL_NO_AUTH_ACTION_COUNT": "2"})
    try:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "not-a-known-key",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="locked")
        client.put_object(Bucket="locked", Key="in.csv", Body=csv_bytes(3, 7))
        result = runner.invoke(
            app, ["score", "s3://locked/in.csv", "-o", str(tmp_path / "x.csv"), "--model", str(binary_model)]
        )
    finally:
        process.kill()
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: s3://locked/in.csv: access denied"), result.output
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_an_unreachable_endpoint_is_one_line_after_a_bounded_retry(tmp_path, binary_model, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    result = runner.invoke(
        app, ["score", "s3://bucket/in.csv", "-o", str(tmp_path / "x.csv"), "--model", str(binary_model)]
    )
    assert result.exit_code == 2 and time.monotonic() - started < 60
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: s3://bucket/in.csv: cannot reach the storage endpoint")


@pytest.mark.slow
def test_the_server_going_away_mid_run_is_one_line_and_exit_1(tmp_path, binary_model, monkeypatch):
    process, endpoint = start_s3_server()
    try:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="night")
        (tmp_path / "in.csv").write_bytes(csv_bytes(200, 6))
        from batchsent.model.classifier import Classifier

        original, calls = Classifier.run, {"n": 0}

        def stop_server_on_the_second_chunk(self, chunk, stop=None, on_batch=None):
            calls["n"] += 1
            if calls["n"] == 2:
                process.terminate()
                process.wait(timeout=10)
            return original(self, chunk, stop, on_batch)

        monkeypatch.setattr(Classifier, "run", stop_server_on_the_second_chunk)
        result = runner.invoke(
            app,
            [
                "score",
                str(tmp_path / "in.csv"),
                "-o",
                "s3://night/out.csv",
                "--model",
                str(binary_model),
                "--chunk-rows",
                "50",
            ],
        )
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: s3://night/out.csv: the upload failed"), result.output
    finally:
        process.kill()
    assert not list(Path(tmp_path).glob(".*"))  # no staging, progress or lock files left


TREE = ["in/a.csv", "in/b.csv", "in/sub/c.csv", "in/sub/deep/d.csv", "in/.hidden/e.csv", "in/sub/.f.csv", "in/g.tsv"]


@pytest.mark.parametrize(
    "pattern",
    [
        "in/*.csv",
        "in/*/*.csv",
        "in/**/*.csv",
        "in/**",
        "in/s*/*.csv",
        "in/sub/**",
        "in/.hidden/*.csv",
        "in/?.csv",
        "in/[ab].csv",
    ],
)
def test_a_glob_selects_the_same_files_on_disk_and_in_a_bucket(tmp_path, s3, pattern):
    """One glob semantics: ``*`` never crosses ``/``, ``**`` any depth, hidden names only when named."""
    from batchsent.data.sources import expand
    from batchsent.errors import InputError

    client, bucket = s3
    for name in TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text\nx\n")
        client.put_object(Bucket=bucket, Key=name, Body=b"text\nx\n")

    def selected(spec: str, root: str) -> list[str] | str:
        try:
            found = expand(spec)
        except InputError as error:
            return type(error).__name__ + (": mixes" if "mixes" in str(error) else "")
        return sorted(str(path)[len(root) + 1 :] for path in found.files)

    on_disk = selected(f"{tmp_path}/{pattern}", str(tmp_path))
    in_bucket = selected(f"s3://{bucket}/{pattern}", f"s3://{bucket}")
    assert on_disk == in_bucket
    if pattern == "in/*.csv":
        assert on_disk == ["in/a.csv", "in/b.csv"]  # not in/sub/c.csv: * stops at the /
