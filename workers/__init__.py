"""The torch side of InferQ: model store, handlers, worker bootstrap and the job runner.

Only `workers.store` is imported by the web tier, and it never imports torch.
"""
