"""The bench reads the layout the worker chose at load from the worker's log (bench.__main__.worker_layout)."""

from __future__ import annotations

from bench.__main__ import worker_layout

STREAMS = ("2026-12-07 09:20:31,004 INFO inferq.worker model resnet50:1 runs batches as {n} stream(s): 4 inputs in "
           "208 ms as one 2-thread pass, 199 ms as 2 single-thread streams")
CONV = ("2026-12-07 09:20:33,912 INFO inferq.worker model resnet50:1 runs the 1x1 convolutions of its single-thread "
        "passes on {where}: 2 x 4 inputs in 397 ms as PyTorch picks, 373 ms on oneDNN")
OTHER = ("2026-12-07 09:20:30,100 INFO inferq.worker model digits:1 runs batches as 2 stream(s): 8 inputs in 30 ms "
         "as one 2-thread pass, 25 ms as 2 single-thread streams")


def test_the_layout_and_the_1x1_choice_are_read_with_their_measurements() -> None:
    log = "\n".join([OTHER, STREAMS.format(n=2), CONV.format(where="oneDNN"), "a job-level warning"])

    short, details = worker_layout(log, "resnet50")

    assert short == "2 streams, 1x1 on oneDNN"
    assert details == ("runs batches as 2 stream(s): 4 inputs in 208 ms as one 2-thread pass, 199 ms as 2 "
                       "single-thread streams; runs the 1x1 convolutions of its single-thread passes on oneDNN: "
                       "2 x 4 inputs in 397 ms as PyTorch picks, 373 ms on oneDNN")


def test_one_pass_and_the_latest_load_count() -> None:
    log = "\n".join([STREAMS.format(n=2), CONV.format(where="oneDNN"), STREAMS.format(n=1),
                     CONV.format(where="PyTorch's choice")])

    assert worker_layout(log, "resnet50")[0] == "one pass, 1x1 on PyTorch's choice"


def test_a_model_whose_layout_was_not_measured_says_so() -> None:
    short, details = worker_layout(OTHER, "resnet50")

    assert short == "not measured"
    assert "INFERQ_STREAMS" in details
