"""Digits as people hand them in: photos of a page (uneven light, shadows, ruled or squared paper,
coloured ink), read through one predict() call; bad files reported one by one."""

import io
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import lenetkit.prediction
import lenetkit.preprocess
from lenetkit.environment import PRETRAINED_MODEL_PATH
from lenetkit.errors import UserError
from lenetkit.prediction import Prediction, Predictor, predict, read_number
from lenetkit.preprocess import ImageError, preprocess_digit, read_image
from lenetkit.strokes import fine_pen, skeleton

import photos
from conftest import PROJECT_DIR, needs_real_mnist, overlap, run_main

SEVEN = PROJECT_DIR / "examples" / "seven.png"


def four() -> np.ndarray:
    """A '4' drawn as MNIST's digits are: white strokes on black, 28x28, in a 20-pixel box."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    draw.line([(17, 4), (8, 16), (21, 16)], fill=255, width=3)
    draw.line([(17, 8), (17, 24)], fill=255, width=3)
    return np.asarray(image)


def centre_of_mass(digit: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    total = digit.sum().item()
    return (digit * rows).sum().item() / total, (digit * cols).sum().item() / total


@pytest.mark.parametrize("condition", ["gradient", "shadow", "ruled", "squared", "blue ink",
                                       "noise+jpeg"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_photo_of_a_digit_comes_back_centred_with_its_strokes_without_the_page(condition, seed):
    clean = preprocess_digit(Image.fromarray(four()))
    seen = preprocess_digit(photos.photo(four(), condition, seed))
    row, col = centre_of_mass(seen)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert overlap(seen, clean) >= 0.8  # the same strokes: kept lines or shadows spoil the crop
    assert seen[:, :3].max() < 0.5 and seen[:, -3:].max() < 0.5  # nothing at the sides: no lines


def test_ruling_lines_through_the_digit_are_dropped_and_the_strokes_kept():
    page = np.full((300, 400), 240, np.uint8)
    page[::40] = 150  # ruling every 40 rows, across the digit too
    page[:, 30] = 150  # a margin line
    plain = Image.new("L", (400, 300), 240)
    ImageDraw.Draw(plain).ellipse((150, 60, 250, 240), outline=20, width=16)
    ruled = Image.fromarray(np.minimum(np.asarray(plain), page))
    assert overlap(preprocess_digit(ruled), preprocess_digit(plain)) >= 0.9


def test_blue_ink_and_black_ink_give_the_same_input():
    ink = Image.new("L", (300, 300), 0)
    ImageDraw.Draw(ink).line([(80, 60), (220, 60), (120, 250)], fill=255, width=14)
    opacity = np.asarray(ink, np.float32)[..., None] / 255
    paper = np.array([245, 245, 240], np.float32)

    def written(colour: tuple) -> Image.Image:
        pixels = paper * (1 - opacity) + np.array(colour) * opacity
        return Image.fromarray(pixels.astype(np.uint8))

    blue, black = written((30, 50, 160)), written((20, 20, 20))
    assert overlap(preprocess_digit(blue), preprocess_digit(black)) >= 0.95


def test_a_photo_saved_sideways_is_read_upright_as_its_exif_orientation_says(tmp_path):
    upright = photos.photo(four(), "gradient", 0)
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # the pixels as the sensor stored them
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to display": undoes ROTATE_90 (anticlockwise)
    sideways.save(tmp_path / "sideways.jpg", quality=95, exif=exif)
    upright.save(tmp_path / "upright.jpg", quality=95)
    turned, plain = read_image(tmp_path / "sideways.jpg"), read_image(tmp_path / "upright.jpg")
    assert turned.size == plain.size == upright.size
    difference = np.abs(np.asarray(turned, np.float32) - np.asarray(plain, np.float32)).mean()
    assert difference < 3  # the same pixels, but for JPEG's rounding
    assert overlap(preprocess_digit(turned), preprocess_digit(plain)) >= 0.9


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    photos.photo(four(), "ruled", 0).resize((4000, 3000)).save(tmp_path / "phone.jpg", quality=85)
    image = read_image(tmp_path / "phone.jpg")
    # Pillow's draft mode: not 12 megapixels, but enough detail to look closer at a small digit
    fine = lenetkit.preprocess.JPEG_DETAIL * lenetkit.preprocess.WORK_SIDE
    assert image.size == (1000, 750) and min(image.size) >= fine
    assert preprocess_digit(image).shape == (28, 28)


def png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares width x height pixels and holds only its first rows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def test_an_8000_by_8000_png_is_refused_from_its_header_with_the_limit_in_the_message(tmp_path):
    png_header_only(tmp_path / "huge.png", 8000, 8000)  # decoding it would fail: it has 4 rows
    with pytest.raises(ImageError, match=r"8000x8000 pixels is too large .*limit is 24,000,000"):
        read_image(tmp_path / "huge.png")


def test_a_float_image_with_an_infinite_pixel_is_an_image_error(tmp_path):
    pixels = np.zeros((40, 40), np.float32)
    pixels[10:30, 18:22] = 1.0
    pixels[0, 0] = np.inf
    Image.fromarray(pixels).save(tmp_path / "infinite.tif")
    with pytest.raises(ImageError, match="NaN or infinite"):
        preprocess_digit(read_image(tmp_path / "infinite.tif"))


def test_one_bad_file_never_stops_the_others(tmp_path):
    pixels = np.full((40, 40), np.nan, np.float32)
    Image.fromarray(pixels).save(tmp_path / "nan.tif")
    (tmp_path / "text.png").write_text("not pixels")
    result = run_main("load_model.py", "--model", PRETRAINED_MODEL_PATH, tmp_path / "nan.tif",
                      tmp_path / "text.png", SEVEN, check=False)
    assert result.returncode == 1
    assert "nan.tif: error: the image holds NaN or infinite pixel values" in result.stderr
    assert "text.png: error: not a readable image" in result.stderr
    assert result.stdout.startswith(f"{SEVEN}: 7 (")


def test_an_unexpected_failure_on_one_file_is_reported_and_the_rest_go_on(monkeypatch, capsys):
    real = lenetkit.prediction.Predictor.image

    def failing_once(self, images):
        if str(images).endswith("first.png"):
            raise RuntimeError("something unforeseen")
        return real(self, images)

    monkeypatch.setattr(lenetkit.prediction.Predictor, "image", failing_once)
    monkeypatch.setattr(sys, "argv", ["load_model.py", "--model", str(PRETRAINED_MODEL_PATH),
                                      "first.png", str(SEVEN)])
    with pytest.raises(SystemExit) as exit_status:
        lenetkit.prediction.main()
    output = capsys.readouterr()
    assert exit_status.value.code == 1
    assert "first.png: error: could not predict it (RuntimeError: something unforeseen)" \
        in output.err
    assert output.out.startswith(f"{SEVEN}: 7 (")


def test_predict_takes_a_path_a_pil_image_a_numpy_array_or_a_tensor():
    image = Image.open(SEVEN)
    prepared = preprocess_digit(image)
    for given in (SEVEN, str(SEVEN), image, np.asarray(image), np.asarray(image.convert("L")),
                  prepared, (prepared * 255).round().to(torch.uint8)):
        prediction = predict(given, model=PRETRAINED_MODEL_PATH)
        assert isinstance(prediction, Prediction), type(given)
        assert (prediction.label, prediction.name) == (7, "7") and prediction.probability > 0.9
        assert prediction.top == [("7", prediction.probability)]  # the top class, as the CLI
        assert prediction.input.shape == (28, 28)


def test_a_prediction_prints_as_the_command_line_prints_it():
    prediction = predict(SEVEN, model=PRETRAINED_MODEL_PATH, top_k=2)
    assert str(prediction).startswith("7 (") and str(prediction).count("%") == 2
    assert "input=" not in repr(prediction) and "label=7" in repr(prediction)


def test_predict_and_read_number_name_the_file_at_fault(tmp_path):
    missing = tmp_path / "missing.png"
    for read in (predict, read_number):
        with pytest.raises(ImageError, match=rf"^{re.escape(str(missing))}: no such file$"):
            read(missing, model=PRETRAINED_MODEL_PATH)
        with pytest.raises(ImageError, match=rf"^{re.escape(str(tmp_path))}: the file is a folder"):
            read(str(tmp_path), model=PRETRAINED_MODEL_PATH)


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_empty_pil_image_gets_a_clear_error_from_predict_and_read_number(size):
    for read in (predict, read_number):
        with pytest.raises(ImageError, match=rf"the image is empty \({size[0]}x{size[1]} pixels"):
            read(Image.new("L", size), model=PRETRAINED_MODEL_PATH)


def test_the_api_refuses_a_device_this_machine_lacks_and_names_the_list_item_at_fault(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device 'cuda' is not available here"):
            Predictor(PRETRAINED_MODEL_PATH, device="cuda")
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError, match=rf"item 1 \({re.escape(str(missing))}\)"):
        predict([SEVEN, missing], model=PRETRAINED_MODEL_PATH)
    with pytest.raises(ImageError, match="item 0: can't predict a int"):
        predict([3], model=PRETRAINED_MODEL_PATH)


def test_a_list_or_a_tensor_batch_gives_a_list_of_predictions():
    prepared = preprocess_digit(Image.open(SEVEN))
    predictor = Predictor(PRETRAINED_MODEL_PATH, top_k=2)
    pair = torch.stack([prepared, prepared])
    for batch in ([SEVEN, SEVEN], pair, pair[:, None]):
        predictions = predictor(batch)
        assert [prediction.name for prediction in predictions] == ["7", "7"]
        assert all(len(prediction.top) == 2 for prediction in predictions)


@pytest.mark.parametrize("given, message", [
    (torch.zeros(3, 32, 32), "not a prepared input"),
    (np.zeros((5, 5, 7), np.uint8), "not an image"),
    (torch.full((28, 28), float("nan")), "NaN or infinite")])
def test_an_input_predict_cannot_take_is_a_clear_error(given, message):
    with pytest.raises(ImageError, match=message):
        predict(given, model=PRETRAINED_MODEL_PATH)


@pytest.mark.slow
def test_the_readme_snippet_works_from_another_folder(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(PROJECT_DIR)!r})\n"
            "from load_model import predict\n"
            f"prediction = predict({str(SEVEN)!r})\n"
            "print(prediction.name, f'{prediction.probability:.2f}', prediction.top[0][0])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    name, probability, first = result.stdout.split()
    assert name == first == "7" and 0.9 < float(probability) <= 1


def test_a_low_confidence_prediction_says_so(monkeypatch, capsys):
    # over any probability: all are unsure
    monkeypatch.setattr(lenetkit.prediction, "LOW_CONFIDENCE", 1.01)
    monkeypatch.setattr(sys, "argv", ["load_model.py", "--model", str(PRETRAINED_MODEL_PATH),
                                      str(SEVEN)])
    lenetkit.prediction.main()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{SEVEN}: 7 (")
    assert line.endswith("[low confidence: check the input]")
    assert not predict(SEVEN, model=PRETRAINED_MODEL_PATH).confident


def test_a_confident_prediction_prints_no_warning():
    result = run_main("load_model.py", "--model", PRETRAINED_MODEL_PATH, SEVEN)
    assert "low confidence" not in result.stdout and result.stdout.startswith(f"{SEVEN}: 7 (")


def test_save_input_writes_the_28x28_the_model_saw_beside_each_prediction(tmp_path):
    other = tmp_path / "other" / "seven.png"
    other.parent.mkdir()
    other.write_bytes(SEVEN.read_bytes())
    result = run_main("load_model.py", "--model", PRETRAINED_MODEL_PATH, "--out-dir",
                      tmp_path / "seen", SEVEN, other)
    first, second = result.stdout.splitlines()
    assert first.endswith(f"[input: {tmp_path / 'seen' / 'seven.input.png'}]")
    assert second.endswith(f"[input: {tmp_path / 'seen' / 'seven-2.input.png'}]")  # kept apart
    saved = Image.open(tmp_path / "seen" / "seven.input.png")
    assert saved.size == (28, 28) and saved.mode == "L"
    expected = (preprocess_digit(Image.open(SEVEN)) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(saved), expected)


def test_save_input_into_a_file_is_one_line_before_any_image_is_read(tmp_path):
    result = run_main("load_model.py", "--out-dir", PROJECT_DIR / "README.md", SEVEN,
                      check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].endswith(
        f"argument --out-dir: can't write {PROJECT_DIR / 'README.md'}: "
        f"{PROJECT_DIR / 'README.md'} is not a folder")


def test_an_input_that_cant_be_saved_is_one_plain_error_line_and_the_other_images_are_read(
        tmp_path, monkeypatch):
    def full_disk(prediction, image_path, folder, taken):
        raise UserError(f"can't write {folder}/x.input.png: No space left on device")

    monkeypatch.setattr(lenetkit.prediction, "save_input", full_disk)
    result = run_main("load_model.py", "--out-dir", tmp_path, SEVEN, tmp_path / "missing.png",
                      check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert f"{SEVEN}: error: can't write {tmp_path}/x.input.png: No space left on device" \
        in result.stderr.splitlines()
    assert "UserError" not in result.stderr and f"{tmp_path / 'missing.png'}: error:" in \
        result.stderr


@pytest.mark.slow
@needs_real_mnist
def test_most_real_digits_are_read_right_from_phone_photos():
    """Real MNIST test digits rendered as phone photos (every condition at once) and read from
    their JPEG files by the shipped model. The photo benchmark (bench.py --photos) measures more."""
    from lenetkit.datasets import load_dataset

    from conftest import REAL_DATA_DIR

    images, labels = load_dataset(REAL_DATA_DIR, train=False, download=False)
    predictor = Predictor(PRETRAINED_MODEL_PATH)
    right = 0
    for index in range(60):
        file = photos.encode(*photos.render(images[index].numpy(), "phone photo", seed=index))
        right += predictor(Image.open(io.BytesIO(file))).label == labels[index].item()
    assert right / 60 >= 0.9


@pytest.mark.parametrize("condition", ["gradient", "ruled", "blue ink", "tilt", "noise+jpeg"])
@pytest.mark.parametrize("seed", range(3))
def test_a_photographed_blank_page_is_no_digit(condition, seed):
    """The page's light, its grain, the camera's noise and JPEG's blocks are not ink; nor is the
    ruling of a page with nothing written on it."""
    blank = photos.photo(np.zeros((28, 28), np.uint8), condition, seed)
    with pytest.raises(ImageError, match="no digit found"):
        predict(blank, model=PRETRAINED_MODEL_PATH)


def test_lines_across_a_blank_page_are_no_digit_but_a_digit_cropped_tight_is_read():
    ruled = Image.new("L", (320, 240), 235)
    for row in range(20, 240, 40):
        ImageDraw.Draw(ruled).line([(0, row), (319, row + 3)], fill=120, width=2)
    with pytest.raises(ImageError, match="only lines across the whole image"):
        preprocess_digit(ruled)
    one = Image.new("L", (24, 80), 255)
    ImageDraw.Draw(one).rectangle((9, 0, 15, 79), fill=0)  # a 1 from the top edge to the bottom
    assert preprocess_digit(one).shape == (28, 28)


def test_a_blank_squared_page_is_no_digit_but_a_digit_on_one_is_read():
    """A grid reaches every edge and encloses many cells; a digit encloses two holes at most."""
    squared = Image.new("L", (320, 240), 235)
    draw = ImageDraw.Draw(squared)
    for step in range(10, 320, 25):
        draw.line([(step, 0), (step, 239)], fill=140, width=2)
        draw.line([(0, step), (319, step)], fill=140, width=2)
    with pytest.raises(ImageError, match="only lines across the whole image"):
        preprocess_digit(squared)
    written = squared.copy()
    ImageDraw.Draw(written).ellipse((120, 60, 190, 180), outline=20, width=10)  # a 0
    zero = Image.new("L", (120, 170), 235)
    ImageDraw.Draw(zero).ellipse((25, 25, 95, 145), outline=20, width=10)
    assert overlap(preprocess_digit(written), preprocess_digit(zero)) >= 0.8
    eight = Image.new("L", (60, 100), 255)  # cropped tight: its ink reaches every edge
    ImageDraw.Draw(eight).ellipse((0, 0, 59, 49), outline=0, width=8)
    ImageDraw.Draw(eight).ellipse((0, 45, 59, 99), outline=0, width=8)
    assert preprocess_digit(eight).shape == (28, 28)


def test_a_few_of_a_grids_lines_close_up_are_no_digit_but_a_digit_on_them_is_read():
    """Close up, as a photo's small mark is looked at, a grid's lines (here one across and two
    down) enclose no cell; framed, they were an H, read as a 4."""
    close = Image.new("L", (82, 68), 235)
    draw = ImageDraw.Draw(close)
    for col in (20, 61):
        draw.line([(col, 0), (col, 67)], fill=150, width=2)
    draw.line([(0, 40), (81, 40)], fill=150, width=2)
    with pytest.raises(ImageError, match="only lines across the whole image"):
        preprocess_digit(close)
    written = close.copy()
    ImageDraw.Draw(written).line([(30, 12), (52, 12), (38, 58)], fill=20, width=4)  # a 7
    seven = Image.new("L", (82, 68), 235)
    ImageDraw.Draw(seven).line([(30, 12), (52, 12), (38, 58)], fill=20, width=4)
    assert overlap(preprocess_digit(written), preprocess_digit(seven)) >= 0.8
    # A photographed blank squared page whose faint lines break at the work scale: a piece of
    # one was looked at closer, and its neighbours read as a 4.
    page = photos.photo(np.zeros((28, 28), np.uint8), "squared", 28)
    with pytest.raises(ImageError, match="no digit found"):
        predict(page, model=PRETRAINED_MODEL_PATH)


def test_a_digit_cropped_to_its_ink_is_no_grids_lines():
    """A 7 of a bar and a stem, or a small 4, cropped to its ink reaches every edge, and its
    strokes fill whole rows and columns: but they are as wide as a pen's are in so small an
    image, where a grid's lines are a few pixels across a close-up."""
    seven = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(seven).line([(0, 1), (62, 1), (62, 63)], fill=0, width=4)
    four = Image.new("L", (13, 18), 255)
    ImageDraw.Draw(four).line([(9, 0), (0, 12), (12, 12)], fill=0, width=2)
    ImageDraw.Draw(four).line([(9, 0), (9, 17)], fill=0, width=2)
    assert predict(seven, model=PRETRAINED_MODEL_PATH).label == 7
    assert predict(four, model=PRETRAINED_MODEL_PATH).label == 4


def test_a_faint_pencil_digit_is_read_as_a_dark_one():
    dark = Image.fromarray(255 - four()).resize((112, 112), Image.Resampling.BICUBIC)
    faint = Image.fromarray((200 - (200 - np.asarray(dark, np.float32)) * 60 / 255).astype(
        np.uint8))  # grey 140 strokes on grey 200 paper
    assert overlap(preprocess_digit(faint), preprocess_digit(dark)) >= 0.9


def test_a_lone_digit_that_a_margin_line_touches_is_read_without_the_line():
    """The line is taken out as it is for a number (preprocess.without_lines), not the digit
    with it."""
    four = Image.new("L", (320, 240), 240)
    draw = ImageDraw.Draw(four)
    draw.line([(170, 60), (110, 150), (200, 150)], fill=30, width=9)
    draw.line([(170, 90), (170, 190)], fill=30, width=9)
    draw.line([(178, 0), (178, 239)], fill=30, width=5)  # touching the stem's right side
    read = predict(four, model=PRETRAINED_MODEL_PATH)
    assert read.is_digit and read.name == "4"


@pytest.mark.parametrize("pen", [2, 4, 8])
def test_a_digit_written_with_a_fine_pen_is_read_as_one_written_with_a_thick_one(pen):
    """MNIST's pen drew strokes about a tenth of the digit's height wide; a ballpoint's or a
    fineliner's are a fraction of that, and are widened to MIN_PEN_SHARE of it (10 pixels
    here) before the model sees them."""
    def seven(width: int) -> Image.Image:
        page = Image.new("L", (300, 300), 250)
        ImageDraw.Draw(page).line([(90, 60), (210, 60), (130, 250)], fill=20, width=width)
        return page

    fine, thick = preprocess_digit(seven(pen)), preprocess_digit(seven(10))
    assert overlap(fine, thick) >= 0.9
    assert 0.8 <= (fine > 0.5).sum() / (thick > 0.5).sum() <= 1.25  # as wide: no hairline, no blob
    read = predict(seven(pen), model=PRETRAINED_MODEL_PATH)
    assert read.is_digit and read.name == "7"


def test_only_strokes_narrower_than_the_pen_share_of_the_digit_are_widened():
    ink = np.zeros((200, 200), np.float32)
    ink[40:160, 100:107] = 0.8  # a 1, 7 pixels wide: MIN_PEN_SHARE of its height and a bit more
    assert np.array_equal(lenetkit.preprocess.with_pen(ink, ink > 0), ink)
    ink[40:160, 102:105] = 0  # 2 pixels wide either side of a gap: thinner, widened
    assert (lenetkit.preprocess.with_pen(ink, ink > 0) > 0).sum() > (ink > 0).sum()


def test_the_fine_pen_condition_thins_a_digits_strokes_to_a_line_as_wide_as_its_pen():
    mask = np.zeros((60, 60), bool)
    mask[10:50, 20:32] = True  # a bar 12 pixels wide
    middle = skeleton(mask)
    assert middle.sum(axis=1)[15:45].max() == 1  # one pixel wide along its length
    assert middle[:, 20:32].any(axis=1).sum() >= 28  # and about as long
    drawn = np.asarray(photos.render(four(), "fine pen", seed=0)[0]) < 128
    assert 0.01 < drawn.mean() < 0.05  # thin lines on the page, not MNIST's thick strokes


def test_a_batch_thins_as_its_images_do_one_by_one():
    """strokes.skeleton takes a batch (N, H, W) too: a detector's batches are thinned so."""
    masks = np.stack([four() > 127, np.rot90(four() > 127), np.zeros((28, 28), bool)])
    assert np.array_equal(skeleton(masks), np.stack([skeleton(m) for m in masks]))


def test_a_fine_pen_redraws_a_batch_s_stroke_as_a_line_about_as_wide_as_its_pen():
    """strokes.fine_pen: a bar 4 pixels wide (normalized, on a dark ground) becomes a line a
    pixel or a little more wide (at its brightest, as the preprocessing frames a digit), wider
    for a wider pen, as bright as the bar and as long; the ground stays as it was."""
    ground, ink = -0.42, 2.8
    bar = torch.full((1, 1, 28, 28), ground)
    bar[..., 4:24, 12:16] = ink
    widths = []
    for pen in (0.7, 1.0, 1.3):
        drawn = fine_pen(bar, torch.tensor([pen]), ground)[0, 0]
        across = (drawn[8:20] - ground).sum(dim=1) / (ink - ground)
        assert torch.allclose(across, across[0]) and 1 <= across[0] <= pen + 0.5
        widths.append(across[0])
        assert drawn.max().item() == pytest.approx(ink)
        assert drawn.min().item() == pytest.approx(ground)
        assert (drawn[:, 12:16] > ground).any(dim=1).sum() >= 18
        assert (drawn[:, :9] == ground).all() and (drawn[:, 19:] == ground).all()
    assert widths == sorted(widths) and widths[0] < widths[-1]
