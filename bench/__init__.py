"""`make bench`: InferQ measured side by side against the physical limit, in one run, as ratios."""
