"""Training prompts per class, nearest classes, and snapping a prompt toward the classes (no text encoder)."""
from __future__ import annotations

import numpy as np
import pytest

from core import prompting as P
from conftest import ROOT
from models.text_encoder import PROMPT_TEMPLATES


def test_read_descriptions(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("# comment\n\nn01\ta small orange fish\nn01\tgoldfish in a pond\nn02\tsnowy peaks\n")
    assert P.read_descriptions(f) == {"n01": ["a small orange fish", "goldfish in a pond"], "n02": ["snowy peaks"]}
    f.write_text("n01\tok\nn02 no tab here\n")
    with pytest.raises(ValueError, match=r"d.tsv:2: expected 'wnid<TAB>description'"):
        P.read_descriptions(f)


def test_shipped_descriptions_cover_every_tiny_imagenet_class():
    d = P.read_descriptions(ROOT / "assets/class_descriptions.tsv")
    wnids = [line.split("\t")[0] for line in (ROOT / "assets/tiny200_classes.tsv").read_text().splitlines()]
    assert len(wnids) == 200 and set(d) == set(wnids) and all(len(v) >= 2 for v in d.values())


def test_class_training_prompts():
    basic = P.class_training_prompts(["orange"], variants="basic")
    assert basic[0] == "a photo of an orange" and len(basic) == len(PROMPT_TEMPLATES)
    rich = P.class_training_prompts(["goldfish", "Carassius auratus"], ["a small orange fish in a bowl"])
    assert rich[: len(basic)] == P.class_training_prompts(["goldfish"], variants="basic")  # basic is a prefix
    assert "a blurry photo of a goldfish" in rich and "a picture of a Carassius auratus" in rich
    assert rich[-1] == "a small orange fish in a bowl" and len(rich) == len(set(rich))
    assert len(rich) == len(P.RICH_TEMPLATES) + len(P.SYNONYM_TEMPLATES) + 1
    with pytest.raises(ValueError, match="at least one name"):
        P.class_training_prompts(["  "])
    with pytest.raises(ValueError, match="text variants"):
        P.class_training_prompts(["goldfish"], variants="fancy")


def test_prompt_table_cycles_short_lists():
    assert P.prompt_table([["a", "b", "c"], ["x"]]) == [["a", "b", "c"], ["x", "x", "x"]]


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_nearest_classes_and_snapping():
    rng = np.random.default_rng(0)
    classes = unit(rng.normal(size=(5, 16)))
    prompt = unit(classes[3] + 0.4 * unit(rng.normal(size=16)))
    near = P.nearest_classes(prompt, classes, k=2)
    sims = classes @ prompt
    assert near[0] == (3, pytest.approx(sims.max())) and near[1][1] == pytest.approx(np.sort(sims)[-2])
    np.testing.assert_allclose(P.snap_to_classes(prompt, classes, 0.0)[0], prompt, atol=1e-6)
    full = P.snap_to_classes(prompt, classes, 1.0, temperature=0.01)[0]
    np.testing.assert_allclose(full, classes[3], atol=1e-3)  # a clear nearest class: its embedding
    half = P.snap_to_classes(prompt, classes, 0.5)[0]
    assert abs(np.linalg.norm(half) - 1) < 1e-5
    assert classes[3] @ prompt < classes[3] @ half < 1  # closer to the class than the prompt was
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        P.snap_to_classes(prompt, classes, 1.5)


def test_coverage_message():
    far = P.coverage_message([("goldfish", 0.21), ("orange", 0.18)], margin=-0.3, nearer="a photo of a zebra")
    assert "not seen anything like" in far and '"a photo of a zebra"' in far and "goldfish (0.21)" in far
    assert P.coverage_message([("goldfish", 0.8)], margin=0.2).startswith("Nearest training classes: goldfish (0.80)")
    assert P.coverage_message([]) == "This model has no classes to compare with."


def test_coverage_index_judges_by_every_text_of_a_class_and_against_classes_it_lacks(tmp_path):
    """A class is as near as its nearest text (a description counts), and a prompt nearer to an
    ImageNet class the model lacks than to any of its own gets a negative margin."""
    (tmp_path / "LOC_synset_mapping.txt").write_text("n1 tabby, tabby cat\nn2 goldfish\nn3 zebra\n")
    (tmp_path / "class_descriptions.tsv").write_text("n1\ta striped cat asleep on a sofa\n")
    axes = {"a photo of a tabby": 0, "a photo of a tabby cat": 1, "a striped cat asleep on a sofa": 2,
            "a photo of a goldfish": 3, "a photo of a zebra": 4}
    encode = lambda texts: np.stack([np.eye(6)[axes[t]] for t in texts])  # noqa: E731
    classes = [{"name": "tabby", "wnid": "n1", "prompt": "a photo of a tabby"},
               {"name": "goldfish", "wnid": "n2", "prompt": "a photo of a goldfish"}]
    index = P.CoverageIndex.build(classes, "a photo of a {}", encode, assets=tmp_path)
    assert index.distractor_names == ["a photo of a zebra"] and index.class_texts.shape == (2, 3, 6)
    sofa = unit([0, 0, 0.9, 0.1, 0.3, 0])  # mostly the tabby description
    matches, margin, nearer = index.judge(sofa, k=2)
    assert [n for n, _ in matches] == ["tabby", "goldfish"] and matches[0][1] == pytest.approx(sofa[2])
    assert margin == pytest.approx(sofa[2] - sofa[4]) and margin > 0
    zebra = unit([0.1, 0, 0, 0.2, 0.9, 0])
    _, margin, nearer = index.judge(zebra)
    assert margin == pytest.approx(zebra[3] - zebra[4]) and margin < P.COVERAGE_MARGIN
    assert nearer == "a photo of a zebra"


def test_distractors_leave_out_the_models_classes_and_everything_above_or_below_one():
    """A prompt about a cat is the tabby class's, so "cat" (above tabby), "animal" (above that) and a
    kind of tabby (below) are no distractors; a name clash is none either; a zebra is one."""
    D = P.Distractor
    rows = [D("n1", "tabby", frozenset({"n9", "n8"})), D("n9", "cat", frozenset({"n8"})), D("n8", "animal", frozenset()),
            D("n5", "tabby kitten", frozenset({"n1", "n9", "n8"})), D("n2", "zebra", frozenset({"n7", "n8"})),
            D("n3", "Goldfish", frozenset({"n8"})), D("n6", "teapot", frozenset())]
    classes = [{"name": "tabby", "wnid": "n1"}, {"name": "goldfish", "wnid": "n4"}]
    assert [rows[i].name for i in P.distractors_for(classes, rows)] == ["zebra", "teapot"]
    assert [rows[i].name for i in P.distractors_for([{"name": "teapot"}], rows)] == [
        "tabby", "cat", "animal", "tabby kitten", "zebra", "Goldfish"]  # no wnid: only the name is known


def test_coverage_index_takes_the_stored_distractor_embeddings_for_their_template(tmp_path):
    (tmp_path / "LOC_synset_mapping.txt").write_text("n1 tabby\nn2 zebra\n")
    (tmp_path / "class_descriptions.tsv").write_text("")
    (tmp_path / "coverage_distractors.tsv").write_text("# header\nn1\ttabby\tn8\nn2\tzebra\tn8\nn3\tteapot\t\n")
    stored = np.zeros((3, 4), np.float16)
    stored[:, 3] = 1  # not what the encoder says: the index must take these
    np.save(tmp_path / "coverage_distractors.npy", stored)
    encoded = []

    def encode(texts):
        encoded.extend(texts)
        return np.stack([np.eye(4)[len(t) % 3] for t in texts])

    classes = [{"name": "tabby", "wnid": "n1", "prompt": "a photo of a tabby"}]
    index = P.CoverageIndex.build(classes, "a photo of a {}", encode, assets=tmp_path)
    assert index.distractor_names == ["a photo of a zebra", "a photo of a teapot"]
    assert np.array_equal(index.distractors, np.eye(4)[[3, 3]]) and encoded == ["a photo of a tabby"]
    encoded.clear()  # another template: the stored embeddings are of other texts, so encode
    index = P.CoverageIndex.build(classes, "an image of {}", encode, assets=tmp_path)
    assert index.distractor_names == ["an image of zebra", "an image of teapot"] and encoded[-2:] == index.distractor_names
    np.save(tmp_path / "coverage_distractors.npy", stored[:2])
    with pytest.raises(ValueError, match="rebuild both"):
        P.CoverageIndex.build(classes, "a photo of a {}", encode, assets=tmp_path)


def test_wordnet_table_rows_carry_their_ancestors_and_only_common_concrete_nouns(tmp_path):
    """dataprep/wordnet_nouns.py on a four-synset WordNet in its own file format."""
    from dataprep.wordnet_nouns import WordNet, distractor_rows

    (tmp_path / "data.noun").write_text(
        "  1 licence header\n"
        "00000001 03 n 01 entity 0 000 | that which exists\n"
        "00000002 05 n 02 cat 0 true_cat 0 001 @ 00000001 n 0000 | feline\n"
        "00000003 05 n 01 tabby 0 001 @ 00000002 n 0000 | a striped cat\n"
        "00000004 06 n 01 teapot 0 001 @ 00000001 n 0000 | a pot for tea\n"
        "00000005 06 n 01 samovar 0 001 @ 00000004 n 0000 | an urn for tea\n", encoding="latin-1")
    (tmp_path / "index.noun").write_text(
        "  1 licence header\n"
        "cat n 1 1 @ 1 1 00000002\nentity n 1 0 1 1 00000001\ntabby n 1 1 @ 1 0 00000003\n"
        "teapot n 1 1 @ 1 1 00000004\nsamovar n 1 1 @ 1 0 00000005\n", encoding="latin-1")
    wn = WordNet.read(tmp_path)
    assert wn.ancestors("n00000003") == ["n00000002", "n00000001"]
    assert wn.common_concrete_nouns() == ["n00000002", "n00000004"]  # tagged, animal/artifact: not entity
    assert wn.common_concrete_nouns(tagged_only=False) == ["n00000002", "n00000003", "n00000004", "n00000005"]
    rows = distractor_rows(wn, {"n00000003": ["tabby", "tabby cat"]})
    assert rows == [("n00000003", "tabby", ["n00000002", "n00000001"]), ("n00000002", "cat", ["n00000001"]),
                    ("n00000004", "teapot", ["n00000001"])]


def test_the_shipped_distractor_table_and_its_embeddings_agree_with_the_encoder():
    from models.text_encoder import encode_prompts

    rows = P.read_distractors()
    assert set(P.read_synsets()) <= {r.wnid for r in rows} and len(rows) > 2000
    stored = np.load(P.COVERAGE_DISTRACTORS.with_suffix(".npy"))
    assert stored.shape == (len(rows), 384)
    pick = np.random.default_rng(0).choice(len(rows), 12, replace=False)
    fresh = encode_prompts([P.DISTRACTOR_TEMPLATE.format(rows[i].name) for i in pick])
    assert np.allclose(stored[pick].astype(np.float32), fresh, atol=2e-3)
    tiny200 = [{"name": line.split("\t")[1].split(",")[0], "wnid": line.split("\t")[0]}
               for line in (ROOT / "assets/tiny200_classes.tsv").read_text().splitlines()]
    kept = {rows[i].name for i in P.distractors_for(tiny200, rows)}
    assert {"zebra", "violin", "windmill"} <= kept and not {"cat", "tabby", "dog", "teapot"} & kept


STOPWORDS = {"a", "an", "the", "of", "in", "on", "with", "and", "at", "to", "its", "is", "from", "for", "by", "as",
             "it", "up", "into", "over", "under", "near", "next"}


def content_words(text: str) -> set[str]:
    import re

    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS}


def tiny200_training_texts() -> list[str]:
    descriptions = P.read_descriptions(ROOT / "assets/class_descriptions.tsv")
    texts = []
    for line in (ROOT / "assets/tiny200_classes.tsv").read_text().splitlines():
        wnid, names = line.split("\t")
        texts += P.class_training_prompts(names.split(", "), descriptions.get(wnid, ()))
    return texts


def test_content_words_drop_only_the_glue():
    assert content_words("A goldfish, in a clear-glass bowl!") == {"goldfish", "clear", "glass", "bowl"}


def test_the_unlike_paraphrases_share_under_half_their_words_with_every_training_text():
    """assets/paraphrases_unlike.tsv measures free text worded unlike the training texts (BENCHMARKS):
    no prompt may share half of its content words with a class description or a templated name."""
    import evaluation as E

    texts = [(t, content_words(t)) for t in tiny200_training_texts()]
    names = [line.split("\t")[1].split(", ")[0] for line in (ROOT / "assets/tiny200_classes.tsv").read_text().splitlines()]
    pairs = E.read_free_text(ROOT / "assets/paraphrases_unlike.tsv", names)
    default = [line for line in (ROOT / "assets/default_classes.txt").read_text().splitlines() if line.startswith("n")]
    assert len(pairs) >= 100 and len({c for _, c in pairs}) >= 40
    wnids = [line.split("\t")[0] for line in (ROOT / "assets/tiny200_classes.tsv").read_text().splitlines()]
    assert all(sum(wnids[c] == w for _, c in pairs) >= 4 for w in default)  # every default_model class, 4+ times
    too_close = []
    for prompt, _ in pairs:
        words = content_words(prompt)
        for text, other in texts:
            if len(words & other) >= len(words) / 2:
                too_close.append(f"{prompt!r} ~ {text!r}")
                break
    assert not too_close, "\n".join(too_close)


def test_the_free_text_ceiling_reads_wordnet_glosses_and_hypernyms(tmp_path):
    """bench_text_ceiling's WordNet reader: a synset's gloss (first clause) and its first hypernym's
    first lemma, from data.noun's fixed-width fields (lines copied from WordNet 3.0)."""
    from benchmarks.bench_text_ceiling import read_glosses

    (tmp_path / "data.noun").write_text(
        "  1 This software and database is being provided to you, the LICENSEE, by\n"
        "01439121 05 n 02 cyprinid 0 cyprinid_fish 0 002 @ 01438208 n 0000 #m 01438720 n 0000 "
        "| soft-finned mainly freshwater fishes typically having toothless jaws and cycloid scales  \n"
        "01443537 05 n 02 goldfish 0 Carassius_auratus 0 003 @ 01439121 n 0000 #m 01443398 n 0000 "
        "~ 01443831 n 0000 | small golden or orange-red freshwater fishes of Eurasia used as pond or aquarium "
        "fishes  \n", encoding="latin-1")
    glosses = read_glosses(tmp_path)
    assert glosses["n01443537"] == ("small golden or orange-red freshwater fishes of Eurasia used as pond or "
                                    "aquarium fishes", "cyprinid")
    assert glosses["n01439121"][1] == "thing"  # its hypernym is not in this file
