"""Reading a number: an image of several digits written apart (a year, a house number, a code)
is read left to right, from the API and the command line; an image of one digit reads as before."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from lenetkit.datasets import DATASETS, load_dataset
from lenetkit.environment import PRETRAINED_MODEL_PATH
from lenetkit.errors import UserError
from lenetkit.modelfile import read_model_file, save_model
from lenetkit.multidigit import number_digits, preprocess_number
from lenetkit.prediction import Number, Prediction, Predictor, read_number
from lenetkit.preprocess import ImageError, preprocess_digit, without_lines

import photos
from conftest import PROJECT_DIR, needs_real_mnist, overlap, run_main

SEVEN = PROJECT_DIR / "examples" / "seven.png"
# Strokes of digits drawn in a 20x20 box (x, y), as a person writes them: a 5's bar is a stroke
# of its own, apart from the rest.
STROKES = {
    "1": [[(10, 0), (10, 20)]],
    "4": [[(13, 0), (2, 13), (19, 13)], [(13, 4), (13, 20)]],
    "5": [[(4, 0), (4, 9), (14, 9), (16, 15), (12, 20), (2, 19)], [(7, 0), (18, 0)]],
    "7": [[(1, 0), (19, 0), (7, 20)]],
}


def page(text: str, size: int = 40, gap: float = 0.6, marks: tuple = ()) -> Image.Image:
    """`text` handwritten from STROKES in dark ink on white paper, each digit `size` pixels tall
    and `gap` of that apart from the next, with other `marks` (pen lines) on the page."""
    scale = size / 20
    width = int(len(text) * size * (1 + gap) + 2 * size)
    image = Image.new("L", (width, 3 * size), 240)
    draw = ImageDraw.Draw(image)
    for place, digit in enumerate(text):
        left, top = size + place * size * (1 + gap), size
        for stroke in STROKES[digit]:
            draw.line([(left + x * scale, top + y * scale) for x, y in stroke], fill=30,
                      width=max(3, size // 8), joint="curve")
    for mark in marks:
        draw.line(mark, fill=30, width=max(3, size // 8))
    return image


def test_digits_written_apart_are_found_left_to_right():
    digits = preprocess_number(page("1457"))
    assert digits.shape == (4, 28, 28)
    # each framed alone as MNIST frames a digit: a 1 is a thin upright stroke in mid-frame
    one = digits[0] > 0.5
    assert one.any(dim=0).sum() <= 6 and one.any(dim=1).sum() >= 18


def test_pieces_that_share_columns_are_one_digit():
    """A 5's loose bar, or a 4 written in two strokes, is part of its digit, not a digit."""
    assert len(preprocess_number(page("55"))) == 2
    assert len(preprocess_number(page("4"))) == 1


def test_an_image_of_one_digit_reads_as_preprocess_digit_reads_it():
    for image in (Image.open(SEVEN), page("5"), page("4", marks=[(150, 10), (152, 12)])):
        assert torch.equal(preprocess_number(image)[0], preprocess_digit(image))
        assert len(preprocess_number(image)) == 1


def test_dots_dashes_and_lines_across_the_page_are_not_digits():
    # a dash between two digits, a dot after them, and a margin line down the whole page
    marks = [(82, 60), (94, 60)], [(150, 78), (152, 80)], [(4, 0), (4, 119)]
    image = page("17", marks=marks)
    dark = 1 - np.asarray(image, np.float32) / 255
    digits = number_digits(without_lines(dark > 0.5), dark)
    assert len(digits) == 2


@pytest.mark.parametrize("tilt", [0, 12])
def test_a_margin_line_through_a_digit_leaves_the_digit_whole(tilt):
    """A line down the page that crosses one digit and touches another is taken out: the number
    keeps every digit, the crossed one whole."""
    # page("1457"): digits 40 pixels tall at x = 40, 104, 168, 232; one line crosses the 4's bar,
    # the other touches the 5's left edge
    image = page("1457", marks=[[(136, 0), (136 + tilt, 119)], [(172 - tilt, 0), (172, 119)]])
    assert len(preprocess_number(image)) == 4
    assert read_number(image, model=PRETRAINED_MODEL_PATH).text == "1457"


@pytest.mark.parametrize("bend", [[(20, 0), (32, 60), (20, 119)],
                                  [(190, 0), (178, 60), (190, 119)]])
def test_a_bent_margin_line_leaves_no_stroke_behind(bend):
    """A hand-drawn margin bends: all of it is taken out, none of it left to read as a 1."""
    assert read_number(page("47", marks=[bend]), model=PRETRAINED_MODEL_PATH).text == "47"


@pytest.mark.parametrize("text", ["71", "741"])
def test_a_number_cropped_to_its_ink_keeps_the_digits_at_the_crops_edges(text):
    """Each digit then runs from the image's top edge to its bottom, as a page's edge does: the
    1 at the right edge is a digit all the same."""
    image = page(text)
    ink = np.asarray(image) < 128
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    tight = image.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    assert read_number(tight, model=PRETRAINED_MODEL_PATH).text == text


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_dark_strip_of_table_beside_the_page_leaves_the_numbers_strokes_alone(side):
    """The strip, wider than any pen, is not the measure of the pen's width (which would make the
    digits' strokes lines), nor a digit beside the number."""
    page_and_table = np.asarray(page("1457")).copy()  # 120 x 336 pixels
    strip = slice(0, 20) if side == "left" else slice(-20, None)
    page_and_table[:, strip] = 60
    image = Image.fromarray(page_and_table).filter(ImageFilter.GaussianBlur(1))
    assert read_number(image, model=PRETRAINED_MODEL_PATH).text == "1457"


def test_a_small_number_beside_the_pages_edge_is_read_whole():
    """Its digits are short beside the strip and each holds less ink than it: the strip is
    neither a digit nor the measure of a speck (its 1 stays)."""
    photo = Image.new("L", (320, 240), 240)
    photo.paste(page("1457", size=24), (30, 60))
    pixels = np.asarray(photo).copy()
    pixels[:, :20] = 60
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1))
    assert read_number(image, model=PRETRAINED_MODEL_PATH).text == "1457"


def test_only_the_line_of_the_number_is_read():
    """A digit far off to the side, or one written above the line, is another mark on the
    page."""
    far = page("14", gap=3.0)  # 3 heights apart: two marks, the larger one read
    assert len(preprocess_number(far)) == 1
    above = Image.new("L", (400, 200), 240)
    above.paste(page("174"), (0, 80))
    above.paste(page("5", size=30).crop((20, 20, 70, 70)), (110, 0))  # a 5 above the 1 and 7
    assert len(preprocess_number(above)) == 3


def test_a_blank_page_is_no_number():
    with pytest.raises(ImageError, match="no digit found"):
        preprocess_number(Image.new("L", (200, 100), 240))


def test_read_number_gives_the_digits_and_their_string():
    number = read_number(page("17"), model=PRETRAINED_MODEL_PATH)
    assert isinstance(number, Number) and len(number.digits) == 2
    assert number.text == "".join(digit.name for digit in number.digits)
    assert number.probability == pytest.approx(
        number.digits[0].probability * number.digits[1].probability)
    assert number.input.shape == (28, 56)
    assert str(number).startswith(f"{number.text} (")


def test_a_numbers_note_says_which_digits_look_like_no_digit_and_which_are_unsure():
    """Two reasons apart: a digit can be sure which of the ten it is most like and still not look
    like a digit at all; the note must not call that low confidence."""
    def digit(name: str, probability: float, score: float) -> Prediction:
        return Prediction(int(name), name, probability, [(name, probability)], torch.zeros(28, 28),
                          digit_score=score, is_digit=score >= 0.5)

    assert str(Number([digit("1", 1.0, 0.9), digit("2", 1.0, 0.8)])).endswith("100.0%)")
    refused = str(Number([digit("1", 1.0, 0.02), digit("2", 1.0, 0.9), digit("3", 1.0, 0.1)]))
    assert refused.endswith("[digits 1, 3 do not look like digits (digit scores 2%, 10%): check "
                            "the input]")
    both = str(Number([digit("4", 0.5, 0.9), digit("5", 1.0, 0.3)]))
    assert both.endswith("[digit 2 does not look like a digit (digit score 30%); low confidence "
                         "in digit 1: check the input]")


def test_a_prepared_tensor_is_no_image_to_read_a_number_from():
    with pytest.raises(ImageError, match="not from prepared tensors"):
        read_number(torch.zeros(28, 28), model=PRETRAINED_MODEL_PATH)


def test_a_number_of_one_digit_prints_as_its_prediction():
    number = read_number(SEVEN, model=PRETRAINED_MODEL_PATH)
    assert str(number) == str(number.digits[0]) and number.text == "7"


def test_only_an_mnist_model_reads_numbers(tmp_path):
    record = read_model_file(PRETRAINED_MODEL_PATH)
    record.update(dataset="fashion-mnist", classes=list(DATASETS["fashion-mnist"].classes))
    save_model(record, tmp_path / "fashion.pth")
    with pytest.raises(UserError, match="a fashion-mnist model reads no numbers"):
        Predictor(tmp_path / "fashion.pth").read_number(SEVEN)


@needs_real_mnist
def test_a_photographed_number_is_read_whole(tmp_path):
    images, labels = load_dataset(PROJECT_DIR / "data", train=False, download=False)
    image, quality = photos.render(images[:4].numpy(), "phone photo", seed=3)
    path = tmp_path / "number.jpg"
    path.write_bytes(photos.encode(image, quality))
    expected = "".join(str(int(label)) for label in labels[:4])
    assert read_number(path, model=PRETRAINED_MODEL_PATH).text == expected
    result = run_main("load_model.py", "--model", str(PRETRAINED_MODEL_PATH), str(path),
                      "--out-dir", str(tmp_path))
    assert result.stdout.startswith(f"{path}: {expected} (")
    assert Image.open(tmp_path / "number.input.png").size == (4 * 28, 28)


@needs_real_mnist
def test_a_small_digit_on_a_12_megapixel_photo_reads_as_its_crop_does(tmp_path):
    """A digit 40 pixels tall on a 4000x3000 phone photo is a few pixels where the page is first
    looked at: it is looked at again, closer, and framed as its crop is."""
    images, _ = load_dataset(PROJECT_DIR / "data", train=False, download=False)
    predictor = Predictor(PRETRAINED_MODEL_PATH)
    for index in (0, 1):
        image, quality, around = photos.small_digit_photo(images[index].numpy(), seed=index)
        image.save(tmp_path / "photo.jpg", quality=quality)
        image.crop(around).save(tmp_path / "crop.jpg", quality=quality)
        whole, crop = (predictor.read_number(tmp_path / name) for name in ("photo.jpg", "crop.jpg"))
        assert whole.text == crop.text
        assert overlap(whole.digits[0].input, crop.digits[0].input) >= 0.8


def test_a_shadow_cut_by_the_photos_edge_does_not_hide_a_small_digit():
    """A wide grey band along the photo's edge (a shadow) outweighs a small digit where the page
    is first looked at; the digit, as dark as it and within the image, is looked at closer."""
    photo = Image.new("L", (3000, 2000), 235)
    ImageDraw.Draw(photo).rectangle((0, 0, 160, 2000), fill=150)  # the shadow, cut by the edge
    digit = page("7", size=40)
    photo.paste(digit, (1500, 900))
    crop = photo.crop((1420, 820, 1500 + digit.width + 80, 900 + digit.height + 80))
    assert overlap(preprocess_digit(photo), preprocess_digit(crop)) >= 0.8


@pytest.mark.parametrize("shadow, ink", [(130, 0.6), (60, 0.4), (160, 0.4)])
def test_a_small_digit_lighter_than_a_shadow_on_the_photos_edge_is_still_found(shadow, ink):
    """Pencil, or a digit in the page's shade, can be lighter than a shadow's edge: a small mark
    within the image is looked at closer when it is nearly as dark as the shadow, and otherwise
    when it stands out once the shadow is set aside."""
    photo = Image.new("L", (4000, 3000), 235)
    ImageDraw.Draw(photo).rectangle((0, 0, 220, 3000), fill=shadow)
    digit = Image.eval(page("7", size=30), lambda level: round(240 - (240 - level) * ink))
    photo.paste(digit, (2000, 1400))
    crop = photo.crop((1920, 1320, 2000 + digit.width + 80, 1400 + digit.height + 80))
    assert overlap(preprocess_digit(photo), preprocess_digit(crop)) >= 0.8
