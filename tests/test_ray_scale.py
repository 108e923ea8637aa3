"""--engine ray where the data lives and when things go wrong: object storage (moto on loopback),
a worker node lost from a three-node ``ray.cluster_utils.Cluster``.

Each run is ``python -m batchsent score`` in its own process, as cron runs it, so the
environment (credentials, endpoint) and the Ray it starts or joins are those of a real run.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_rows, varied_texts

from batchsent.settings.naming import ray_progress_location

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed"),
]


def write_inputs(folder: Path, files: int, rows: int, seed: int = 0) -> Path:
    """CSV files with a unique id per row, texts of 1-60 words."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        texts = varied_texts(rows, seed=seed + index, longest_words=60)
        with open(folder / f"part-{index}.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["id", "text"])
            writer.writerows((f"{index}-{row}", text) for row, text in enumerate(texts))
    return folder


def command(source: str, model: Path, output: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batchsent",
        "score",
        source,
        "--engine",
        "ray",
        "--model",
        str(model),
        "-o",
        output,
        "-q",
        *extra,
    ]


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A run in its own process group (the local Ray it starts dies with it on kill -9)."""
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def finish(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def assert_equal_runs(got: dict[str, dict], expected: dict[str, dict]) -> None:
    """Same rows and labels; scores within 1e-5 (rows batched with other rows move in the last bits)."""
    assert list(got) == list(expected)
    assert [r["sentiment_label"] for r in got.values()] == [r["sentiment_label"] for r in expected.values()]
    ours = np.array([float(r["sentiment_score"]) for r in got.values()])
    theirs = np.array([float(r["sentiment_score"]) for r in expected.values()])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def wait_for(condition, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"the run ended (exit {process.returncode}) before the moment the test waits for: "
                f"{process.stderr.read() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.05)


def parts_written(output: Path) -> int:
    return len(list((Path(ray_progress_location(output)) / "parts").rglob("*.parquet")))


def test_json_lines_from_an_object_prefix_into_an_object_prefix(tmp_path, binary_model, s3_env):
    env, client = s3_env
    lines = {}
    for name in ("2026/a.jsonl.gz", "2026/b.jsonl.gz"):
        texts = varied_texts(60, seed=len(lines), longest_words=40)
        body = [
            json.dumps({"id": f"{name}-{i}", "text": t, "meta": {"tags": ["x", 1.50]}, "big": 10**30})
            for i, t in enumerate(texts)
        ]
        body[3] = body[3].replace('"big": 1000000000000000000000000000000', '"big": 1.0e+30')  # a spelling kept as is
        lines[name] = body
        client.put_object(
            Bucket="nightly", Key=f"exports/{name}", Body=gzip.compress(("\n".join(body) + "\n").encode())
        )
    code, stderr = finish(
        start(command("s3://nightly/exports/", binary_model, "s3://nightly/scored", "--workers", "2"), env)
    )
    assert code == 0, stderr
    assert "done: 120 rows: 120 scored" in stderr
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket="nightly")["Contents"])
    assert listed == [
        "exports/2026/a.jsonl.gz",
        "exports/2026/b.jsonl.gz",
        "scored/2026/a.jsonl.gz",
        "scored/2026/b.jsonl.gz",
        "scored/_SUCCESS",
    ]  # named as the inputs, the marker last
    for name, body in lines.items():
        scored = gzip.decompress(client.get_object(Bucket="nightly", Key=f"scored/{name}")["Body"].read()).decode()
        out = scored.splitlines()
        assert len(out) == len(body)
        for original, line in zip(body, out):
            assert line.startswith(original[:-1] + ', "sentiment_label": ')  # keys, order, nesting, numbers untouched
            assert list(json.loads(line))[-2:] == ["sentiment_label", "sentiment_score"]

    # a failed run (a column the files lack) leaves nothing under the output prefix
    code, stderr = finish(
        start(command("s3://nightly/exports/", binary_model, "s3://nightly/failed", "-c", "body"), env)
    )
    assert code == 2 and stderr.count("\n") == 1 and "no key 'body'" in stderr
    assert not client.list_objects_v2(Bucket="nightly", Prefix="failed").get("Contents")
    assert not client.list_objects_v2(Bucket="nightly", Prefix=".failed").get("Contents")


def _cluster_run(tmp_path: Path, binary_model: Path, remove_when) -> None:
    """Score 6,000 rows on a head and two worker nodes, removing one worker node when ``remove_when(output)``."""
    from ray.cluster_utils import Cluster

    source = write_inputs(tmp_path / "in", files=3, rows=2000, seed=5)
    reference = tmp_path / "reference"
    code, stderr = finish(start(command(str(source), binary_model, str(reference), "--chunk-rows", "200")))
    assert code == 0, stderr

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
        cluster.wait_for_nodes()
        output, manifest = tmp_path / "out", tmp_path / "run.json"
        process = start(
            command(
                str(source),
                binary_model,
                str(output),
                "--ray-address",
                cluster.address,
                "--workers",
                "2",
                "--chunk-rows",
                "200",
                "--threads",
                "1",
                "--manifest",
                str(manifest),
            )
        )
        wait_for(lambda: remove_when(output), 300, process)
        cluster.remove_node(workers[0])
        code, stderr = finish(process)
    finally:
        cluster.shutdown()
    assert code == 0, stderr
    assert "done: 6,000 rows: 6,000 scored" in stderr
    assert_equal_runs(read_rows(output), read_rows(reference))
    facts = json.loads(manifest.read_text())
    assert facts["rows_total"] == 6000 and sum(facts["label_counts"].values()) == 6000


def test_a_worker_node_lost_while_scoring(tmp_path, binary_model):
    _cluster_run(tmp_path, binary_model, lambda output: parts_written(output) >= 2)


def test_a_worker_node_lost_while_the_model_loads(tmp_path, binary_model):
    def started(output: Path) -> bool:  # the driver passed its checks and starts the actors; nothing scored yet
        return (Path(ray_progress_location(output)) / "run.json").exists() and parts_written(output) == 0

    _cluster_run(tmp_path, binary_model, started)


BOOM_MODELING = '''
from transformers import DistilBertForSequenceClassification


class BoomModel(DistilBertForSequenceClassification):
    """Raises on any row holding the token BOOM_ID: a model that fails on one row."""

    def forward(self, input_ids=None, **kwargs):
        if input_ids is not None and bool((input_ids == BOOM_ID).any()):
            raise RuntimeError("this model cannot take a row with 'boom'")
        return super().forward(input_ids=input_ids, **kwargs)
'''


def test_a_worker_that_fails_on_a_row_is_exit_1_and_keeps_what_it_scored(tmp_path, binary_model):
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "boom-model"
    shutil.copytree(binary_model, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_boom.BoomModel"}
    (model / "config.json").write_text(json.dumps(config))
    boom = AutoTokenizer.from_pretrained(str(model)).convert_tokens_to_ids("boom")
    (model / "modeling_boom.py").write_text(BOOM_MODELING.replace("BOOM_ID", str(boom)))
    source = write_inputs(tmp_path / "in", files=3, rows=400)
    last = source / "part-2.csv"
    last.write_text(last.read_text().rstrip("\n") + '\n2-400,"the kettle went boom"\n')

    process = start(
        command(str(source), model, str(tmp_path / "out"), "--chunk-rows", "50", "--trust-remote-code"),
        {"HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    code, stderr = finish(process)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, stderr
    assert "cannot take a row with 'boom'" in errors[0] and "run the same command with --resume" in errors[0]
    assert not (tmp_path / "out").exists() and parts_written(tmp_path / "out") > 0  # what was scored is kept


def test_a_second_run_to_a_live_runs_object_prefix_is_refused_and_the_first_loses_nothing(
    tmp_path, binary_model, s3_env
):
    env, client = s3_env
    for index in range(6):
        texts = varied_texts(400, seed=index, longest_words=30)
        body = "id,text\n" + "".join(f'{index}-{row},"{text}"\n' for row, text in enumerate(texts))
        client.put_object(Bucket="nightly", Key=f"six/part-{index}.csv", Body=body.encode())
        client.put_object(Bucket="nightly", Key=f"other/part-{index}.csv", Body=body.encode())
    first = start(
        command(
            "s3://nightly/six/",
            binary_model,
            "s3://nightly/out",
            "--workers",
            "1",
            "--chunk-rows",
            "100",
            "--threads",
            "1",
        ),
        env,
    )
    wait_for(
        lambda: client.list_objects_v2(Bucket="nightly", Prefix=".out.batchsent-lease").get("Contents"), 120, first
    )
    second = start(command("s3://nightly/other/", binary_model, "s3://nightly/out", "--overwrite"), env)
    code, stderr = finish(second)
    assert code == 2 and "another batchsent run" in stderr and ".out.batchsent-lease.json" in stderr, stderr
    code, stderr = finish(first)
    assert code == 0, stderr
    assert "done: 2,400 rows: 2,400 scored" in stderr
    for index in range(6):
        scored = client.get_object(Bucket="nightly", Key=f"out/part-{index}.csv")["Body"].read().decode()
        assert len(scored.splitlines()) == 401 and "sentiment_label" in scored.splitlines()[0]
    assert not client.list_objects_v2(Bucket="nightly", Prefix=".out").get("Contents")  # no lease or progress left


def test_one_file_is_scored_in_blocks_by_every_worker_and_committed_as_it_goes(tmp_path, binary_model):
    source = write_inputs(tmp_path / "in", files=1, rows=3000, seed=3) / "part-0.csv"
    output = tmp_path / "out.csv"
    args = [
        arg
        for arg in command(
            str(source), binary_model, str(output), "--chunk-rows", "100", "--workers", "2", "--log-format", "json"
        )
        if arg != "-q"
    ]
    process = start(args)
    wait_for(lambda: parts_written(output) >= 2, 300, process)  # parts appear while the file is being scored
    code, stderr = finish(process)
    assert code == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines()]  # every line JSON: no Ray start-up line among them
    assert events[-1]["level"] == "summary" and events[-1]["rows"] == 3000
    assert any(event["level"] == "progress" for event in events), stderr  # rows committed, as a local run shows
    with open(output, newline="") as stream:
        assert len(list(csv.DictReader(stream))) == 3000


def test_sigterm_stops_a_ray_run_in_one_line_and_its_resume_finishes(tmp_path, binary_model):
    source = write_inputs(tmp_path / "in", files=2, rows=3000, seed=4)
    output = tmp_path / "out"
    process = start(command(str(source), binary_model, str(output), "--chunk-rows", "50", "--threads", "1"))
    wait_for(lambda: parts_written(output) >= 2, 300, process)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process, timeout=120)
    assert code == 143, stderr
    assert stderr.strip().splitlines() == [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert "interrupted by SIGTERM" in stderr and "--resume" in stderr, stderr
    resumed = start(command(str(source), binary_model, str(output), "--chunk-rows", "50", "--resume", "--workers", "2"))
    code, stderr = finish(resumed)  # two workers and Ray's checkpoint filter on 2 CPUs: it must not wait forever
    assert code == 0, stderr
    assert "done: 6,000 rows: 6,000 scored" in stderr
    assert len(read_rows(output)) == 6000


def test_ray_workers_started_from_a_background_command_handle_sigint(tmp_path):
    """A command started in the background inherits SIGINT ignored; the Ray it starts must not pass that on to its
    workers, where Ray's task cancellation calls the saved disposition as a handler (a TypeError traceback on a
    SIGTERM'd run's stderr)."""
    script = tmp_path / "workers.py"
    script.write_text(
        "import signal, ray\n"
        "from batchsent.engine.ray.driver import _sigint_not_ignored\n"
        "with _sigint_not_ignored():\n"
        "    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the driver's own disposition, restored\n"
        "print(ray.get(ray.remote(lambda: str(signal.getsignal(signal.SIGINT))).remote()))\n"
        "ray.shutdown()\n"
    )
    found = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` in a script starts it
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().splitlines()[-1] == str(signal.default_int_handler)


def test_a_ray_run_that_cannot_make_progress_ends_in_one_line(tmp_path, binary_model):
    from ray.cluster_utils import Cluster

    source = write_inputs(tmp_path / "in", files=1, rows=50)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:  # a cluster without GPUs: actors that each ask for one are never placed
        process = start(
            command(
                str(source),
                binary_model,
                str(tmp_path / "out"),
                "--ray-address",
                cluster.address,
                "--gpus-per-worker",
                "1",
            ),
            {"BATCHSENT_RAY_STALL_SECONDS": "20"},
        )
        code, stderr = finish(process, timeout=300)
    finally:
        cluster.shutdown()
    assert code == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no row was committed for 20 s" in errors[0] and "CPUs free" in errors[0], stderr
