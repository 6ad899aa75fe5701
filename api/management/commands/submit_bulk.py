"""`manage.py submit_bulk PATH... --model NAME`: submit every input under PATH as one batch, wait, write results."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.bulk import BulkAbort, BulkError, BulkRun, Plan, Submitter, discover
from api.bulk_report import Progress
from api.bulk_results import ResultsError, ResultsFile

DEFAULT_CONCURRENCY = 8


@contextmanager
def stop_on_sigint(stop: threading.Event, stream: Any) -> Iterator[None]:
    """First Ctrl-C: stop submitting and finish cleanly. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        stream.write("\nStopping: no new submissions; submitted jobs keep running. (Ctrl-C again to quit now.)\n")
        stream.flush()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def resume_command(opts: dict[str, Any], out: Path, *, wait: bool) -> str:
    """The command line that continues this run."""
    python = sys.executable
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    args = [python, "manage.py", "submit_bulk", *opts["paths"], "--model", opts["model"], "--out", str(out)]
    if opts["model_version"]:
        args += ["--model-version", opts["model_version"]]
    if opts["api"]:
        args += ["--api", opts["api"]] + (["--token", opts["token"]] if opts["token_given"] else [])
    elif opts["user"] != "local":
        args += ["--user", opts["user"]]
    if opts["concurrency"] != DEFAULT_CONCURRENCY:
        args += ["--concurrency", str(opts["concurrency"])]
    if opts["name"]:
        args += ["--name", opts["name"]]
    if opts["limit"] is not None:
        args += ["--limit", str(opts["limit"])]
    if not wait:
        args.append("--no-wait")
    return shlex.join([*args, "--resume"])


class Command(BaseCommand):
    help = ("Submit every input under PATH (folders recursively, globs, files) to MODEL as one batch, wait for "
            "the jobs, and write one result line per input to --out (.csv or .jsonl). In-process by default; "
            "over HTTP with --api and --token.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="files, folders (recursive) or globs")
        parser.add_argument("--model", required=True, help="model name, e.g. resnet18")
        parser.add_argument("--model-version", dest="model_version", help="model version (default: latest)")
        parser.add_argument("--out", help="results file, .csv or .jsonl (default: bulk-<time>.csv)")
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out: skip inputs already there, collect unfinished jobs")
        parser.add_argument("--no-wait", dest="wait", action="store_false", help="only enqueue; do not wait")
        parser.add_argument("--api", help="submit over HTTP to this InferQ, e.g. http://127.0.0.1:8000")
        parser.add_argument("--token", help="API token for --api (default: $INFERQ_TOKEN)")
        parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                            help="files read (and, with --api, requests) in flight at once")
        parser.add_argument("--user", default="local", help="owner of the jobs in-process (created if missing)")
        parser.add_argument("--name", default="", help="batch name (default: the paths)")
        parser.add_argument("--limit", type=int, help="submit at most N new inputs in this run")
        parser.add_argument("--progress-every", type=float, default=5.0,
                            help="seconds between progress lines when stderr is not a terminal")

    def handle(self, *args: Any, **opts: Any) -> None:
        opts["token_given"] = bool(opts["token"])
        opts["token"] = opts["token"] or os.environ.get("INFERQ_TOKEN", "")
        if opts["api"] and not opts["token"]:
            raise CommandError("--api needs --token (or INFERQ_TOKEN)")
        if opts["concurrency"] < 1 or (opts["limit"] is not None and opts["limit"] < 0):
            raise CommandError("--concurrency must be at least 1 and --limit not negative")
        if opts["resume"] and not opts["out"]:
            raise CommandError("--resume needs --out: the results file of the run to continue")
        out = Path(opts["out"] or time.strftime("bulk-%Y%m%d-%H%M%S.csv"))
        stop = threading.Event()
        stream = getattr(self.stderr, "_out", sys.stderr)
        try:
            results = ResultsFile(out)
            if results.exists() and not opts["resume"]:
                raise CommandError(f"{out} exists: add --resume to continue that run, or choose another --out")
            plan = Plan(inputs=discover(opts["paths"]), out=results, wait=opts["wait"],
                        limit=opts["limit"], concurrency=opts["concurrency"],
                        name=opts["name"] or ("submit_bulk " + " ".join(opts["paths"]))[:200])
            submitter = self._submitter(opts, stop)
        except (BulkError, BulkAbort, ResultsError) as exc:
            raise CommandError(str(exc)) from exc
        # One "job queued" log line per input would bury the progress bar.
        quiet = logging.getLogger("inferq.jobs")
        level = quiet.level
        if opts["verbosity"] < 2:
            quiet.setLevel(logging.WARNING)
        try:
            with stop_on_sigint(stop, stream):
                summary = BulkRun(plan, submitter, stop=stop, progress=lambda to_submit, total: Progress(
                    stream, total=total, to_submit=to_submit, wait=plan.wait, every=opts["progress_every"]),
                    say=lambda text: self.stderr.write(self.style.WARNING(text))).run()
        except (BulkError, BulkAbort, ResultsError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            raise CommandError("Interrupted. Resume with:\n  " + resume_command(opts, out, wait=opts["wait"]),
                               returncode=130) from None
        finally:
            quiet.setLevel(level)
        self.stdout.write("\n".join(summary.lines()))
        if summary.aborted:
            raise CommandError(f"Stopped: {summary.aborted}\nResume with:\n  "
                               + resume_command(opts, out, wait=opts["wait"]), returncode=1)
        if summary.interrupted:
            raise CommandError(f"Interrupted after {summary.submitted} submissions; the jobs submitted keep "
                               f"running. Resume with:\n  {resume_command(opts, out, wait=opts['wait'])}",
                               returncode=130)
        if summary.unfinished:
            self.stdout.write("Collect the results with:\n  " + resume_command(opts, out, wait=True))
        if summary.failed:
            raise CommandError(f"{summary.failed} of {summary.inputs} inputs failed; see {out}", returncode=1)

    def _submitter(self, opts: dict[str, Any], stop: threading.Event) -> Submitter:
        if opts["api"]:
            from api.bulk_remote import RemoteSubmitter

            return RemoteSubmitter(api=opts["api"], token=opts["token"], model=opts["model"],
                                   version=opts["model_version"], stop=stop)
        from api.bulk_local import LocalSubmitter

        return LocalSubmitter(username=opts["user"], model=opts["model"], version=opts["model_version"], stop=stop)
