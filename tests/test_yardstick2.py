"""The second yardstick (a VGG-style network, strong augmentation, resumable training) and the
colour-only baseline."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.classifier import (CLASSIFIER_CONFIG, PlainConvNet, _augment_strong, _to_input, build_classifier,
                                   load_classifier, save_classifier, train_classifier)
from evaluation.colour import ColourBaseline, colour_histograms


def _tiny_data(n_per_class: int = 12, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 256, (len(labels), 16, 16, 3), dtype=np.uint8)
    images[..., 0] = (labels[:, None, None] * 80).astype(np.uint8)  # a learnable class signal
    return images, labels


class _Stop(Exception):
    pass


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Stopped during epoch 2 of 3 and run again with the same state path: the weights equal an unbroken
    run's, bit for bit (weights, AdamW's moments, the schedule and the generator all come back)."""
    images, labels = _tiny_data()
    kw = dict(epochs=3, batch_size=8, width=4, blocks=(1, 2, 2, 2), arch="plain", augmentation="strong", seed=3)
    unbroken = train_classifier(images, labels, 3, **kw)
    state = tmp_path / "training_state"

    def stop_in_epoch_2(epoch: int, model: torch.nn.Module) -> None:
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train_classifier(images, labels, 3, **kw, state_path=state, on_epoch=stop_in_epoch_2)
    assert json.loads(state.with_suffix(".json").read_text())["epoch"] == 1
    resumed = train_classifier(images, labels, 3, **kw, state_path=state)
    a, b = unbroken.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plain_network_saves_loads_and_refuses_unknown_archs(tmp_path: Path) -> None:
    net = PlainConvNet(5, width=4, blocks=(1, 2, 2, 2)).eval()
    save_classifier(net, tmp_path, {"val_accuracy": 0.5})
    loaded, meta = load_classifier(tmp_path)
    assert isinstance(loaded, PlainConvNet) and meta["arch"] == "plain"
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded(x), net(x))
    # a config without "arch" is a ResNet (every classifier saved before the second yardstick)
    cfg = json.loads((tmp_path / CLASSIFIER_CONFIG).read_text())
    assert type(build_classifier({k: v for k, v in cfg.items() if k != "arch"})).__name__ == "SmallResNet"
    with pytest.raises(ValueError, match="arch"):
        build_classifier({**cfg, "arch": "vit"})
    with pytest.raises(ValueError, match="arch"):
        train_classifier(*_tiny_data(), 3, epochs=1, width=4, arch="vit")


def test_mirror_average_pools_an_image_and_its_mirror_and_is_read_from_the_config(tmp_path: Path) -> None:
    """With "mirror_average" in classifier.json the loaded network's features are the mean of the
    image's and its mirror's (computed here by hand from the one-view network), so an image and its
    mirror score alike; without it the views differ. A non-boolean value is refused."""
    net = PlainConvNet(5, width=4, blocks=(1, 2, 2, 2)).eval()
    save_classifier(net, tmp_path, {"mirror_average": True})
    loaded, meta = load_classifier(tmp_path)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        by_hand = (net.features(x) + net.features(x.flip(-1))) / 2
        torch.testing.assert_close(loaded.features(x), by_hand)
        torch.testing.assert_close(loaded(x), net.head(by_hand))
        torch.testing.assert_close(loaded(x.flip(-1)), loaded(x))
        assert not torch.allclose(net(x.flip(-1)), net(x))  # one view: the mirror scores differently
    cfg = json.loads((tmp_path / CLASSIFIER_CONFIG).read_text())
    assert build_classifier({k: v for k, v in cfg.items() if k != "mirror_average"}).mirror_average is False
    with pytest.raises(ValueError, match="mirror_average"):
        build_classifier({**cfg, "mirror_average": "yes"})


def test_strong_augmentation_is_seeded_in_range_and_changes_framing_and_colour() -> None:
    images, _ = _tiny_data(n_per_class=8)
    x = _to_input(images, torch.device("cpu"))
    a = _augment_strong(x, torch.Generator().manual_seed(1))
    b = _augment_strong(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    per_image_change = (a - x).abs().flatten(1).mean(1)
    assert bool((per_image_change > 0.01).all())  # every image is cropped, jittered or erased
    mean_colour_shift = (a.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().mean()
    assert float(mean_colour_shift) > 0.01  # colour jitter moves the average colour


def _bars(n: int, vertical: bool, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Images of one bar on black: the same pixel counts whether vertical or horizontal."""
    out = np.zeros((n, 16, 16, 3), np.uint8)
    for i in range(n):
        k = rng.integers(2, 12)
        if vertical:
            out[i, 2:14, k:k + 3] = colour
        else:
            out[i, k:k + 3, 2:14] = colour
    return out


def test_colour_baseline_sees_colour_and_not_shape() -> None:
    """The oracle: classes that differ only in colour are learnt; classes that differ only in shape
    (a vertical against a horizontal bar of the same colour and size) stay at chance."""
    rng = np.random.default_rng(0)
    by_colour = np.concatenate([_bars(60, True, (200, 30, 30), rng), _bars(60, True, (30, 30, 200), rng)])
    by_shape = np.concatenate([_bars(60, True, (200, 30, 30), rng), _bars(60, False, (200, 30, 30), rng)])
    labels = np.repeat([0, 1], 60)
    assert ColourBaseline(2).fit(by_colour, labels).accuracy(by_colour, labels) > 0.95
    assert ColourBaseline(2).fit(by_shape, labels).accuracy(by_shape, labels) < 0.65


def test_colour_histograms_count_pixels_and_the_baseline_round_trips(tmp_path: Path) -> None:
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :2] = 255  # half white, half black
    h = colour_histograms(img, bins=2)
    assert h.shape == (1, 8) and h[0, 0] == 0.5 and h[0, 7] == 0.5
    images, labels = _tiny_data()
    m = ColourBaseline(3, bins=4).fit(images, labels, epochs=2)
    m.save(tmp_path)
    np.testing.assert_allclose(ColourBaseline.load(tmp_path).logits(images), m.logits(images))
    cfg = json.loads((tmp_path / "colour_baseline.json").read_text())
    (tmp_path / "colour_baseline.json").write_text(json.dumps({**cfg, "bins": 64}))
    with pytest.raises(ValueError, match="bins"):
        ColourBaseline.load(tmp_path)


def test_the_second_yardstick_in_the_repo_loads_as_recorded() -> None:
    """assets/yardstick2_tiny200: the plain network, mirror averaging on, its 200 classes named, and the
    held-out figure its card and BENCHMARKS quote (what every tiny200 figure's second column rests on)."""
    folder = Path(__file__).resolve().parents[1] / "assets" / "yardstick2_tiny200"
    clf, meta = load_classifier(folder)
    assert isinstance(clf, PlainConvNet) and clf.mirror_average and meta["width"] == 48
    assert len(meta["classes"]) == 200 and meta["val_accuracy"] >= 0.45 > meta["val_accuracy_one_view"]
