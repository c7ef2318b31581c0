"""The writer-shift benchmark (lenetkit/writershift.py), the augmentations of the same families
that train for it (augmentation.py), and evaluate.py --writer-shift."""

import json

import pytest
import torch

from lenetkit.augmentation import (
    SCAN_SIZES,
    augment,
    down_up,
    elastic,
    random_scan,
    random_stroke,
    slant,
    stroke_width,
)
from lenetkit.evaluation import writer_shift
from lenetkit.writershift import KINDS, SCANS, shifted

from conftest import TINY_TRAINING, run_main


def digit_like(n: int = 8) -> torch.Tensor:
    """Images (n, 1, 28, 28) in 0..1: a vertical bar two pixels wide with a crossbar, ink 1."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 4:24, 13:15] = 1.0
    x[:, :, 13:15, 8:20] = 1.0
    return x


def test_every_kind_keeps_the_shape_and_the_range_of_the_digits():
    x = digit_like()
    for kind in KINDS:
        out = shifted(x, kind)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x), kind


def test_thick_strokes_have_more_ink_and_thin_ones_less():
    x = digit_like()
    ink = lambda images: images.sum().item()
    assert ink(shifted(x, "thick")) > 1.5 * ink(x)
    assert ink(shifted(x, "thin")) < 0.9 * ink(x)
    # thinner, not erased: the two-pixel bar still in every row it spans but its ends
    assert (shifted(x, "thin")[:, 0, 5:23].amax(2) >= 0.5).all()
    assert torch.equal(stroke_width(x, torch.zeros(len(x))), x)


def column_of_ink(image: torch.Tensor, row: int) -> float:
    """The mean column of the ink in one row of an image (1, H, W)."""
    weights = image[0, row]
    return (weights * torch.arange(len(weights))).sum().item() / weights.sum().item()


def test_slant_right_leans_the_top_right_and_the_bottom_left_and_slant_left_the_other_way():
    bar = torch.zeros(1, 1, 28, 28)
    bar[:, :, 4:24, 13:15] = 1.0
    right, left = shifted(bar, "slant-right")[0], shifted(bar, "slant-left")[0]
    upright = column_of_ink(bar[0], 6)
    assert column_of_ink(right, 6) > upright + 2 and column_of_ink(right, 21) < upright - 2
    assert column_of_ink(left, 6) < upright - 2 and column_of_ink(left, 21) > upright + 2
    assert torch.allclose(slant(bar, torch.zeros(1), 0.0), bar, atol=1e-5)


def test_the_benchmark_is_the_same_every_time_and_its_elastic_fields_are_seeded():
    x = digit_like()
    for kind in KINDS:
        assert torch.equal(shifted(x, kind), shifted(x, kind))
    run = lambda seed: elastic(x, torch.Generator().manual_seed(seed), 0.0, 34.0)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert not torch.equal(run(1)[0], run(1)[1])  # each image its own field
    assert torch.allclose(elastic(x, torch.Generator(), 0.0, 0.0), x, atol=1e-5)  # alpha 0


def test_a_low_resolution_scan_blurs_detail_and_keeps_flat_areas():
    x = digit_like()
    assert torch.allclose(down_up(torch.full((1, 1, 28, 28), 0.5), 11), torch.tensor(0.5))
    coarse, finer = (shifted(x, kind) for kind in ("scan8", "scan16"))
    error = lambda images: (images - x).abs().sum().item()
    assert error(coarse) > error(finer) > 0
    assert coarse.max() < 1  # a two-pixel stroke averaged with the paper around it


def test_training_never_sees_the_benchmarks_exact_scans():
    assert not set(SCANS.values()) & set(SCAN_SIZES)
    x = digit_like(200)
    scanned = random_scan(x, torch.Generator().manual_seed(0))
    kept = (scanned == x).flatten(1).all(1)
    assert 0 < kept.sum() < 100  # the full size (no loss) is one of the sizes drawn


def test_random_strokes_vary_from_image_to_image_in_both_directions():
    x = digit_like(100)
    ink = random_stroke(x, torch.Generator().manual_seed(0)).flatten(1).sum(1)
    assert (ink > x[0].sum()).any() and (ink < x[0].sum()).any()


def test_the_writer_augmentations_are_reproducible_and_keep_blank_paper_blank():
    x = torch.randn(16, 1, 28, 28)
    names = "stroke,slant,scan,elastic"
    run = lambda images, seed=0: augment(images, names, torch.Generator().manual_seed(seed),
                                         background=-0.5)
    assert torch.equal(run(x), run(x)) and not torch.equal(run(x, 1), run(x))
    assert run(x).shape == x.shape
    blank = torch.full((4, 1, 28, 28), -0.5)
    assert torch.allclose(run(blank), blank, atol=1e-5)


class ReadsTheBar(torch.nn.Module):
    """Scores class k where the ink's mean row is 2k + 3 (the tests' synthetic digits): a model
    that any shift moving the ink's height fools."""

    def forward(self, x):
        rows = torch.arange(28, dtype=x.dtype)
        ink = (x - x.amin((2, 3), keepdim=True))[:, 0].sum(2)  # (N, H)
        centre = (ink * rows).sum(1) / ink.sum(1)
        return -((centre[:, None] - (2 * torch.arange(10) + 3)) ** 2)


def test_writer_shift_scores_each_kind_and_their_mean():
    labels = torch.arange(10).repeat(5)
    images = torch.zeros(50, 28, 28, dtype=torch.uint8)
    for image, label in zip(images, labels):
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
    result = writer_shift(ReadsTheBar(), images, labels, mean=0.0, std=1.0)
    assert list(result["kinds"]) == list(KINDS)
    assert result["kinds"]["thick"] == 1.0  # a bar thickened on both sides keeps its centre
    assert result["mean"] == pytest.approx(sum(result["kinds"].values()) / len(KINDS))


@pytest.mark.slow
def test_train_applies_the_writer_augmentations_and_evaluate_reports_the_shift(tiny_data,
                                                                               tmp_path):
    out = tmp_path / "robust.pth"
    run_main("train.py", "--data-dir", tiny_data, "--out", out, "--epochs", "2", "--augment",
             "affine,stroke,slant,scan,elastic", *TINY_TRAINING)
    record = torch.load(out, weights_only=True)
    assert record["metadata"]["augment"] == "affine,stroke,slant,scan,elastic"
    args = ("evaluate.py", "--model", out, "--data-dir", tiny_data, "--out-dir", tmp_path,
            "--no-download", "--writer-shift")
    [report] = json.loads(run_main(*args, "--json").stdout)["models"]
    shift = report["writer_shift"]
    assert set(shift["kinds"]) == set(KINDS) and 0 <= shift["mean"] <= 1
    assert "writer shift (test, a proxy made from MNIST): mean" in run_main(*args).stdout
    val = json.loads(run_main(*args, "--split", "val", "--json").stdout)["models"][0]
    assert val["images"] == 100 and "writer_shift" in val
