"""A store model keeps the texts it was trained under, and "snap to classes" reads a prompt by them
(engine.class_texts): export copies them from the run's data folder, the store refuses a file that
does not fit its config before reading it, and a prompt nearest another text of a class snaps to that
class's prompt even when another class's prompt is nearer. No text encoder: embeddings are made by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core import DiffusionConfig
from core.prompting import prompt_table
from engine import class_texts as CT
from engine import store
from engine.export import export_run
from engine.request import conditioning
from models import ConditionalUNet, UNetConfig

TINY = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                  head_channels=8, dropout=0.0)
CLASSES = [{"index": 0, "wnid": "n01443537", "name": "goldfish", "prompt": "a photo of a goldfish"},
           {"index": 1, "wnid": "n02123045", "name": "tabby", "prompt": "a photo of a tabby"}]
TEXTS = [["a photo of a goldfish", "a goldfish", "an orange fish in a bowl"],  # three texts
         ["a photo of a tabby", "a striped cat"]]  # two: preprocess cycles it to three


def axis(i: int) -> np.ndarray:
    v = np.zeros(384, np.float32)
    v[i] = 1.0
    return v


# each text its own direction, so which row went where is plain to see
EMB = {t: axis(i) for i, t in enumerate(t for ts in TEXTS for t in ts)}


def write_data(folder: Path, classes=CLASSES, texts=TEXTS) -> None:
    """A preprocess.py folder's text files: classes.json with each class's training prompts, and
    template_embeddings.npy padded as preprocess pads it (prompting.prompt_table)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.json").write_text(json.dumps(
        {"classes": [dict(c, training_prompts=t) for c, t in zip(classes, texts)]}))
    table = prompt_table(texts)
    np.save(folder / "template_embeddings.npy", np.stack([[EMB[t] for t in row] for row in table]))


def make_run(root: Path, data_dir: Path | None) -> Path:
    model, ema = ConditionalUNet(TINY), ConditionalUNet(TINY)
    extra = {"data": {"dir": str(data_dir)}} if data_dir else {}
    cfg = store.model_config(TINY, DiffusionConfig(), CLASSES, **extra)
    store.save_checkpoint(root / "run" / "checkpoints", 10, model, ema, torch.optim.AdamW(model.parameters()), cfg,
                          {"cpu": torch.get_rng_state()})
    return root / "run"


def test_texts_from_data_takes_each_class_own_rows_not_the_padding(tmp_path):
    write_data(tmp_path / "data")
    texts, rows = CT.texts_from_data(tmp_path / "data", CLASSES)
    assert texts == TEXTS
    np.testing.assert_array_equal(rows, np.stack([EMB[t] for ts in TEXTS for t in ts]))  # 5 rows, not 6


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "classes.json").write_text(json.dumps({"classes": [dict(c) for c in CLASSES]})), "no training prompts"),
    (lambda d: (d / "classes.json").write_text(json.dumps({"classes": [dict(CLASSES[1], training_prompts=TEXTS[1]),
                                                                      dict(CLASSES[0], training_prompts=TEXTS[0])]})),
     "not the model's"),
    (lambda d: np.save(d / "template_embeddings.npy", np.zeros((2, 2, 384), np.float32)), "does not fit"),
    (lambda d: (d / "template_embeddings.npy").write_bytes(b"not numpy"), "not readable"),
    (lambda d: (d / "classes.json").unlink(), "no readable classes.json"),
])
def test_texts_from_data_refuses_a_folder_that_does_not_fit(tmp_path, breakage, message):
    write_data(tmp_path / "data")
    breakage(tmp_path / "data")
    with pytest.raises(ValueError, match=message):
        CT.texts_from_data(tmp_path / "data", CLASSES)


def test_export_keeps_the_training_texts_and_snapping_pulls_toward_them(tmp_path):
    write_data(tmp_path / "data")
    done = export_run(make_run(tmp_path, tmp_path / "data"), "m", overwrite=False, store_root=tmp_path / "store")
    assert done.class_texts == f"5 training texts from {tmp_path / 'data'}"
    lm = store.load_model("m", store=tmp_path / "store")
    assert [c["texts"] for c in lm.classes] == TEXTS
    assert "| training texts | 5 " in (lm.path / store.CARD_FILE).read_text()
    prompt = 0.5 * EMB["a photo of a tabby"] + 0.7 * EMB["an orange fish in a bowl"]
    encode = {"fishy whiskers": prompt / np.linalg.norm(prompt)}
    encode.update(EMB)
    asked = []
    enc = lambda ps: asked.extend(ps) or np.stack([encode[p] for p in ps])  # noqa: E731
    targets = CT.snap_targets(lm, encode_fn=enc)
    assert asked == [c["prompt"] for c in CLASSES]  # the class prompts only: the texts' embeddings are stored
    assert targets.source == "training texts" and targets.temperature == CT.TEXTS_TEMPERATURE
    np.testing.assert_allclose(targets.keys, np.stack([EMB[t] for ts in TEXTS for t in ts]), atol=1e-3)
    # each text pulls toward its own class's prompt
    np.testing.assert_allclose(targets.values, np.stack([EMB[CLASSES[k]["prompt"]] for k, ts in enumerate(TEXTS)
                                                         for _ in ts]))

    # "fishy whiskers" is nearer the tabby's class prompt than the goldfish's, but nearer still to a goldfish
    # text that is not its prompt: read by the training texts, it snaps to the goldfish's prompt.
    snapped = conditioning(lm, ["fishy whiskers"], 1.0, enc)[0]
    np.testing.assert_allclose(snapped, EMB["a photo of a goldfish"], atol=1e-3)
    half = conditioning(lm, ["fishy whiskers"], 0.5, enc)[0]
    expect = 0.5 * encode["fishy whiskers"] + 0.5 * EMB["a photo of a goldfish"]
    np.testing.assert_allclose(half, expect / np.linalg.norm(expect), atol=1e-3)
    # another text of a class goes to that class's prompt
    np.testing.assert_allclose(conditioning(lm, ["a striped cat"], 1.0, enc)[0], EMB["a photo of a tabby"], atol=1e-3)

    # without stored texts (a model exported before, or its data gone) it snaps toward the class prompts
    (lm.path / CT.CLASS_TEXTS_FILE).unlink()
    old = CT.snap_targets(lm, encode_fn=enc)
    assert old.source == "class prompts" and old.temperature == CT.CLASS_PROMPTS_TEMPERATURE
    np.testing.assert_allclose(conditioning(lm, ["fishy whiskers"], 1.0, enc)[0], EMB["a photo of a tabby"],
                               atol=1e-3)


def test_export_without_its_data_folder_says_so_and_still_exports(tmp_path):
    done = export_run(make_run(tmp_path, tmp_path / "gone"), "m", overwrite=False, store_root=tmp_path / "store")
    assert "no training texts" in done.class_texts and "class prompts" in done.class_texts
    assert not (done.folder / CT.CLASS_TEXTS_FILE).exists()
    assert "texts" not in json.loads((done.folder / store.CONFIG_FILE).read_text())["classes"][0]


def test_a_class_texts_file_that_does_not_fit_its_config_is_refused(tmp_path):
    write_data(tmp_path / "data")
    folder = export_run(make_run(tmp_path, tmp_path / "data"), "m", overwrite=False,
                        store_root=tmp_path / "store").folder
    config = json.loads((folder / store.CONFIG_FILE).read_text())
    path = folder / CT.CLASS_TEXTS_FILE
    save_file({CT.EMBEDDINGS_KEY: torch.zeros(4, 384, dtype=torch.float16)}, str(path))  # 4 rows for 5 texts
    with pytest.raises(store.CheckpointError, match=r"shape \(5, 384\)"):
        CT.load_class_texts(folder, config)
    save_file({CT.EMBEDDINGS_KEY: torch.full((5, 384), float("nan"), dtype=torch.float16)}, str(path))
    with pytest.raises(store.CheckpointError, match="non-finite"):
        CT.load_class_texts(folder, config)
    path.write_bytes(b"\x80\x04 a pickle, not safetensors")
    with pytest.raises(store.CheckpointError, match="not a valid safetensors"):
        CT.load_class_texts(folder, config)
    huge = dict(config, classes=[dict(c, texts=["x"] * (CT.MAX_TEXTS + 1)) for c in config["classes"][:1]])
    save_file({CT.EMBEDDINGS_KEY: torch.zeros(1, 384, dtype=torch.float16)}, str(path))
    with pytest.raises(store.CheckpointError, match="expected one tensor"):
        CT.load_class_texts(folder, huge)


def test_the_texts_command_gives_an_older_model_its_texts_and_a_bad_folder_changes_nothing(tmp_path, capsys):
    import diffusion as cli

    write_data(tmp_path / "data")
    folder = export_run(make_run(tmp_path, None), "old", overwrite=False, store_root=tmp_path / "store").folder
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_data(tmp_path / "other", classes=CLASSES[::-1], texts=TEXTS[::-1])
    for bad in (tmp_path / "missing", tmp_path / "other"):
        assert cli.main(["texts", "old", "--data_dir", str(bad), "--store", str(tmp_path / "store")]) == 2
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert "not the model's" in capsys.readouterr().err
    assert cli.main(["texts", "old", "--data_dir", str(tmp_path / "data"), "--store", str(tmp_path / "store")]) == 0
    assert "5 training texts" in capsys.readouterr().out
    lm = store.load_model("old", store=tmp_path / "store")
    assert CT.snap_targets(lm, encode_fn=lambda ps: np.stack([EMB[p] for p in ps])).source == "training texts"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, CT.CLASS_TEXTS_FILE])  # no temporary left
