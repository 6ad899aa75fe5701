"""Print a secret key for local runs, generating var/secret_key once (stdlib only: runs before the venv)."""

import secrets
from pathlib import Path

path = Path(__file__).resolve().parent.parent / "var" / "secret_key"
if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(50))
    path.chmod(0o600)
print(path.read_text().strip())
