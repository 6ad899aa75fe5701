"""`manage.py export_model ARCH` writes a model store entry (weights + manifest)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = ("Export a torchvision architecture (random weights, a local state dict, or the published weights) "
            "or the digits demo model (`digits`) into MODEL_STORE; `--defaults` creates what `make run` serves.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("architecture", nargs="?", help="resnet18, resnet50, resnet152, mobilenet_v3_small, "
                            "… or `digits`")
        parser.add_argument("--name", help="model name in the store (default: the architecture)")
        parser.add_argument("--model-version", dest="model_version", help="version directory (default: next integer)")
        parser.add_argument("--weights", default="random",
                            help="`random` (seeded), `published` (downloads; needs network), or a state dict path")
        parser.add_argument("--format", default="state_dict", choices=["state_dict", "export", "torchscript"],
                            help="state_dict (default, mmap-shared), torch.export program, or TorchScript "
                                 "(deprecated)")
        parser.add_argument("--batch-size", type=int, default=8)
        parser.add_argument("--batch-delay-ms", type=float, default=5.0)
        parser.add_argument("--keep-batchnorm", action="store_true",
                            help="export the batch norms as they are instead of folding them into the convolutions "
                                 "before them (folded: the same answers, a faster forward pass)")
        parser.add_argument("--defaults", action="store_true", help="create resnet18 and digits if missing")

    def handle(self, *args: Any, **opts: Any) -> None:
        from workers import export
        from workers.store import ModelStore

        store = ModelStore(settings.MODEL_STORE)
        if opts["defaults"]:
            for path in export.ensure_default_models(store):
                self.stdout.write(f"exported {path}")
            return
        arch = opts["architecture"]
        if not arch:
            raise CommandError("name an architecture, or pass --defaults")
        try:
            if arch == "digits":
                path = export.export_digits(store, name=opts["name"] or "digits", version=opts["model_version"],
                                            fmt=opts["format"])
            else:
                path = export.export_torchvision(
                    store, arch, name=opts["name"], version=opts["model_version"], weights=opts["weights"],
                    fmt=opts["format"], batch_size=opts["batch_size"], batch_delay_ms=opts["batch_delay_ms"],
                    fold_batchnorm=not opts["keep_batchnorm"])
        except (ValueError, OSError, RuntimeError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"exported {path}"))
