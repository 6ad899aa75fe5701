"""`manage.py export_model` and `manage.py inferq_token`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from workers.store import ModelStore


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_export_model_writes_a_store_entry(store: Path) -> None:
    output = run("export_model", "resnet18", "--name", "r18", "--batch-size", "4")

    spec = ModelStore(store).get("r18")
    assert str(store / "r18" / "1") in output
    assert (spec.architecture, spec.batch_size, spec.version) == ("resnet18", 4, "1")
    assert spec.weights_path.is_file()


def test_export_model_needs_an_architecture(store: Path) -> None:
    with pytest.raises(CommandError, match="architecture"):
        run("export_model")


def test_export_model_refuses_an_unknown_architecture(store: Path) -> None:
    with pytest.raises(CommandError, match="unknown architecture 'lenet'"):
        run("export_model", "lenet")
    assert ModelStore(store).names() == []


@pytest.mark.django_db
def test_inferq_token_prints_a_working_token(client: Any) -> None:
    from rest_framework.authtoken.models import Token

    token = run("inferq_token", "--username", "ops").strip()

    assert Token.objects.get(key=token).user.username == "ops"
    assert run("inferq_token", "--username", "ops").strip() == token  # idempotent
    response = client.get("/v1/jobs", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200
