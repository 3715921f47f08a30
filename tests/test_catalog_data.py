"""Checks on the shipped tables in data/: the paper's model lists and the architecture -> family map.

Why: every study preset and every family plot reads these two small CSVs. A wrong timm tag silently
loads different weights (another accuracy, another model), and a wrong family prefix silently moves a
model to the wrong group, so both are pinned here against timm's local registry and the paper's tables
(docs PAPER_TABLES.md). Offline and fast: ``timm.list_pretrained()`` reads timm's in-process registry.
"""

from __future__ import annotations

import csv
from collections import Counter

import pytest

import zoo_study  # noqa: F401  (torchvision compat shim before timm)
import timm
from timm.models import get_deprecated_models

from zoo_study.zoo import archs  # noqa: F401  (registers the embedded zoo_* architectures)
from zoo_study.zoo.catalog import DATA_DIR, FAMILIES, family_map, family_of, paper_models

PAPER_COLUMNS = ["study", "role", "paper_name", "paper_type", "family", "reported_top1", "params_m", "timm_name",
                 "note"]
PAPER_TYPES = {"Trafo", "CNN", "MLP", "MLP*"}

# (study, role) -> number of models in the paper: Table 5, Table 6, Tables 4/9.
EXPECTED_COUNTS = {
    ("imagenet_10pct", "student"): 20,
    ("imagenet_10pct", "teacher"): 20,
    ("imagenet_full", "student"): 8,
    ("imagenet_full", "teacher"): 4,
    ("multi_teacher", "student"): 3,
    ("multi_teacher", "teacher"): 3,
}


def _rows() -> list[dict[str, str]]:
    return paper_models()


def _row(study: str, role: str, paper_name: str) -> dict[str, str]:
    hits = [r for r in _rows() if (r["study"], r["role"], r["paper_name"]) == (study, role, paper_name)]
    assert len(hits) == 1, f"expected one row for {(study, role, paper_name)}, found {len(hits)}"
    return hits[0]


# ---------------------------------------------------------------- paper_models.csv: shape and values


def test_paper_models_header() -> None:
    with open(DATA_DIR / "paper_models.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == PAPER_COLUMNS


def test_counts_per_study_and_role_match_the_paper() -> None:
    counts = Counter((r["study"], r["role"]) for r in _rows())
    assert dict(counts) == EXPECTED_COUNTS


def test_column_values_are_valid() -> None:
    for r in _rows():
        assert r["role"] in ("student", "teacher"), r
        assert r["paper_type"] in PAPER_TYPES, r
        assert r["family"] in FAMILIES, r
        assert 0.0 < float(r["reported_top1"]) < 100.0, r
        assert float(r["params_m"]) > 0.0, r
        arch, _, tag = r["timm_name"].partition(".")
        assert arch and tag, f"timm_name must be the full 'arch.tag' pretrained name: {r['timm_name']!r}"


def test_no_model_twice_in_one_study_and_role() -> None:
    keys = [(r["study"], r["role"], r["timm_name"]) for r in _rows()]
    assert len(keys) == len(set(keys))
    names = [(r["study"], r["role"], r["paper_name"]) for r in _rows()]
    assert len(names) == len(set(names))


def test_every_timm_name_is_a_current_pretrained_tag() -> None:
    pretrained = set(timm.list_pretrained())
    missing = sorted({r["timm_name"] for r in _rows()} - pretrained)
    assert not missing, f"not in timm.list_pretrained() of timm {timm.__version__}: {missing}"


@pytest.mark.parametrize(
    "study, role, paper_name, top1, params",
    [
        ("imagenet_10pct", "student", "XCiT-Large-24-P16", 82.89, 189.10),
        ("imagenet_10pct", "student", "Wide-ResNet50-2", 81.46, 68.88),
        ("imagenet_10pct", "student", "ResNet34-v1b", 74.59, 21.80),
        ("imagenet_10pct", "student", "Mixer-L16", 72.07, 208.20),
        ("imagenet_10pct", "teacher", "ConvNext (large)", 86.64, 197.77),
        ("imagenet_10pct", "teacher", "MixNet (xl)", 78.98, 7.33),
        ("imagenet_10pct", "teacher", "XCiT-nano-12-P8", 73.92, 3.05),
        ("imagenet_full", "student", "ConvNext", 84.57, 50.22),
        ("imagenet_full", "teacher", "CoaT-lite-mini", 79.09, 11.01),
        ("multi_teacher", "student", "Twins", 83.68, 99.27),
        ("multi_teacher", "teacher", "ResMLP-36", 79.77, 44.69),
    ],
)
def test_reported_numbers_equal_the_paper(study: str, role: str, paper_name: str, top1: float, params: float) -> None:
    r = _row(study, role, paper_name)
    assert float(r["reported_top1"]) == pytest.approx(top1, abs=1e-9)
    assert float(r["params_m"]) == pytest.approx(params, abs=1e-9)


@pytest.mark.parametrize(
    "paper_name, timm_name",
    [  # the authors' own mappings (PAPER_TABLES.md), renamed to timm's current arch.tag
        ("XCiT-Large-24-P16", "xcit_large_24_p16_224.fb_in1k"),
        ("PiT-B", "pit_b_224.in1k"),
        ("PiT-XS", "pit_xs_224.in1k"),
        ("Gluon-SeNet154", "senet154.gluon_in1k"),
        ("ResNetv2-50-dist", "resnetv2_50x1_bit.goog_distilled_in1k"),
        ("Mixer-L16", "mixer_l16_224.goog_in21k_ft_in1k"),
        ("Mixer-B16-miil", "mixer_b16_224.miil_in21k_ft_in1k"),
        ("ResMLP-24-dist", "resmlp_24_224.fb_distilled_in1k"),
    ],
)
def test_authors_known_mappings(paper_name: str, timm_name: str) -> None:
    assert _row("imagenet_10pct", "student", paper_name)["timm_name"] == timm_name


def test_convnext_student_is_the_in22k_small() -> None:
    assert _row("imagenet_full", "student", "ConvNext")["timm_name"] == "convnext_small.fb_in22k_ft_in1k"


def test_mixnet_keeps_paper_label_but_true_family() -> None:
    """The paper files MixNet under MLP; it is a CNN. Both facts are kept, in separate columns."""
    mixnets = [r for r in _rows() if r["paper_name"].startswith("MixNet")]
    assert len(mixnets) == 2
    for r in mixnets:
        assert r["paper_type"] == "MLP*"
        assert r["family"] == "cnn"
    # the paper's numbers (78.98 / 7.33M, 76.00 / 4.13M) are those of mixnet_l and mixnet_s, not xl and l
    assert _row("imagenet_10pct", "teacher", "MixNet (xl)")["timm_name"] == "mixnet_l.ft_in1k"
    assert _row("imagenet_10pct", "teacher", "MixNet (l)")["timm_name"] == "mixnet_s.ft_in1k"


def test_same_model_has_same_numbers_everywhere() -> None:
    """A model listed in several studies/roles must carry one timm name, one accuracy, one size."""
    seen: dict[str, tuple[str, str, str]] = {}
    for r in _rows():
        key = r["timm_name"]
        value = (r["reported_top1"], r["params_m"], r["family"])
        assert seen.setdefault(key, value) == value, f"{key} disagrees across rows: {seen[key]} vs {value}"


def test_full_and_multi_teacher_models_come_from_table5() -> None:
    table5 = {r["timm_name"] for r in _rows() if r["study"] == "imagenet_10pct"}
    others = {r["timm_name"] for r in _rows() if r["study"] != "imagenet_10pct"}
    # Table 6's ConvNext student (convnext_small) is the only model not in Table 5
    assert others - table5 == {"convnext_small.fb_in22k_ft_in1k"}


def test_paper_type_agrees_with_family_except_mixnet() -> None:
    label_family = {"Trafo": "transformer", "CNN": "cnn", "MLP": "mlp"}
    for r in _rows():
        if r["paper_type"] != "MLP*":
            assert label_family[r["paper_type"]] == r["family"], r


# ---------------------------------------------------------------- family_map.csv and family_of()


def test_family_map_file_is_clean() -> None:
    with open(DATA_DIR / "family_map.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == ["arch_prefix", "family"]
    prefixes = [r["arch_prefix"] for r in rows]
    assert len(prefixes) == len(set(prefixes)), "duplicate prefixes"
    for r in rows:
        assert r["family"] in FAMILIES, r
        assert r["arch_prefix"] and "." not in r["arch_prefix"] and r["arch_prefix"] == r["arch_prefix"].strip(), r
    assert family_map() == {r["arch_prefix"]: r["family"] for r in rows}


def test_every_prefix_names_some_timm_model() -> None:
    """Guards against typos: each prefix starts some current or deprecated (pre-0.9) timm model name."""
    names = set(timm.list_models()) | set(get_deprecated_models())
    dead = [p for p in family_map() if not any(n.startswith(p) for n in names)]
    assert not dead, f"prefixes matching no timm model: {dead}"


def test_family_of_every_paper_model() -> None:
    wrong = [(r["timm_name"], r["family"], family_of(r["timm_name"])) for r in _rows()
             if family_of(r["timm_name"]) != r["family"]]
    assert not wrong


COMMON = [  # (timm name, family); several are chosen to test longest-prefix collisions
    ("resnet50.a1_in1k", "cnn"),
    ("resnet18", "cnn"),
    ("resnetv2_50x1_bit.goog_in21k", "cnn"),
    ("resnext50_32x4d.tv_in1k", "cnn"),
    ("resnest50d.in1k", "cnn"),
    ("res2net50_26w_4s.in1k", "cnn"),
    ("wide_resnet101_2.tv_in1k", "cnn"),
    ("seresnext50_32x4d.racm_in1k", "cnn"),
    ("legacy_senet154.in1k", "cnn"),
    ("gluon_resnet50_v1b", "cnn"),
    ("regnety_040.pycls_in1k", "cnn"),
    ("regnetz_b16.ra3_in1k", "cnn"),
    ("convnext_tiny.fb_in1k", "cnn"),
    ("convnextv2_nano.fcmae_ft_in1k", "cnn"),
    ("efficientnet_b0.ra_in1k", "cnn"),
    ("tf_efficientnetv2_s.in1k", "cnn"),
    ("mobilenetv3_large_100.ra_in1k", "cnn"),
    ("mobilenetv2_100.ra_in1k", "cnn"),
    ("mixnet_s.ft_in1k", "cnn"),  # not 'mixer'
    ("tf_mixnet_l.in1k", "cnn"),
    ("dla34.in1k", "cnn"),
    ("vgg16.tv_in1k", "cnn"),
    ("densenet121.tv_in1k", "cnn"),
    ("dpn92.mx_in1k", "cnn"),
    ("inception_v3.tv_in1k", "cnn"),
    ("xception65.tf_in1k", "cnn"),
    ("ghostnet_100.in1k", "cnn"),
    ("repvgg_a2.rvgg_in1k", "cnn"),
    ("repvit_m1.dist_in1k", "cnn"),  # 'vit' inside the name, but a CNN
    ("rexnet_100.nav_in1k", "cnn"),
    ("tinynet_a.in1k", "cnn"),  # not 'tiny_vit'
    ("ese_vovnet39b.ra_in1k", "cnn"),
    ("vit_base_patch16_224.augreg_in21k_ft_in1k", "transformer"),
    ("vit_base_r50_s16_384.orig_in21k_ft_in1k", "transformer"),
    ("deit_small_patch16_224.fb_in1k", "transformer"),
    ("deit3_base_patch16_224.fb_in1k", "transformer"),
    ("beit_base_patch16_224.in22k_ft_in22k_in1k", "transformer"),
    ("swin_tiny_patch4_window7_224.ms_in1k", "transformer"),
    ("swinv2_tiny_window8_256.ms_in1k", "transformer"),
    ("pit_s_224.in1k", "transformer"),
    ("xcit_tiny_12_p16_224.fb_in1k", "transformer"),
    ("volo_d1_224.sail_in1k", "transformer"),
    ("twins_svt_small.in1k", "transformer"),
    ("coat_lite_small.in1k", "transformer"),
    ("coatnet_0_rw_224.sw_in1k", "transformer"),
    ("cait_s24_224.fb_dist_in1k", "transformer"),
    ("levit_128.fb_dist_in1k", "transformer"),
    ("crossvit_9_240.in1k", "transformer"),
    ("convit_tiny.fb_in1k", "transformer"),  # not 'convnext'
    ("tnt_s_patch16_224", "transformer"),
    ("eva02_tiny_patch14_224.mim_in22k", "transformer"),
    ("maxvit_tiny_tf_224.in1k", "transformer"),
    ("mobilevit_s.cvnets_in1k", "transformer"),  # not 'mobilenet'
    ("tiny_vit_5m_224.in1k", "transformer"),
    ("nest_tiny_jx.goog_in1k", "transformer"),  # not 'resnest'
    ("mixer_b16_224.goog_in21k_ft_in1k", "mlp"),
    ("resmlp_12_224.fb_in1k", "mlp"),  # not a 'res...' CNN
    ("gmlp_s16_224.ra3_in1k", "mlp"),
    ("gmixer_24_224.ra3_in1k", "mlp"),
    ("zoo_mixer_p4.untrained", "mlp"),  # embedded zoo: leading 'zoo_' is stripped
    ("zoo_resmlp_p4", "mlp"),
    ("zoo_gmlp_p4", "mlp"),
]


@pytest.mark.parametrize("name, family", COMMON)
def test_family_of_common_names(name: str, family: str) -> None:
    assert family_of(name) == family


def test_common_names_exist_in_timm() -> None:
    """The list above is made of real names, so it tests real collisions rather than invented ones."""
    pretrained = set(timm.list_pretrained())
    archs_ = set(timm.list_models()) | set(get_deprecated_models())
    for name, _ in COMMON:
        assert name in pretrained or name.split(".")[0] in archs_, name


@pytest.mark.parametrize("name", ["definitely_not_a_net", "zoo_unknown_p4", "mixe", "", "zoo_"])
def test_unknown_architecture_raises(name: str) -> None:
    with pytest.raises(ValueError, match="no family known"):
        family_of(name)
