"""`manage.py inferq_token` prints an API token for a local user, creating both if needed."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Print a working API token for USERNAME (default: local), creating the user and token if needed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="local")

    def handle(self, *args: Any, **opts: Any) -> None:
        user, _ = get_user_model().objects.get_or_create(username=opts["username"])
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
