"""`manage.py submit_bulk` in-process on the test database and memory broker; workers are simulated with services."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from api.bulk import discover
from api.bulk_local import LocalSubmitter
from api.bulk_report import Progress, Summary, percentile
from api.bulk_results import Record, ResultsFile
from api.models import Batch, Job
from api.services import job_fail, job_start, job_succeed
from tests.api.helpers import broker_messages

pytestmark = pytest.mark.django_db

GOOD = 12
BROKEN = {"empty.jpg": "empty_input", "truncated.jpg": "invalid_image", "text.jpg": "invalid_image",
          "notes.txt": "unsupported_media_type", "dangling.jpg": "unreadable"}


def noisy_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """GOOD distinct JPEGs in nested folders, the BROKEN files, and a hidden file that is not an input."""
    root = tmp_path / "photos"
    for i in range(GOOD):
        sub = root / f"set{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:02d}.jpg").write_bytes(noisy_jpeg(i))
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(noisy_jpeg(99, (320, 240))[:2000])
    (root / "text.jpg").write_text("this is not a picture")
    (root / "notes.txt").write_text("shopping list")
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / ".DS_Store").write_bytes(b"\0\1junk")
    return root


@pytest.fixture(autouse=True)
def redis_double(fake_redis: Any) -> Any:
    """Worker heartbeats are read from InferQ's Redis: a fake one here."""
    return fake_redis


def submit(*args: str, stderr: io.StringIO | None = None) -> tuple[int, str]:
    """Run the command; (exit status, stdout)."""
    out = io.StringIO()
    try:
        call_command("submit_bulk", *args, stdout=out, stderr=stderr or io.StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def finish(pending: dict[str, str], *, fail_if: str = "@") -> None:
    """Play the worker: run every pending job to the end (failing those whose path contains `fail_if`)."""
    for job_id, path in pending.items():
        job = job_start(job_id=job_id, worker="test@host")
        assert job is not None
        if fail_if in path:
            job_fail(job=job, code="inference_error", message="the model fell over")
        else:
            job_succeed(job=job, inference_ms=2.5, result={"predictions": [
                {"index": 1, "label": "b", "probability": 0.75}, {"index": 0, "label": "a", "probability": 0.25}]})


def rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_discover_walks_folders_expands_globs_and_skips_hidden_files(folder: Path) -> None:
    found = discover([str(folder)])
    assert len(found) == GOOD + len(BROKEN)
    assert all(os.path.isabs(p) for p in found) and not any(".DS_Store" in p for p in found)
    assert discover([str(folder / "set1" / "*.jpg"), str(folder / "set1" / "img01.jpg")]) == \
        sorted(str(p) for p in (folder / "set1").glob("*.jpg"))
    assert len(discover([str(folder / "**" / "img*.jpg")])) == GOOD


def test_a_missing_path_or_empty_glob_is_refused_before_anything_is_submitted(folder: Path, user: Any,
                                                                               image_model_manifest: Path,
                                                                               tmp_path: Path) -> None:
    for path in (str(folder / "nope"), str(folder / "*.png")):
        status, message = submit(path, "--model", "tinyimg", "--out", str(tmp_path / "r.csv"))
        assert status == 1 and ("no such file" in message or "matches nothing" in message), message
    assert Job.objects.count() == 0 and Batch.objects.count() == 0


def test_no_wait_queues_every_good_file_and_writes_one_error_line_per_broken_file(
        folder: Path, user: Any, image_model_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    status, stdout = submit(str(folder), "--model", "tinyimg", "--out", str(out), "--no-wait", "--user", "alice")
    assert status == 1  # five inputs failed
    lines = rows(out)
    assert len(lines) == GOOD + len(BROKEN)
    assert len({line["path"] for line in lines}) == len(lines)
    queued = [line for line in lines if line["status"] == "queued"]
    failed = {Path(line["path"]).name: line for line in lines if line["status"] == "failed"}
    assert len(queued) == GOOD and all(line["job_id"] for line in queued)
    assert {name: line["error_code"] for name, line in failed.items()} == BROKEN
    assert all(line["error_message"] and not line["job_id"] for line in failed.values())
    batch = Batch.objects.get()
    assert batch.owner == user and batch.model_name == "tinyimg"
    jobs = Job.objects.filter(batch=batch)
    assert {str(j.id) for j in jobs} == {line["job_id"] for line in queued}
    assert {line["batch_id"] for line in lines} == {str(batch.id)}
    assert len(broker_messages("inferq.model.tinyimg")) == GOOD
    assert "inputs       17" in stdout and "failed       5" in stdout and "--resume" in stdout


def test_waiting_collects_results_and_timings_and_keeps_one_line_per_input(
        folder: Path, user: Any, image_model_manifest: Path, tmp_path: Path, monkeypatch: Any) -> None:
    original = LocalSubmitter.poll

    def poll_after_workers_ran(self: LocalSubmitter, pending: dict[str, str]) -> list[Record]:
        finish(pending, fail_if="img07")
        return original(self, pending)

    monkeypatch.setattr(LocalSubmitter, "poll", poll_after_workers_ran)
    out = tmp_path / "results.jsonl"
    status, stdout = submit(str(folder), "--model", "tinyimg", "--out", str(out), "--user", "alice")
    assert status == 1
    lines = rows(out)
    assert len(lines) == GOOD + len(BROKEN) == len({line["path"] for line in lines})
    by_status = Counter(line["status"] for line in lines)
    assert by_status == {"succeeded": GOOD - 1, "failed": len(BROKEN) + 1}
    ok = next(line for line in lines if line["status"] == "succeeded")
    assert ok["predictions"] == [{"label": "b", "probability": 0.75, "index": 1},
                                 {"label": "a", "probability": 0.25, "index": 0}]
    assert ok["inference_ms"] == 2.5 and ok["total_ms"] >= ok["queue_ms"] >= 0
    bad = next(line for line in lines if line["path"].endswith("img07.jpg"))
    assert (bad["error_code"], bad["error_message"]) == ("inference_error", "the model fell over") and bad["job_id"]
    assert "succeeded    11" in stdout and "p95" in stdout and "inference_error 1" in stdout


def test_all_succeeded_exits_zero_and_the_csv_has_topk_columns(
        folder: Path, user: Any, image_model_manifest: Path, tmp_path: Path, monkeypatch: Any) -> None:
    original = LocalSubmitter.poll
    monkeypatch.setattr(LocalSubmitter, "poll", lambda self, pending: (finish(pending), original(self, pending))[1])
    out = tmp_path / "ok.csv"
    status, _ = submit(str(folder / "set0"), str(folder / "set1"), "--model", "tinyimg", "--out", str(out))
    assert status == 0
    lines = rows(out)
    assert len(lines) == 8 and {line["status"] for line in lines} == {"succeeded"}
    assert list(lines[0])[:8] == ["path", "batch_id", "job_id", "status", "model", "version", "label_1", "prob_1"]
    assert (lines[0]["label_1"], float(lines[0]["prob_1"]), lines[0]["label_5"]) == ("b", 0.75, "")
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # a BOM: spreadsheets read the file as UTF-8


def test_resume_after_a_limited_run_submits_only_the_rest(
        folder: Path, user: Any, image_model_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    args = (str(folder), "--model", "tinyimg", "--out", str(out), "--no-wait")
    status, stdout = submit(*args, "--limit", "8")  # the five broken files (top folder first) and three images
    assert status == 1 and "not sent     9 (--resume submits them)" in stdout
    assert Counter(line["status"] for line in rows(out)) == {"failed": 5, "queued": 3} and Job.objects.count() == 3
    status, message = submit(*args)
    assert status == 1 and "exists" in message and len(rows(out)) == 8
    status, stdout = submit(*args, "--resume")
    assert status == 1 and "(8 submitted by an earlier run)" in stdout and "submitted    9\n" in stdout
    lines = rows(out)
    assert len(lines) == GOOD + len(BROKEN) == len({line["path"] for line in lines})
    hashes = Counter(Job.objects.values_list("input_sha256", flat=True))
    assert len(hashes) == GOOD and set(hashes.values()) == {1}
    assert Batch.objects.count() == 1 and Job.objects.filter(batch__isnull=True).count() == 0


def test_resume_collects_jobs_left_queued_by_no_wait_without_resubmitting(
        folder: Path, user: Any, image_model_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    good = str(folder / "set2")
    submit(good, "--model", "tinyimg", "--out", str(out), "--no-wait")
    queued = {line["job_id"]: line["path"] for line in rows(out)}
    assert len(queued) == 4 and {line["status"] for line in rows(out)} == {"queued"}
    finish(queued)
    status, stdout = submit(good, "--model", "tinyimg", "--out", str(out), "--resume")
    assert status == 0, stdout
    lines = rows(out)
    assert {line["job_id"]: line["status"] for line in lines} == dict.fromkeys(queued, "succeeded")
    assert Job.objects.count() == 4 and "(4 submitted by an earlier run)" in stdout


def test_ctrl_c_stops_submitting_says_how_to_resume_and_resume_submits_none_twice(
        folder: Path, user: Any, image_model_manifest: Path, tmp_path: Path, monkeypatch: Any) -> None:
    original = LocalSubmitter.commit
    commits = []

    def commit_then_ctrl_c(self: LocalSubmitter, loaded: Any, *, stopping: bool) -> Record | None:
        record = original(self, loaded, stopping=stopping)
        commits.append(record)
        if len(commits) == 9:  # the five broken files (top folder first), then four images
            os.kill(os.getpid(), signal.SIGINT)
        return record

    monkeypatch.setattr(LocalSubmitter, "commit", commit_then_ctrl_c)
    out = tmp_path / "r.csv"
    status, message = submit(str(folder), "--model", "tinyimg", "--out", str(out), "--concurrency", "2")
    assert status == 130
    assert "--resume" in message and f"--out {out}" in message and "--concurrency 2" in message
    first = rows(out)
    assert 9 <= len(first) < GOOD + len(BROKEN)
    assert 4 <= Job.objects.count() == sum(1 for line in first if line["job_id"]) < GOOD
    monkeypatch.setattr(LocalSubmitter, "commit", original)
    before = Job.objects.count()
    status, stdout = submit(str(folder), "--model", "tinyimg", "--out", str(out), "--no-wait", "--resume")
    assert status == 1 and f"submitted    {GOOD - before}\n" in stdout
    hashes = Counter(Job.objects.values_list("input_sha256", flat=True))
    assert len(hashes) == GOOD and set(hashes.values()) == {1}
    assert len(rows(out)) == GOOD + len(BROKEN)


def test_an_unknown_model_or_extension_is_a_clear_error(folder: Path, user: Any, image_model_manifest: Path,
                                                        tmp_path: Path) -> None:
    assert "unknown model" in submit(str(folder), "--model", "nope", "--out", str(tmp_path / "r.csv"))[1].lower()
    assert ".jsonl or .csv" in submit(str(folder), "--model", "tinyimg", "--out", str(tmp_path / "r.xlsx"))[1]
    assert Job.objects.count() == 0


def test_results_file_reads_back_both_formats_and_survives_a_cut_off_last_line(tmp_path: Path) -> None:
    record = Record(path="/x/a b,c.jpg", status="succeeded", job_id="j1", model="m", version="1",
                    predictions=[{"label": "cat, tabby", "probability": 0.5}], total_ms=12.0)
    for name in ("r.csv", "r.jsonl"):
        results = ResultsFile(tmp_path / name)
        results.open(top_k=2)
        results.write(Record(path="/x/a b,c.jpg", status="queued", job_id="j1"))
        results.write(record)
        results.close()
        with open(results.path, "a", encoding="utf-8") as handle:
            handle.write('{"path": "/x/half' if name.endswith("jsonl") else "/x/half,")
        back = results.read()
        assert list(back) == ["/x/a b,c.jpg"]
        assert back["/x/a b,c.jpg"].predictions[0]["label"] == "cat, tabby"
        assert back["/x/a b,c.jpg"].total_ms == 12.0 and back["/x/a b,c.jpg"].final
        results.open(top_k=2)  # appends after the cut-off line, on a line of its own
        results.write(Record(path="/x/b.jpg", status="failed", error_code="invalid_image", error_message="bad"))
        results.close()
        results.compact()
        assert list(results.read()) == ["/x/a b,c.jpg", "/x/b.jpg"]
        assert len(rows(results.path)) == 2


def test_plain_progress_prints_a_line_every_few_seconds_and_tqdm_on_a_terminal() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, total=10, wait=True, every=5.0, clock=lambda: now[0])
    progress.update(submitted=4, done=1, failed=0)
    assert stream.getvalue() == ""
    now[0] = 5.0
    progress.update(submitted=10, done=4, failed=1)
    assert stream.getvalue() == "submitted 10/10, done 4, failed 1, 1.0/s, ETA 5s\n"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = Progress(terminal, total=10, wait=True)
    bar.update(submitted=10, done=3, failed=1)
    bar.close()
    assert "4/10" in terminal.getvalue() and "failed=1" in terminal.getvalue()


def test_summary_percentiles_and_exit_status() -> None:
    assert percentile([], 50) is None
    assert percentile([float(v) for v in range(1, 101)], 50) == 50.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert Summary(succeeded=3).exit_code == 0
    assert Summary(succeeded=3, failed=1).exit_code == 1
    assert Summary(failed=1, interrupted=True).exit_code == 130
    text = "\n".join(Summary(inputs=2, succeeded=2, wall_s=2.0, finished_now=2, latencies_ms=[10.0, 30.0]).lines())
    assert "1.0 inputs/s" in text and "p50 10 ms, p95 30 ms" in text


def test_a_model_no_worker_serves_is_warned_about_but_still_queued(folder: Path, user: Any,
                                                                   image_model_manifest: Path, tmp_path: Path) -> None:
    from api.heartbeats import heartbeat_record

    err = io.StringIO()
    submit(str(folder / "set0"), "--model", "tinyimg", "--out", str(tmp_path / "a.csv"), "--no-wait", stderr=err)
    assert "no worker serves 'tinyimg'" in err.getvalue() and Job.objects.count() == 4
    heartbeat_record(hostname="worker@test", models=["tinyimg"])
    err = io.StringIO()
    submit(str(folder / "set1"), "--model", "tinyimg", "--out", str(tmp_path / "b.csv"), "--no-wait", stderr=err)
    assert "no worker" not in err.getvalue() and Job.objects.count() == 8
