#!/usr/bin/env python3
"""Set up the project's environment and run it: the two commands in the README.

    python3 dev.py web [web.py options]     # set up, then launch the app
    python3 dev.py test [pytest options]    # set up (with test tools), then run the fast tests (minutes)
    python3 dev.py test --full [options]    # every test: the slow set too (browser, load, fuzz, DDP); CI runs this

Setup creates ``.venv`` next to this file and installs the locked
requirements (``requirements*.lock``: every package pinned with its hashes,
resolved from ``requirements*.txt`` by ``python3 dev.py lock``) with uv (fast,
and it ignores local "+cpu" torch wheels that break torchvision). It is idempotent: a stamp of the requirements' hash makes
the second run skip straight to the command. Needs only python3 (3.11+).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
UV_VERSION = "0.13.9"
MIN_PYTHON = (3, 11)  # the pinned packages (imageio 2.38, numpy 2.4) need 3.11
MIN_PYTHON_TEXT = ".".join(map(str, MIN_PYTHON))
CHROMIUM = "/usr/bin/chromium"
FAST_SET = "not slow and not gpu"  # what `dev.py test` runs without --full


def say(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def requirements_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


LOCKS = {False: "requirements.lock", True: "requirements-test.lock"}  # with_tests -> lock file


def lock() -> int:
    """Re-resolve the pinned requirements into the hash-checked lock files (needs the index)."""
    ensure_venv(with_tests=False)
    uv = VENV / "bin" / "uv"
    for with_tests, out in LOCKS.items():
        src = "requirements-test.txt" if with_tests else "requirements.txt"
        say(f"resolving {src} -> {out}")
        run([str(uv), "pip", "compile", src, "--universal", "--generate-hashes", "--python-version",
             MIN_PYTHON_TEXT, "-o", out, "-q"], cwd=ROOT)
    return 0


def ensure_venv(with_tests: bool) -> None:
    req = ROOT / LOCKS[with_tests]
    files = [ROOT / "requirements.txt", ROOT / LOCKS[False]] + (
        [ROOT / "requirements-test.txt", ROOT / LOCKS[True]] if with_tests else [])
    stamp = VENV / (".stamp-test" if with_tests else ".stamp-runtime")
    digest = requirements_hash(files)
    if PY.exists() and stamp.exists() and stamp.read_text() == digest:
        return
    if not PY.exists():
        say(f"creating virtual environment in {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    uv = VENV / "bin" / "uv"
    if not uv.exists():
        say(f"installing uv {UV_VERSION}")
        run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"uv=={UV_VERSION}"])
    say(f"installing {req.name} (first time: a few minutes; torch with its CUDA libraries is ~5 GB)")
    # The lock pins every package (not only ours) with its hashes: the same environment on every machine.
    run([str(uv), "pip", "install", "--python", str(PY), "--require-hashes", "-r", str(req)])
    run([str(PY), "-c", "import torch, torchvision; torchvision.ops.nms"])  # the "+cpu wheel" trap fails here
    stamp.write_text(digest)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def ensure_chromium() -> bool:
    """The browser test drives Debian's chromium (never a downloaded browser).

    Returns False when it could not be installed: the browser test then skips
    on a developer's machine, and the run stops under CI=true, where a skipped
    browser test would hide a broken app.
    """
    if Path(CHROMIUM).exists() or shutil.which("chromium"):
        return True
    if os.name != "posix" or not shutil.which("apt-get"):
        say("chromium not found and no apt-get: the browser test will be skipped")
        return False
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        say("chromium not found and not root: `apt-get install chromium` to run the browser test")
        return False
    say("installing Debian's chromium for the browser test")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(sudo + ["apt-get", "update", "-qq"], env=env)
        run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=env)
    except subprocess.CalledProcessError as e:
        say(f"could not install chromium ({e}); the browser test will be skipped")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["web", "test", "setup", "lock"],
                        help="what to do after setting up (lock: refresh requirements*.lock from requirements*.txt)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed on to web.py / pytest")
    opts = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        say(f"Python {MIN_PYTHON_TEXT} or newer is needed (this is {sys.version.split()[0]}): "
            f"run this file with a newer python3")
        return 2
    if opts.command == "lock":
        return lock()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if opts.command == "web":
        ensure_venv(with_tests=False)
        return subprocess.call([str(PY), str(ROOT / "web.py"), *opts.args], cwd=ROOT, env=env)
    ensure_venv(with_tests=True)
    if opts.command == "setup":
        return 0
    args = list(opts.args)
    full = "--full" in args
    args = [a for a in args if a != "--full"]
    if in_ci() and not full:
        say("CI=true runs every test: use `python3 dev.py test --full` (as .ci/run does)")
        return 2
    if full and not ensure_chromium() and in_ci():
        say("CI=true and chromium could not be installed: stopping (the browser test must run in CI)")
        return 1
    # The fast set (markers in pytest.ini): everything but the slow and GPU tests. --full: all of them.
    select = [] if full else ["-m", FAST_SET]
    return subprocess.call([str(PY), "-m", "pytest", *select, *(args or ["-q"])], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
