"""The evaluation: Frechet distance, the yardstick classifier, the Inception path, the table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate as cli  # the command line: its flag parsers and main
import evaluation as E
from evaluation.classifier import _augment


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 8))
    assert E.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by d: FD = |d|^2
    shift = np.full(8, 0.5)
    assert E.frechet_distance(a, a + shift) == pytest.approx(8 * 0.25, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 8-d: tr(I) + tr(4I) - 2 tr(2I) = 8 + 32 - 32 = 8
    b = rng.normal(size=(200000, 8)) * 2
    assert E.frechet_distance(rng.normal(size=(200000, 8)), b) == pytest.approx(8.0, rel=0.03)
    with pytest.raises(ValueError):
        E.frechet_distance(a[:, :4], a)


def test_frechet_distance_matches_scipy_formula():
    import scipy.linalg as scipy_linalg
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 1
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(sa @ sb).real
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * covmean)
    assert E.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    mean_term, cov_term = E.frechet_parts(a, b)
    assert mean_term == pytest.approx(((a.mean(0) - b.mean(0)) ** 2).sum(), rel=1e-9)
    assert cov_term == pytest.approx(np.trace(sa + sb - 2 * covmean), rel=1e-6)


def test_frechet_parts_tell_a_shifted_cloud_from_a_wider_one():
    """A shift shows in the mean term only, a wider cloud in the covariance term only."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200000, 8))
    shifted = E.frechet_parts(a, rng.normal(size=(200000, 8)) + 0.5)
    assert shifted[0] == pytest.approx(8 * 0.25, abs=0.1) and shifted[1] == pytest.approx(0.0, abs=0.05)
    wider = E.frechet_parts(a, rng.normal(size=(200000, 8)) * 2)  # 8 + 32 - 2 * 16: see above
    assert wider[0] == pytest.approx(0.0, abs=0.05) and wider[1] == pytest.approx(8.0, rel=0.03)
    with pytest.raises(ValueError):
        E.frechet_parts(a[:1], a)


def test_fd_parts_benchmark_sees_classes_drawn_without_variety():
    """bench_fd_parts: the real photos against themselves are 1.0 spread and FD 0; the same classes, each
    drawn as its centroid plus a tenth of its variety, keep their means (mean term ~0) but lose their shape."""
    from benchmarks.bench_fd_parts import fd_parts_rows

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(20), 100)
    real = rng.normal(size=(20, 16))[labels] + rng.normal(size=(2000, 16))
    centroids = np.stack([real[labels == c].mean(0) for c in range(20)])[labels]
    same, narrow = fd_parts_rows(real, labels, {"same": (real, labels),
                                                "narrow": (centroids + 0.1 * (real - centroids), labels)})
    assert same["fd"] == pytest.approx(0.0, abs=1e-6) and same["spread"] == same["within_class"] == pytest.approx(1.0)
    assert narrow["within_class"] == pytest.approx(0.1) and narrow["mean_term"] == pytest.approx(0.0, abs=1e-9)
    assert narrow["cov_term"] > 2 and narrow["spread"] < 0.6


def _colour_images(n_per_class: int, size: int = 16, seed: int = 0):
    """Three easy classes: reddish, greenish, bluish noise."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(3):
        base = np.zeros(3)
        base[c] = 200
        x = np.clip(rng.normal(base + 30, 25, size=(n_per_class, size, size, 3)), 0, 255).astype(np.uint8)
        imgs.append(x)
        labels += [c] * n_per_class
    return np.concatenate(imgs), np.array(labels)


@pytest.mark.slow
def test_classifier_learns_and_round_trips(tmp_path):
    x, y = _colour_images(40)
    clf = E.train_classifier(x, y, 3, epochs=8, batch_size=32, width=8)
    xv, yv = _colour_images(10, seed=1)
    pred, feats = E.classify(clf, xv)
    assert (pred == yv).mean() > 0.9
    assert feats.shape == (30, clf.feature_dim)
    E.save_classifier(clf, tmp_path, {"epochs": 3})
    clf2, meta = E.load_classifier(tmp_path)
    np.testing.assert_array_equal(E.classify(clf2, xv)[0], pred)
    assert meta["num_classes"] == 3


def test_inception_fid_path_with_random_weights(tmp_path):
    import pytorch_fid.inception as fid_inception
    from safetensors.torch import save_file

    # Build pytorch-fid's FID Inception structure with random weights (no download).
    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    feats = E.InceptionFeatures(path)
    x, _ = _colour_images(2, size=32)
    f = feats(x)
    assert f.shape == (6, 2048) and np.isfinite(f).all()
    assert fid_inception.load_state_dict_from_url.__name__ != "<lambda>"  # the patch was undone


def test_parse_settings():
    assert cli.parse_settings("ddpm:1000, dpm++:20") == [("ddpm", 1000), ("dpm++", 20)]
    for bad in ["euler:10", "ddim", "ddim:0", "ddim:x"]:
        with pytest.raises(ValueError):
            cli.parse_settings(bad)


def _colour_data(folder: Path) -> list[dict]:
    """A preprocessed folder of the three colour classes (24 training and 6 held-out images each)."""
    x, y = _colour_images(24)
    xv, yv = _colour_images(6, seed=2)
    folder.mkdir()
    classes = [{"index": i, "wnid": f"c{i}", "name": n, "names": [n], "prompt": f"a photo of a {n}", "count": 24}
               for i, n in enumerate(["red", "green", "blue"])]
    np.save(folder / "train_images.npy", x)
    np.save(folder / "train_labels.npy", y.astype(np.int64))
    np.save(folder / "val_images.npy", xv)
    np.save(folder / "val_labels.npy", yv.astype(np.int64))
    emb = np.eye(3, 384, dtype=np.float32)
    np.save(folder / "class_embeddings.npy", emb)
    np.save(folder / "template_embeddings.npy", emb[:, None, :])
    (folder / "classes.json").write_text(json.dumps({"prompt_template": "a photo of a {}", "classes": classes}))
    (folder / "manifest.json").write_text(json.dumps({"source": "synthetic"}))
    return classes


def _tiny_model(classes: list[dict], data: Path, store: Path):
    import core as D
    from engine import store as ms
    from models import ConditionalUNet, UNetConfig

    torch.manual_seed(0)
    net = ConditionalUNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_resolutions=(8,), head_channels=8, dropout=0.0))
    cfg = ms.model_config(net.config, D.DiffusionConfig(), classes, data={"dir": str(data)})
    ms.save_to_store("tiny", net.state_dict(), cfg, "# tiny\n", store=store, dtype=torch.float32)
    return ms.load_model("tiny", store=store)


def test_a_yardstick_of_more_classes_scores_the_model_over_all_of_them(tmp_path):
    from dataprep.dataset import PreprocessedDataset

    data = tmp_path / "data"
    classes = _colour_data(data)
    E.fit_yardstick(PreprocessedDataset(data, "train"), PreprocessedDataset(data, "val"), tmp_path / "clf",
                    recipe=E.YardstickRecipe(epochs=20, width=8, batch_size=32))
    mine = [dict(classes[2], index=0), dict(classes[0], index=1)]  # blue and red, in the other order
    lm = _tiny_model(mine, data, tmp_path / "store")
    emb = {c["prompt"]: np.eye(3, 384, dtype=np.float32)[i] for i, c in enumerate(classes)}
    result = E.evaluate(lm, data, [("ddim", 2)], per_class=2, batch_size=4, classifier_dir=tmp_path / "clf",
                        encode_fn=lambda ps: np.stack([emb[p] for p in ps]))
    assert result["yardstick_classes"] == 3 and result["classes"] == 2
    assert result["real_val_images"] == 12  # the held-out photos of blue and red only
    assert result["real_val_accuracy"] > 0.9  # blue photos count as blue (model class 0 = yardstick class 2)
    assert set(result["rows"][0]["class_accuracy"]) == {"blue", "red"}
    green_only = [dict(classes[1], index=0), {**classes[0], "index": 1, "name": "violet", "prompt": "a violet"}]
    with pytest.raises(ValueError, match="does not know the model's classes violet"):
        E.evaluate(_tiny_model(green_only, data, tmp_path / "store2"), data, [("ddim", 2)], per_class=2,
                   classifier_dir=tmp_path / "clf")


def test_a_second_yardstick_scores_the_same_images_and_prints_its_own_table(tmp_path):
    """--classifier2: the second table's figures are the second classifier's verdicts on the very images
    the first table scored (saved with samples_dir and classified here directly); the free-text rows
    carry its verdict too. A mirror-averaging yardstick differs from the first, so the two can disagree."""
    from dataprep.dataset import PreprocessedDataset

    data = tmp_path / "data"
    classes = _colour_data(data)
    train, val = PreprocessedDataset(data, "train"), PreprocessedDataset(data, "val")
    E.fit_yardstick(train, val, tmp_path / "clf", recipe=E.YardstickRecipe(epochs=20, width=8, batch_size=32))
    E.fit_yardstick(train, val, tmp_path / "clf2", recipe=E.YardstickRecipe(epochs=3, width=4, batch_size=32,
                                                                           arch="plain", mirror_average=True))
    lm = _tiny_model([dict(c, index=i) for i, c in enumerate(classes)], data, tmp_path / "store")
    emb = {c["prompt"]: np.eye(3, 384, dtype=np.float32)[i] for i, c in enumerate(classes)}
    emb["a scarlet thing"] = np.eye(3, 384, dtype=np.float32)[0]
    result = E.evaluate(lm, data, [("ddim", 2)], per_class=3, batch_size=4, classifier_dir=tmp_path / "clf",
                        encode_fn=lambda ps: np.stack([emb[p] for p in ps]), samples_dir=tmp_path / "samples",
                        second_classifier_dir=tmp_path / "clf2", free_text=[("a scarlet thing", 0)],
                        free_text_setting=("ddim", 2))
    saved = np.load(tmp_path / "samples" / "samples_ddim_2.npz")
    clf2, meta2 = E.load_classifier(tmp_path / "clf2")
    assert meta2["mirror_average"] and clf2.mirror_average
    pred2, _ = E.classify(clf2, saved["images"])
    second = result["second_yardstick"]
    assert second["rows"][0]["accuracy"] == pytest.approx(float((pred2 == saved["labels"]).mean()))
    val_pred2, _ = E.classify(clf2, np.asarray(val.images))
    assert second["real_val_accuracy"] == pytest.approx(float((val_pred2 == np.asarray(val.labels)).mean()))
    assert second["classifier"]["arch"] == "plain" and result["classifier"].get("arch", "resnet") == "resnet"
    assert "accuracy2" in result["free_text"][0]
    table = E.format_table(result)
    assert "The same images by the second yardstick (plain, width 4" in table and "each image and its mirror" in table
    assert table.count("| real held-out photos (reference) |") == 2


@pytest.mark.parametrize("given, expected", [
    ([], (4.5, (0.5, 80.0))),  # the model's own defaults, as the CLI and the app sample it
    (["--guidance", "2", "--guidance-interval", "none"], (2.0, None)),
    (["--guidance-interval", "1,9"], (4.5, (1.0, 9.0))),
])
def test_the_cli_scores_at_the_models_own_guidance_unless_told(tmp_path, monkeypatch, given, expected):
    """A model's card compares it at its defaults: evaluate.py takes its guidance scale and band from the
    model's sampler_defaults (a fixed 3.0 would score tiny200, a guidance-6 model, at the wrong scale)."""
    from engine import store as ms

    lm = _tiny_model([{"index": 0, "name": "red", "prompt": "a red"}], tmp_path / "data", tmp_path / "store")
    cfg = json.loads((lm.path / ms.CONFIG_FILE).read_text())
    cfg["sampler_defaults"] = {"sampler": "dpm++", "steps": 20, "guidance_scale": 4.5, "guidance_interval": "0.5,80"}
    (lm.path / ms.CONFIG_FILE).write_text(json.dumps(cfg))
    seen = {}

    def fake_evaluate(lm, data, settings, *, guidance, guidance_interval, **kwargs):
        seen.update(guidance=guidance, interval=guidance_interval)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "evaluate", fake_evaluate)
    assert cli.main(["--model", "tiny", "--store", str(tmp_path / "store"), "--data", str(tmp_path / "data"), *given]) == 2
    assert (seen["guidance"], seen["interval"]) == expected


@pytest.mark.slow
def test_evaluate_end_to_end_on_a_tiny_model(tmp_path):
    data = tmp_path / "data"
    classes = _colour_data(data)
    names = [c["name"] for c in classes]
    emb = np.eye(3, 384, dtype=np.float32)
    lm = _tiny_model(classes, data, tmp_path / "store")
    by_prompt = {c["prompt"]: emb[i] for i, c in enumerate(classes)}
    by_prompt["something red"] = emb[0]
    result = E.evaluate(lm, data, [("ddim", 3), ("dpm++", 2)], per_class=2, classifier_epochs=20, batch_size=4,
                        encode_fn=lambda ps: np.stack([by_prompt[p] for p in ps]),
                        free_text=[("something red", 0)], free_text_setting=("dpm++", 2), snaps=(0.0, 1.0),
                        guidance_interval=(0.5, 4.0))
    assert [r["setting"] for r in result["rows"]] == ["ddim 3", "dpm++ 2"]
    for r in result["rows"]:
        assert r["images"] == 6 and 0 <= r["accuracy"] <= 1 and r["fd"] >= 0 and r["seconds_per_image"] > 0
    assert result["real_val_accuracy"] > 0.9
    assert (lm.path / E.CLASSIFIER_WEIGHTS).exists()  # kept beside the model
    table = E.format_table(result)
    assert "| ddim 3 | 6 |" in table and "real held-out" in table
    for r in result["rows"]:  # 2 seeds x 3 classes: the conditioning check runs on every setting
        assert r["conditioning"]["class_pairs"] == 3 and r["conditioning"]["seeds"] == 2
        assert f"Conditioning check ({r['setting']}, 2 seeds x 3 classes)" in table
        verdict = "meets the 95% target" if r["conditioning"]["pairs_apart"] >= 0.95 else "FAILS the 95% target"
        assert verdict in table
    assert result["real_conditioning"]["seeds"] == 2
    assert result["guidance_interval"] == [0.5, 4.0] and "only for sigma in (0.5, 4]" in table
    ft, snapped = result["free_text"]
    assert (ft["snap"], snapped["snap"]) == (0.0, 1.0) and snapped["prompt"] == "something red"
    assert ft["prompt"] == "something red" and ft["class"] == "red" and ft["images"] == 2
    assert "Free text, snap 0: 1 prompts" in table and "Free text, snap 1: 1 prompts" in table
    for r in result["rows"]:  # 3 classes: the top 5 hold every class
        assert r["top5"] == 1.0 and set(r["class_accuracy"]) == set(names)
        assert np.isclose(np.mean(list(r["class_accuracy"].values())), r["accuracy"])  # 2 images per class
    assert ft["most_seen"] in names and 0 <= ft["accuracy"] <= 1
    assert "| something red | red |" in table


def test_read_free_text(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("# comment\n\na small orange fish\tGoldfish\na yellow bus\tschool bus\n")
    assert E.read_free_text(f, ["goldfish", "school bus"]) == [("a small orange fish", 0), ("a yellow bus", 1)]
    for bad in ["no tab here\n", "a zebra\tzebra\n", "\tgoldfish\n", "# only comments\n"]:
        f.write_text(bad)
        with pytest.raises(ValueError):
            E.read_free_text(f, ["goldfish", "school bus"])


def test_fd_bootstrap_sd_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(400, 8))
    small = E.fd_bootstrap_sd(rng.normal(size=(40, 8)), ref, rounds=30)
    large = E.fd_bootstrap_sd(rng.normal(size=(400, 8)), ref, rounds=30)
    assert small > large > 0


def test_top_k_and_per_class_accuracy_against_hand_counts():
    logits = np.array([[0.9, 0.5, 0.1, 0.0],   # label 1: second best -> top-1 miss, top-2 hit
                       [0.0, 0.2, 0.3, 0.8],   # label 3: hit
                       [0.4, 0.3, 0.2, 0.1],   # label 3: worst -> miss even in the top 3
                       [0.1, 0.7, 0.1, 0.1]])  # label 0: top-1 miss; tie at 0.1 broken by index -> in the top 2
    labels = np.array([1, 3, 3, 0])
    assert E.top_k_accuracy(logits, labels, 1) == 0.25
    assert E.top_k_accuracy(logits, labels, 2) == 0.75
    assert E.top_k_accuracy(logits, labels, 3) == 0.75
    assert E.top_k_accuracy(logits, labels, 9) == 1.0  # k beyond the classes: every label is in
    per = E.per_class_accuracy(logits.argmax(1), labels, 5)
    assert per[3] == 0.5 and per[0] == 0.0 and per[1] == 0.0 and np.isnan(per[2]) and np.isnan(per[4])


def test_snap_strengths_parse_and_snapping_moves_free_text_to_its_nearest_class():
    from core.prompting import snapping_encoder

    assert cli.parse_snaps("0,0.5") == [0.0, 0.5]
    for bad in ("", "x", "1.5", "-0.1"):
        with pytest.raises(ValueError, match="snap"):
            cli.parse_snaps(bad)
    table = {"cat": np.array([1.0, 0, 0]), "dog": np.array([0, 1.0, 0]),
             "kitten": np.array([0.8, 0.0, 0.6])}  # nearest class: cat
    enc = lambda ps: np.stack([table[p] for p in ps])  # noqa: E731
    targets = enc(["cat", "dog"])
    np.testing.assert_allclose(snapping_encoder(enc, targets, 0.0)(["kitten"]), [table["kitten"]])
    full = snapping_encoder(enc, targets, 1.0)(["kitten"])[0]
    # softmax over similarities 0.8 and 0 at temperature 0.05: all but e^-16 of the weight on "cat"
    np.testing.assert_allclose(full, [1, 0, 0], atol=1e-6)
    half = snapping_encoder(enc, targets, 0.5)(["kitten"])[0]
    expect = 0.5 * table["kitten"] + 0.5 * np.array([1.0, 0, 0])
    np.testing.assert_allclose(half, expect / np.linalg.norm(expect), atol=1e-6)


def test_class_balanced_subset_takes_at_most_n_of_each_class_reproducibly():
    labels = np.repeat(np.arange(4), [5, 2, 9, 0 + 1])
    idx = E.class_balanced_subset(labels, 3, seed=1)
    assert list(np.bincount(labels[idx], minlength=4)) == [3, 2, 3, 1]
    assert list(idx) == sorted(set(idx.tolist()))  # sorted, no repeats
    assert np.array_equal(idx, E.class_balanced_subset(labels, 3, seed=1))


def test_fit_yardstick_on_a_class_balanced_subset_records_what_it_trained_on(tmp_path):
    from types import SimpleNamespace

    x, y = _colour_images(10)
    xv, yv = _colour_images(3, seed=2)
    classes = [{"name": n} for n in ("red", "green", "blue")]
    train = SimpleNamespace(images=x, labels=y, num_classes=3, image_size=x.shape[1], classes=classes, root=tmp_path)
    val = SimpleNamespace(images=xv, labels=yv)
    meta = E.fit_yardstick(train, val, tmp_path / "clf", recipe=E.YardstickRecipe(epochs=2, width=8), per_class=4)
    assert [p["epoch"] for p in meta["curve"]] == [1, 2] and meta["val_accuracy"] == meta["curve"][-1]["val_accuracy"]
    assert meta["train_images"] == 12 and len(yv) != 12  # 4 of each of 3 classes, not the held-out count
    assert meta["classes"] == ["red", "green", "blue"] and 0 <= meta["val_accuracy"] <= meta["val_top5"] <= 1
    assert (tmp_path / "clf" / E.CLASSIFIER_WEIGHTS).exists()


def _grid_features(num_classes: int, seeds: int, listens: np.ndarray, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Class-major features: a class that listens is its own point plus a little of the seed's;
    one that does not is the seed's picture whatever the class."""
    rng = np.random.default_rng(seed)
    seed_vec = rng.normal(size=(seeds, dim)) * 3
    class_vec = rng.normal(size=(num_classes, dim)) * 10
    f = np.where(listens[:, None, None], class_vec[:, None, :] + 0.2 * seed_vec[None], seed_vec[None]
                 + 0.01 * rng.normal(size=(num_classes, seeds, dim)))
    return f.reshape(num_classes * seeds, dim)


def test_conditioning_check_counts_the_class_pairs_that_are_one_picture():
    c, n = 12, 4
    pred = np.repeat(np.arange(c), n)
    every = E.conditioning_check(_grid_features(c, n, np.ones(c, bool)), pred, c, n)
    none = E.conditioning_check(_grid_features(c, n, np.zeros(c, bool)), pred, c, n)
    assert every["pairs_apart"] == 1.0 and every["distance_ratio"] > 1
    assert none["pairs_apart"] == 0.0 and none["distance_ratio"] < 0.1
    listens = np.arange(c) >= 5  # classes 0-4 collapse onto the seed's picture: their 10 pairs are not apart
    some = E.conditioning_check(_grid_features(c, n, listens), pred, c, n)
    assert some["pairs_apart"] == pytest.approx(1 - 10 / 66) and some["class_pairs"] == 66
    assert all(a < 5 and b < 5 for a, b in some["closest_pairs"])
    with pytest.raises(ValueError, match="class-major"):
        E.conditioning_check(np.zeros((10, 3)), np.zeros(10), 12, 4)


def test_conditioning_check_against_hand_counted_distances():
    # 3 classes x 2 seeds on a line. Within a class: |0-2| = 2, |1-5| = 4, |6-9| = 3.
    # Pairs (mean over seeds of the same-seed distance vs the mean of the two within-class distances):
    # (0, 1): (1 + 3) / 2 = 2 vs 3 -> not apart; (0, 2): (6 + 7) / 2 = 6.5 vs 2.5; (1, 2): (5 + 4) / 2 = 4.5 vs 3.5
    feats = np.array([[0.0], [2], [1], [5], [6], [9]])
    check = E.conditioning_check(feats, np.array([0, 0, 1, 1, 2, 2]), 3, 2)
    assert check["pairs_apart"] == pytest.approx(2 / 3) and check["closest_pairs"][0] == (0, 1)
    assert check["median_between_classes"] == 4.5 and check["median_within_class"] == 3.0
    assert check["distance_ratio"] == pytest.approx(1.5)


def test_conditioning_check_own_class_above_chance_by_binomial_tail():
    # 10 classes, 5 seeds: P(X >= 2) = 0.0815 and P(X >= 3) = 0.00856 under chance 1/10, so 3 hits are needed
    assert E.binomial_tail(3, 5, 0.1) == pytest.approx(1 - (0.9 ** 5 + 5 * 0.1 * 0.9 ** 4 + 10 * 0.01 * 0.9 ** 3))
    c, n = 10, 5
    hits = [5, 3, 3, 2, 2, 1, 0, 0, 0, 0]
    pred = np.concatenate([[k] * h + [(k + 1) % c] * (n - h) for k, h in enumerate(hits)])
    check = E.conditioning_check(np.random.default_rng(0).normal(size=(c * n, 4)), pred, c, n)
    assert check["hits_needed"] == 3 and check["classes_above_chance"] == pytest.approx(0.3)


def test_real_conditioning_uses_the_first_photos_of_each_class():
    labels = np.array([0, 1, 0, 1, 0, 1, 1])
    feats = np.array([[0.0], [10], [0.1], [10.1], [0.2], [10.2], [99]])
    check = E.real_conditioning(labels, feats, labels, 2, per_class=5)  # class 0 has only 3 photos
    assert check["seeds"] == 3 and check["pairs_apart"] == 1.0
    # chance is 1/2: even 3 hits of 3 (p = 0.125) are not above chance at 5%
    assert check["classes_above_chance"] == 0.0 and check["hits_needed"] is None
    assert E.real_conditioning(labels[:3], feats[:3], labels[:3], 2, per_class=5) is None  # one photo of class 1


def test_generate_per_class_draws_every_class_from_the_same_seeds():
    import core as D
    from models import ConditionalUNet, UNetConfig

    torch.manual_seed(0)
    net = ConditionalUNet(UNetConfig(image_size=8, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                                     attention_resolutions=(), head_channels=8, dropout=0.0))
    emb = {f"p{i}": np.eye(3, 384, dtype=np.float32)[i] for i in range(3)}
    encode = lambda ps: np.stack([emb[p] for p in ps])  # noqa: E731
    lm = type("LM", (), {"model": net, "diffusion": D.DiffusionConfig(), "classes": [{"prompt": p} for p in emb]})
    images, labels, _ = E.generate_per_class(lm, "ddim", 2, 2, 2.0, 7, batch_size=4, device=torch.device("cpu"),
                                             encode_fn=encode)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    for k, (cls, j) in enumerate([(c, j) for c in range(3) for j in range(2)]):  # image (class, j) = seed 7 + j alone
        alone = D.generate_images(net, D.DiffusionConfig(), [f"p{cls}"], sampler="ddim", num_steps=2,
                                  guidance_scale=2.0, seed=7 + j, encode_fn=encode).images[0]
        np.testing.assert_array_equal(images[k], alone)


def test_augment_crops_each_image_at_its_own_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    out = _augment(x, g, pad=2)
    offsets = set()
    for i in range(64):
        found = [(f, dy, dx) for f in (False, True) for dy in range(5) for dx in range(5)
                 if torch.equal(out[i], torch.nn.functional.pad((x[i].flip(2) if f else x[i])[None], (2,) * 4,
                                                                mode="reflect")[0, :, dy:dy + 8, dx:dx + 8])]
        assert found, f"image {i} is not a flipped/translated crop of its input"
        offsets.add(found[0])
    assert len(offsets) > 10  # per image, not one offset for the batch


def test_yardstick_blocks_and_a_config_that_is_not_a_yardstick(tmp_path):
    deep, shallow = E.SmallResNet(5, 8, (2, 2, 2, 2)), E.SmallResNet(5, 8)
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in shallow.parameters())
    assert deep(torch.zeros(2, 3, 32, 32)).shape == (2, 5) and deep.feature_dim == 64
    assert cli.parse_blocks("2,2,2,2") == (2, 2, 2, 2)
    for bad in ("2,2,2", "0,1,1,1", "x", "1,1,1,99"):
        with pytest.raises(ValueError, match="blocks"):
            cli.parse_blocks(bad)
    E.save_classifier(shallow, tmp_path, {})
    cfg = json.loads((tmp_path / E.CLASSIFIER_CONFIG).read_text())
    (tmp_path / E.CLASSIFIER_CONFIG).write_text(json.dumps({**cfg, "width": 10 ** 6}))
    with pytest.raises(ValueError, match="not a yardstick config"):
        E.load_classifier(tmp_path)
    built = E.build_classifier({"num_classes": 5, "width": 8, "blocks": [2, 2, 2, 2]})  # what load_classifier builds
    assert built.config == deep.config
    assert [p.shape for p in built.parameters()] == [p.shape for p in deep.parameters()]
    for bad in ({"num_classes": 5, "width": 10 ** 6}, {"num_classes": 0, "width": 8}, {"width": 8},
                {"num_classes": 5, "width": 8, "blocks": [1, 1, 1, 99]}, {"num_classes": 5, "width": 8, "blocks": (1,) * 4}):
        with pytest.raises(ValueError, match="not a yardstick config"):
            E.build_classifier(bad)


def test_degradations_make_known_changes():
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    blob = E.degrade(x, "blob")
    assert np.all(blob == blob[:, :1, :1, :]) and np.allclose(blob[:, 0, 0].astype(float), x.mean((1, 2)), atol=0.5)
    down8 = E.degrade(x, "down8").astype(float)
    assert np.abs(np.diff(down8, axis=2)).mean() < 0.5 * np.abs(np.diff(x.astype(float), axis=2)).mean()  # blurred
    noisy = E.degrade(x, "noise").astype(float)
    assert 15 < np.abs(noisy - x).mean() < 30  # |N(0, 25.5)| has mean 20.3 before clipping
    mild = E.degrade(x, "noise05").astype(float)
    assert 4 < np.abs(mild - x).mean() < 6  # |N(0, 6.4)| has mean 5.1
    grey = x.astype(float).mean(-1, keepdims=True)
    desat = E.degrade(x, "desat").astype(float)
    assert np.abs(desat - (x + grey) / 2).max() <= 0.5  # halfway to the pixel's grey
    with pytest.raises(ValueError, match="unknown degradation"):
        E.degrade(x, "sepia")


def test_yardstick_check_ranks_real_photos_above_their_blobs(tmp_path):
    """On colour classes the mean colour still tells the class; on texture-free blobs of noise images it
    cannot: the check must show real photos recognised and FD rising with degradation."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    x[y == 0, ::2] = 0  # class 0: dark stripes; class 1: a bright square; class 2: plain noise
    x[y == 1, 4:12, 4:12] = 255
    clf = E.train_classifier(x, y, 3, epochs=15, batch_size=20, width=8)
    split = SimpleNamespace(images=x, labels=y, num_classes=3)
    rows = {r["images"]: r for r in E.yardstick_check(clf, split, split)}
    assert rows["real held-out photos"]["top1"] > 0.9
    assert rows["held-out, down8"]["fd"] > rows["real held-out photos"]["fd"]
    assert rows["held-out, blob"]["fd"] > rows["real held-out photos"]["fd"]


def test_free_text_is_compared_with_the_class_names_on_the_same_classes():
    """Free text's share is of the class names' top-1 on the prompts' own classes, each prompt weighing its
    class once: prompts on an easy class (80%) and a hard one (20%) against a 200-class mean would mislead."""
    from evaluation.report import _against_names

    rows = [{"setting": "dpm++ 20", "accuracy": 0.3, "class_accuracy": {"easy": 0.8, "hard": 0.2, "other": 0.0}}]
    prompts = [{"class": "easy", "accuracy": 0.4}, {"class": "easy", "accuracy": 0.4}, {"class": "hard", "accuracy": 0.1}]
    # names on the same classes: (0.8 + 0.8 + 0.2) / 3 = 0.6; free text 0.3 -> 50%
    assert _against_names(0.3, prompts, rows, "dpm++ 20") == " (50% of the class names' 60.0% on the same classes)"
    assert _against_names(0.3, prompts, rows, "ddim 50") == ""  # no row sampled as the free text was
