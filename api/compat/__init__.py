"""Drop-in endpoints for clients written for other inference servers: TorchServe and KServe v2 (Triton)."""
