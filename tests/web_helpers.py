"""The app tests' session fixtures: the tiny app (and one under --auth) started once per session,
from the pieces in ``benchmarks.app_server`` (a tiny model store and data folder, ``web.py`` in a
subprocess on a free loopback port).

The server is started once per test session (fixtures below are imported by
``test_web.py`` and ``test_browser.py``), because loading the real text encoder
takes ~15 s. Every process started here is killed at teardown.
"""
from __future__ import annotations

import pytest

# the tiny store and data, and web.py in a subprocess: shared with the app benchmarks
from benchmarks.app_server import (  # noqa: F401 (the tests import them from here)
    AUTH,
    ROOT,
    TINY_CLASSES,
    TEST_MAX_WORK,
    TINY_SIZE,
    TinyApp,
    WebServer,
    _launch,
    free_port,
    make_tiny_data,
    make_tiny_sr_store,
    make_tiny_store,
    server_env,
)

_STARTED: dict[str, TinyApp] = {}  # the session's servers, started on first use

def _auth_app_needed(request) -> bool:
    return any("auth_app" in getattr(item, "fixturenames", ()) for item in request.session.items)


def _start_auth_app(tmp_path_factory) -> TinyApp:
    if "auth" not in _STARTED:
        _STARTED["auth"] = _launch(tmp_path_factory.mktemp("web_auth"), ["--max-queue", "1", "--concurrency", "1"],
                                   auth=AUTH)
    return _STARTED["auth"]


@pytest.fixture(scope="session")
def tiny_app(request, tmp_path_factory):
    """The app on the tiny model, no auth (shared by the gradio_client and browser tests).

    When the session also needs ``auth_app``, that server starts now too, so
    the two ~20 s start-ups (mostly the text encoder) overlap.
    """
    app = _launch(tmp_path_factory.mktemp("web"), [])
    if _auth_app_needed(request):
        _start_auth_app(tmp_path_factory)
    try:
        app.server.wait_ready()
        yield app
    finally:
        app.server.stop()


@pytest.fixture(scope="session")
def train_app(tmp_path_factory):
    """A second app of its own for the Train tab's tests. Training prepares data, writes runs and
    exports models into the store: on the shared ``tiny_app`` that would change what every later
    test expects of it (the fuzz's model list and its unprepared "shapes" folder above all)."""
    app = _launch(tmp_path_factory.mktemp("web_train"), [])
    try:
        app.server.wait_ready()
        yield app
    finally:
        app.server.stop()


@pytest.fixture(scope="session")
def auth_app(tmp_path_factory):
    """The app behind --auth with a tiny queue (one running job + one waiting)."""
    app = _start_auth_app(tmp_path_factory)
    try:
        app.server.wait_ready()
        yield app
    finally:
        app.server.stop()
        _STARTED.pop("auth", None)
