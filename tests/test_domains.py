"""Dataset domains: the registry, the caption grammar (patterns, wordings, the held-out
phrasings, byte lengths), the one caption parser (every caption, both languages, garbage),
the caption and attribute judges that read through it, and that none of it imports TFDS."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from mmgen_jax.data import digits_domain as dd
from mmgen_jax.data import domains, tokenizer
from mmgen_jax.evaluation import attribute_judge, caption_judge, captions

ALL_CAPTIONS = [
    (dd.caption(t, digit, *dd.pair_from_index(p)), (digit, *dd.pair_from_index(p)))
    for t in range(len(dd.TEMPLATES))
    for digit in range(10)
    for p in range(dd.NUM_PAIRS)
]


# ---- the registry ----------------------------------------------------------------------


def test_domain_for_finds_the_dataset_in_any_version_and_nothing_else():
    assert domains.domain_for("digits_captions") is domains.DIGITS
    assert domains.domain_for("digits_captions:1.1.0") is domains.DIGITS
    for name in ("mnist", "cifar10:3.0.2", "caption_folder/s32_ab12", "digits"):
        assert domains.domain_for(name) is None, name
    with pytest.raises(ValueError, match="exact version"):
        domains.domain_for("digits_captions:latest")


def test_digits_domain_declares_its_attributes_words_and_palette():
    from mmgen_jax.data.digits_captions import DigitsCaptions  # the builder (imports TFDS)

    d = domains.DIGITS
    assert d.name == DigitsCaptions.name == dd.NAME
    assert {a: d.num_classes(a) for a in d.attributes} == {"label": 10, "fg": 6, "bg": 6}
    for language in ("en", "zh"):
        assert {a: len(w) for a, w in d.words[language].items()} == {"label": 10, "fg": 6, "bg": 6}
    assert d.words["zh"]["fg"][2] == "红色" and d.words["en"]["label"][7] == "seven"
    assert len(d.palette) == 6 and d.palette[2] == (255, 0, 0)
    assert d.can_parse_captions and d.drawn_digits


def test_tokenizer_facts_are_the_ones_the_models_use():
    from mmgen_jax.families import vae as vae_family
    from mmgen_jax.models import text, vae

    assert (vae_family.PAD_ID, vae.BOS_ID, vae_family.EOS_ID) == (0, 1, 2)
    assert text.PAD_ID == tokenizer.PAD
    assert text.TextEncoder.vocab_size == vae.CaptionDecoder.vocab_size == 259
    assert tokenizer.VOCAB_SIZE == tokenizer.BYTE_OFFSET + 256
    assert tokenizer.decode([tokenizer.BYTE_OFFSET + ord("a"), tokenizer.EOS]) == "a"


# ---- the caption grammar ----------------------------------------------------------------

EVERY_CAPTION = [
    (dd.caption(p, digit, *dd.pair_from_index(pair), v), p, (digit, *dd.pair_from_index(pair)))
    for p in range(len(dd.PATTERNS))
    for v in range(len(dd.variants(p)))
    for digit in range(10)
    for pair in range(dd.NUM_PAIRS)
]


def _chinese(text):
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_grammar_counts_and_the_documented_hold_out():
    assert dd.PATTERNS[: len(dd.TEMPLATES)] == dd.TEMPLATES  # the 1.x captions stay, in train
    assert (len(dd.PATTERNS), len(dd.TRAIN_PATTERNS), len(dd.HELD_OUT_PATTERNS)) == (29, 22, 7)
    assert dd.TRAIN_PATTERNS == tuple(range(22)) and dd.HELD_OUT_PATTERNS == tuple(range(22, 29))
    assert 0.2 <= len(dd.HELD_OUT_PATTERNS) / len(dd.PATTERNS) <= 0.25
    assert dd.PATTERNS[22] == "a {word} in {fg} on {bg}"  # the "a seven in red on blue"
    assert sum(len(dd.variants(p)) for p in range(len(dd.PATTERNS))) == 113
    assert len(EVERY_CAPTION) == 113 * 300 == len({text for text, _, _ in EVERY_CAPTION})
    for patterns in (dd.TRAIN_PATTERNS, dd.HELD_OUT_PATTERNS):  # both languages on both sides
        chinese = [p for p in patterns if _chinese(dd.PATTERNS[p])]
        assert 2 <= len(chinese) <= len(patterns) - 5


def test_variants_spell_out_alternatives_and_optional_words():
    assert dd.variants(0) == (dd.TEMPLATES[0],)
    assert dd.variants(23) == ("{num} in {fg}, {bg} background", "{num} in {fg}, {bg} backdrop")
    assert dd.variants(9) == tuple(
        f"{h}{{word}} in {{fg}} on a {{bg}} {g}"
        for h in ("handwritten ", "")
        for g in ("ground", "backdrop", "background")
    )
    assert dd.caption(27, 7, 2, 4, 3) == "一个红色的7在蓝色底色上"
    assert dd.caption(22, 7, 2, 4) == "a seven in red on blue"


def test_grammar_uses_numerals_number_words_and_true_synonyms():
    words = {w for text, p, _ in EVERY_CAPTION if p in dd.TRAIN_PATTERNS for w in text.split()}
    for synonym in ("digit", "numeral", "figure", "number", "background", "backdrop", "ground"):
        assert synonym in words or f"{synonym}," in words, synonym
    train = [text for text, p, _ in EVERY_CAPTION if p in dd.TRAIN_PATTERNS]
    assert any("seven" in t for t in train) and any(" 7 " in t for t in train)
    assert any("七" in t for t in train) and any("7" in t and _chinese(t) for t in train)


def test_every_caption_fits_the_default_text_length_uncut():
    longest = max(len(text.encode("utf-8")) for text, _, _ in EVERY_CAPTION)
    assert longest == 61  # + EOS: within data.max_text_len = 64 bytes
    for text, _, _ in EVERY_CAPTION:
        assert tokenizer.decode(tokenizer.encode(text, 64)) == text, text
        assert text == text.strip() and "  " not in text, text


def test_every_caption_of_every_pattern_parses_back_to_its_attributes_and_pattern():
    for text, pattern, (digit, fg, bg) in EVERY_CAPTION:
        assert dd.parse_caption(text) == {"label": digit, "fg": fg, "bg": bg}, text
        assert dd.pattern_of(text) == pattern, text
        assert dd.parse_caption(text[:-1]) is None and dd.parse_caption(text + "s") is None, text
    assert dd.pattern_of("a seven in red on blue") == 22
    assert dd.pattern_of("a seven in red on red") is None


def test_held_out_phrasings_never_write_a_train_caption():
    train = {text for text, p, _ in EVERY_CAPTION if p in dd.TRAIN_PATTERNS}
    held_out = {text for text, p, _ in EVERY_CAPTION if p in dd.HELD_OUT_PATTERNS}
    assert len(held_out) == 21 * 300 and not train & held_out


# ---- the one parser --------------------------------------------------------------------


@pytest.mark.parametrize("template", range(len(dd.TEMPLATES)))
def test_every_caption_of_every_template_parses_back(template):
    rows = [(c, truth) for c, truth in ALL_CAPTIONS if c == dd.caption(template, *truth)]
    assert len(rows) == 10 * dd.NUM_PAIRS
    for text, (digit, fg, bg) in rows:
        assert dd.parse_caption(text) == {"label": digit, "fg": fg, "bg": bg}, text
        assert dd.parse_caption(f"  {text}\n") == {"label": digit, "fg": fg, "bg": bg}
        # Cut, extended or changed by one character: no longer a caption of the dataset.
        assert dd.parse_caption(text[:-1]) is None, text
        assert dd.parse_caption(text + "s") is None, text
        assert dd.parse_caption(text.upper() if text.isascii() else "x" + text) is None


def test_parser_reads_both_languages_alike():
    english = dd.caption(0, 7, 2, 4)
    chinese = [dd.caption(t, 7, 2, 4) for t in (4, 5)]
    assert english == "a red handwritten seven on a blue background"
    assert chinese == ["蓝色背景上的红色手写数字七", "在蓝色底色上用红色写的数字七"]
    for text in [english, *chinese]:
        assert dd.parse_caption(text) == {"label": 7, "fg": 2, "bg": 4}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a purple handwritten seven on a blue background",  # a colour the palette lacks
        "a red handwritten seven on a red background",  # fg == bg: never written
        "the digit 12 in red over blue",
        "the digit seven in red over blue",  # {num} is the numeral
        "a red seven",
        "a seven in red on blue background",  # no pattern has this shape
        "a seven in red on a blue backdrop",
        "红色背景上的红色手写数字七",  # fg == bg, Chinese
        "蓝色背景上的红色手写数字7",  # Chinese templates spell the digit
        "a red handwritten seven on a blue background a red handwritten seven on a blue background",
        "\ufffd\ufffd\x00 on a",  # bytes a model sampled, decoded with replacement
        tokenizer.decode([tokenizer.BOS, 200, 201, tokenizer.EOS]),
    ],
)
def test_parser_rejects_text_the_dataset_never_writes(text):
    assert dd.parse_caption(text) is None


@pytest.mark.parametrize("value", [None, b"a red handwritten seven on a blue background", 7])
def test_parser_rejects_non_text(value):
    assert dd.parse_caption(value) is None


def test_parsed_dict_is_a_fresh_copy():
    text = dd.canonical_caption(3, 0, 1)
    dd.parse_caption(text)["label"] = 9
    assert dd.parse_caption(text)["label"] == 3


# ---- judges that read through the domain -----------------------------------------------


def test_stated_shares_hand_computed():
    stated = [{"label": 1, "fg": 0}, None, {"label": 2, "fg": 5}, {"label": 4}]
    targets = {"label": np.array([1, 2, 2, 3]), "fg": np.array([0, 0, 5, 1])}
    assert captions.stated_shares(stated, targets) == {"parsed": 0.75, "label": 0.5, "fg": 0.5}


def test_caption_judge_scores_every_template_through_the_domain():
    domain = caption_judge.domain_of("digits_captions")
    refs = [dd.caption(t, 7, 2, 4) for t in range(len(dd.TEMPLATES))]  # red 7 on blue
    generated = [refs[4], dd.caption(1, 7, 4, 2), dd.caption(0, 1, 2, 4), "a red seven", *refs[4:]]
    assert caption_judge.score(generated, refs, domain) == {
        "n": 6,
        "well_formed": 5 / 6,
        "label": 4 / 6,
        "fg": 4 / 6,
        "bg": 4 / 6,
        "all": 3 / 6,
    }
    with pytest.raises(ValueError, match="'a red seven' is not a digits_captions caption"):
        caption_judge.score(refs[:1], ["a red seven"], domain)
    with pytest.raises(ValueError, match="'mnist' declares no caption parser"):
        caption_judge.domain_of("mnist")


def _rendered_test_images(n):
    """(uint8 images, {label, fg, bg}) of the first `n` test images drawn as the builder does."""
    from sklearn.datasets import load_digits

    from mmgen_jax.data import digits_captions as dc

    digits = load_digits()
    images, targets = [], {"label": [], "fg": [], "bg": []}
    for image_id in range(0, 6 * n, 6):
        fg, bg = dc.image_pairs(image_id)[0]
        images.append(dc.render(digits.images[image_id], fg, bg))
        for key, value in zip(targets, (int(digits.target[image_id]), fg, bg)):
            targets[key].append(value)
    return np.stack(images), {k: np.array(v) for k, v in targets.items()}


def test_attribute_judge_reads_real_images_with_the_domain_palette():
    images, targets = _rendered_test_images(60)
    domain = attribute_judge.domain_of("digits_captions:1.1.0")
    result = attribute_judge.score(images, targets, domain)
    assert result["fg"] == result["bg"] == 1.0
    assert result["label"] >= 0.9 and result["all"] == result["label"]
    with pytest.raises(ValueError, match="'cifar10' does not declare"):
        attribute_judge.domain_of("cifar10")


def test_judge_clis_read_captions_of_every_template(tmp_path):
    images, targets = _rendered_test_images(12)
    rows = []
    for i, image in enumerate(images):
        truth = [int(targets[k][i]) for k in ("label", "fg", "bg")]
        caption = dd.caption(i % len(dd.TEMPLATES), *truth)  # English and Chinese
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        rows.append({"file": f"{i}.png", "caption": caption, "reference": caption})
    rows.append({"file": "0.png", "caption": "not a caption", "reference": rows[0]["caption"]})
    (tmp_path / "index.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )

    def cli(module, *flags):
        return subprocess.run(
            [sys.executable, "-m", f"mmgen_jax.evaluation.{module}", *flags],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = cli("caption_judge", f"--samples_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["n"] == 13 and result["well_formed"] == result["all"] == pytest.approx(12 / 13)
    done = cli("attribute_judge", f"--samples_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["n"] == 12 and result["fg"] == result["bg"] == 1.0  # the bad line skipped
    done = cli("attribute_judge", f"--samples_dir={tmp_path}", "--dataset=mnist")
    assert done.returncode != 0 and "'mnist' does not declare" in done.stderr


def test_domains_and_judges_import_without_tfds():
    code = (
        "import sys\n"
        "import mmgen_jax.data.domains, mmgen_jax.evaluation.captions\n"
        "import mmgen_jax.evaluation.caption_judge, mmgen_jax.evaluation.attribute_judge\n"
        "print('tensorflow_datasets' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
