"""`prepare --executor auto`: in this process for small inputs, Ray for large ones or when a
cluster is named; the choice never changes the output (options that only say where and how
the job runs are not part of its identity)."""
from __future__ import annotations

from jobs.prepare import _job_key, use_ray
from pipeline.config import PrepareConfig


def test_auto_runs_small_inputs_in_process_and_large_ones_or_named_clusters_on_ray(
        monkeypatch):
    import ray
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # the suite's integration tests may have started Ray in this process: not here
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    cfg = PrepareConfig(local_max_bytes=1000)
    assert use_ray(cfg, 1000)[0] is False
    assert use_ray(cfg, 1001)[0] is True
    assert use_ray(PrepareConfig(local_max_bytes=1000, address="ray://h:10001"), 10)[0] is True
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert use_ray(cfg, 10)[0] is True
    assert use_ray(PrepareConfig(executor="local"), 10**12)[0] is False
    assert use_ray(PrepareConfig(executor="ray"), 1)[0] is True
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert use_ray(cfg, 10) == (True, "Ray is running in this process")


def test_where_and_how_a_job_runs_is_not_part_of_its_identity():
    files = [("a.txt", 10)]
    base = _job_key(PrepareConfig(), files, "v")
    for change in (dict(executor="ray"), dict(split_bytes=5), dict(local_max_bytes=1),
                   dict(address="x")):
        assert _job_key(PrepareConfig(**change), files, "v") == base
    for change in (dict(masking="dynamic"), dict(nsp=False), dict(doc_sentences=True)):
        assert _job_key(PrepareConfig(**change), files, "v") != base


def test_dupe_factor_defaults_to_ten_static_passes_and_one_dynamic_pass():
    assert PrepareConfig(input=["x"], output="o", vocab="v").validate().dupe_factor == 10
    assert PrepareConfig(input=["x"], output="o", vocab="v",
                         masking="dynamic").validate().dupe_factor == 1
    assert PrepareConfig(input=["x"], output="o", vocab="v", masking="dynamic",
                         dupe_factor=3).validate().dupe_factor == 3
