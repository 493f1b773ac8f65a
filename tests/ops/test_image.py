"""The Docker image without a Docker engine: the Dockerfile has the shape it promises
(multi-stage, non-root, a health check, the pinned wheel set), and its install step —
ops/install.sh, which both stages run — works as a plain script: it builds the wheels of the
locked set and installs the service from them alone, into a virtualenv that then runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "ops" / "requirements.lock"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    return {
        _normal(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", LOCK.read_text(), re.MULTILINE)
    }


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_dockerfile_builds_wheels_then_runs_them_as_a_user_with_a_health_check() -> None:
    steps = instructions()
    known = {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert {op for op, _ in steps} <= known
    stages = [args for op, args in steps if op == "FROM"]
    assert [s.split()[-1] for s in stages] == ["build", "runtime"]
    runs = [args for op, args in steps if op == "RUN"]
    assert any("ops/install.sh wheels /wheels" in r for r in runs)
    assert any("install.sh install /wheels /opt/venv" in r and "from=build" in r for r in runs)
    runtime = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][1] :]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(op == "HEALTHCHECK" and "/health/ready" in args for op, args in runtime)
    assert ("ENTRYPOINT", '["marketplace-pay"]') in runtime
    assert any(op == "CMD" and '"serve"' in args and '"0.0.0.0"' in args for op, args in runtime)
    # what the build copies is not ignored by .dockerignore
    ignored = (ROOT / ".dockerignore").read_text().split()
    for source in ("pyproject.toml", "README.md", "src", "db", "ops/install.sh", "ops/requirements.lock"):
        assert source not in ignored and (ROOT / source).exists(), source


def test_the_lock_pins_what_pyproject_asks_for() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for requirement in project["dependencies"]:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", requirement).groups()  # type: ignore[union-attr]
        assert pins.get(_normal(name)) == version, f"{requirement}: the lock has {pins.get(_normal(name))}"
    pinned = [block for block in re.split(r"\n(?=[A-Za-z])", LOCK.read_text()) if "==" in block]
    assert len(pinned) == len(pins) and all("--hash=sha256:" in block for block in pinned), (
        "every pin carries its hashes"
    )


def test_the_image_install_step_runs_as_a_plain_script(tmp_path: Path) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    built = subprocess.run(
        ["sh", "ops/install.sh", "wheels", str(wheels)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr[-3000:]
    installed = subprocess.run(
        ["sh", "ops/install.sh", "install", str(wheels), str(venv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # exactly the locked set (plus the service itself), nothing resolved anew
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--isolated", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = {_normal(d["name"]): d["version"] for d in json.loads(listed)}
    assert versions.pop("marketplace-pay") == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    versions.pop("pip", None)
    assert versions == locked()
    # and the service's command runs, with the migrations inside the wheel
    help_text = subprocess.run(
        [str(venv / "bin" / "marketplace-pay"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "serve" in help_text
    migrations = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.resources as r; print(sorted(p.name for p in r.files('marketplace_pay').joinpath('_migrations').iterdir())[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert migrations == "001_foundation.sql"
