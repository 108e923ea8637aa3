"""One fingerprint of what a run's results depend on (batchsent.engine.fingerprint), used by both engines."""

from __future__ import annotations

from dataclasses import fields

from batchsent.engine import fingerprint
from batchsent.settings.options import JobConfig


def test_every_option_is_classified_once():
    """A new option must say whether it changes results: an unclassified one fails here, not in a resume."""
    groups = (
        fingerprint.RESULT_OPTIONS,
        fingerprint.REPLAY_OPTIONS,
        fingerprint.MODEL_OPTIONS,
        fingerprint.RUN_OPTIONS,
    )
    classified = [name for group in groups for name in group]
    assert sorted(classified) == sorted(field.name for field in fields(JobConfig))
    assert len(classified) == len(set(classified))


def test_the_local_key_holds_the_replay_options_and_the_ray_key_does_not(tmp_path):
    config = JobConfig(input=tmp_path / "in.csv", threads=1, chunk_rows=10, all_scores=True)
    local = fingerprint.options_key(config, "csv", replayed=True)
    ray = fingerprint.options_key(config, "csv", replayed=False)
    assert local["threads"] == 1 and local["chunk_rows"] == 10 and "threads" not in ray and "chunk_rows" not in ray
    assert {name: local[name] for name in ray} == ray  # the result options are the same list on both
    assert ray["all_scores"] is True and ray["output_format"] == "csv"
