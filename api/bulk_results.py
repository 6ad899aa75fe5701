"""The results file of `submit_bulk`: one line per input, JSON Lines or CSV, appended and flushed line by line.

A line is written when an input is submitted (status `queued`, with its job id) and again when
its job ends; `compact()` then keeps the last line of each path. Reading a file back gives the
state of every input, which is what `--resume` starts from.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

FINAL = ("succeeded", "failed", "canceled")
HEAD = ("path", "batch_id", "job_id", "status", "model", "version")
TAIL = ("error_code", "error_message", "queue_ms", "inference_ms", "total_ms")
TIMINGS = ("queue_ms", "inference_ms", "total_ms")
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class ResultsError(Exception):
    """The results file cannot be used (unknown extension, unreadable)."""


@dataclass
class Record:
    """What is known about one input: its job, and once the job ended, the top-k or the error."""

    path: str
    status: str
    job_id: str = ""
    batch_id: str = ""
    model: str = ""
    version: str = ""
    predictions: list[dict[str, Any]] = field(default_factory=list)
    error_code: str = ""
    error_message: str = ""
    queue_ms: float | None = None
    inference_ms: float | None = None
    total_ms: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "batch_id": self.batch_id, "job_id": self.job_id, "status": self.status,
                "model": self.model, "version": self.version,
                "predictions": [{k: p.get(k) for k in ("label", "probability", "index") if k in p}
                                for p in self.predictions],
                "error_code": self.error_code, "error_message": self.error_message,
                "queue_ms": self.queue_ms, "inference_ms": self.inference_ms, "total_ms": self.total_ms}

    def as_row(self, top_k: int) -> dict[str, Any]:
        row: dict[str, Any] = {k: getattr(self, k) for k in HEAD}
        for i in range(top_k):
            pred = self.predictions[i] if i < len(self.predictions) else {}
            row[f"label_{i + 1}"] = pred.get("label", "")
            row[f"prob_{i + 1}"] = "" if pred.get("probability") is None else pred["probability"]
        row.update({k: "" if getattr(self, k) is None else getattr(self, k) for k in TAIL})
        return row


def record_from_job(path: str, job: dict[str, Any]) -> Record:
    """A record from a job in the API's JSON shape (`GET /v1/jobs/{id}`)."""
    error = job.get("error") or {}
    timings = job.get("timings") or {}
    result = job.get("result") or {}
    predictions = result.get("predictions") if isinstance(result, dict) else None
    return Record(path=path, status=str(job.get("status", "")), job_id=str(job.get("id") or ""),
                  batch_id=str(job.get("batch") or ""), model=str(job.get("model") or ""),
                  version=str(job.get("version") or ""), predictions=list(predictions or []),
                  error_code=error.get("code", ""), error_message=error.get("message", ""),
                  **{k: timings.get(k) for k in TIMINGS})


def error_record(path: str, code: str, message: str, **fields: Any) -> Record:
    """An input that never became a job (unreadable, broken, refused): failed with the reason."""
    return Record(path=path, status="failed", error_code=code, error_message=message, **fields)


def _float(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _record_from_row(row: dict[str, Any]) -> Record:
    predictions = []
    i = 1
    while f"label_{i}" in row:
        if row[f"label_{i}"]:
            predictions.append({"label": row[f"label_{i}"], "probability": _float(row.get(f"prob_{i}"))})
        i += 1
    return _record(row, predictions)


def _record_from_json(line: str) -> Record:
    data = json.loads(line)
    return _record(data, list(data.get("predictions") or []))


def _record(data: dict[str, Any], predictions: list[dict[str, Any]]) -> Record:
    text = {k: str(data.get(k) or "") for k in HEAD + ("error_code", "error_message")}
    return Record(path=text["path"], status=text["status"], job_id=text["job_id"], batch_id=text["batch_id"],
                  model=text["model"], version=text["version"], predictions=predictions,
                  error_code=text["error_code"], error_message=text["error_message"],
                  queue_ms=_float(data.get("queue_ms")), inference_ms=_float(data.get("inference_ms")),
                  total_ms=_float(data.get("total_ms")))


class ResultsFile:
    """Append-only writer and reader of one results file; its kind comes from the extension."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        kind = KINDS.get(self.path.suffix.lower())
        if kind is None:
            raise ResultsError(f"{self.path}: the results file must end in .jsonl or .csv")
        self.kind = kind
        self.fieldnames: list[str] = []
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def _raw(self) -> tuple[list[str], list[tuple[str, Any]]]:
        """(CSV header, [(path, raw line or row)]) as stored; a line cut short by a crash is skipped."""
        if not self.exists():
            return [], []
        try:
            if self.kind == "csv":
                with open(self.path, newline="", encoding="utf-8-sig") as handle:
                    reader = csv.DictReader(handle)
                    rows = [(row["path"], row) for row in reader if row.get("path") and row.get("status")]
                    return list(reader.fieldnames or []), rows
            lines = []
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        data = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(data, dict) and data.get("path") and data.get("status"):
                        lines.append((str(data["path"]), line.rstrip("\n")))
            return [], lines
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ResultsError(f"cannot read {self.path}: {exc}") from exc

    def read(self) -> dict[str, Record]:
        """The last record of every path in the file."""
        _, raw = self._raw()
        parse = _record_from_row if self.kind == "csv" else _record_from_json
        return {path: parse(item) for path, item in raw}

    def open(self, top_k: int) -> None:
        """Open for appending; a new CSV gets a header with `top_k` label/prob column pairs."""
        header, _ = self._raw() if self.kind == "csv" else ([], [])
        needs_newline = self.exists() and self._last_byte() != b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "csv":
            # utf-8-sig: spreadsheets then read non-ASCII paths right (no BOM is added when appending).
            self._handle = open(self.path, "a", newline="", encoding="utf-8-sig")  # noqa: SIM115
            pairs = [f"{kind}_{i + 1}" for i in range(top_k) for kind in ("label", "prob")]
            self.fieldnames = header or [*HEAD, *pairs, *TAIL]
            self._writer = csv.DictWriter(self._handle, fieldnames=self.fieldnames, extrasaction="ignore")
            if needs_newline:
                self._handle.write("\r\n")
            if not header:
                self._writer.writeheader()
        else:
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            if needs_newline:
                self._handle.write("\n")
        self._handle.flush()

    def _last_byte(self) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1)

    def write(self, record: Record) -> None:
        """Append one line and flush it, so an interruption loses nothing already known."""
        assert self._handle is not None, "open() the results file first"
        if self.kind == "csv":
            top_k = sum(1 for name in self.fieldnames if name.startswith("label_"))
            self._writer.writerow(record.as_row(top_k))
        else:
            self._handle.write(json.dumps(record.as_json(), ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def compact(self) -> None:
        """Keep only the last line of each path (in first-seen order), replacing the file atomically."""
        header, raw = self._raw()
        last = {path: item for path, item in raw}
        if len(last) == len(raw):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        if self.kind == "csv":
            with open(tmp, "w", newline="", encoding="utf-8-sig") as handle:
                writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(last.values())
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in last.values())
        os.replace(tmp, self.path)
