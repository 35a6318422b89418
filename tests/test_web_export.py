"""The Train tab's ``/train_export`` endpoint on the running app follows the store's rule
(engine/export.py, tests/test_store_rule.py): it refuses a shipped model's name, the name of a model
in use, and an existing name without the overwrite checkbox; with it, the old model is moved aside
whole and the reply says how to put it back. An API caller that sends no checkbox value (the
endpoint's three inputs before it) gets no overwrite."""
from __future__ import annotations

import pytest

from engine import replaced
from test_store_rule import files_of, make_run

pytest_plugins = ["web_helpers"]
pytestmark = pytest.mark.slow  # the app in a subprocess (~20 s to start): python3 dev.py test --full


def test_train_export_endpoint_follows_the_store_rule(train_app):
    from gradio_client.exceptions import AppError

    make_run(train_app.store.parent / "runs", "export_rule")  # a run with a checkpoint: nothing to train
    c = train_app.client()

    def export(*args):
        return c.predict("export_rule", *args, api_name="/train_export")

    before = files_of(train_app.store / "tiny_b")
    with pytest.raises(AppError, match="'tiny200' is a shipped model"):
        export("tiny200", "tiny", True)  # refused by name, even where this store has none
    assert not (train_app.store / "tiny200").exists()
    with pytest.raises(AppError, match="'tiny' is the model in use"):
        export("tiny", "tiny", True)  # the page's model
    with pytest.raises(AppError, match="'tiny' is the model in use"):
        export("tiny", "tiny_b", True)  # the model the app opened with, whatever the page shows
    with pytest.raises(AppError, match="'tiny_b' already exists in the store: tick"):
        export("tiny_b", "tiny", False)
    with pytest.raises(AppError, match="'tiny_b' already exists in the store: tick"):
        export("tiny_b", "tiny")  # no checkbox value sent: no overwrite
    assert files_of(train_app.store / "tiny_b") == before and not replaced.list_replaced(train_app.store, "tiny_b")

    msg, picker = export("tiny_b", "tiny", True)
    (entry,) = replaced.list_replaced(train_app.store, "tiny_b")
    assert "as **tiny_b**" in msg and f"`python diffusion.py restore {entry.entry}` puts it back" in msg
    assert files_of(entry.folder) == before and picker["value"] == "tiny"
    replaced.restore(entry.entry, train_app.store)  # the undo the reply names: the old bytes are back
    assert files_of(train_app.store / "tiny_b") == before
