"""load_model.py's image preprocessing: any digit image becomes an MNIST-like 28x28 input."""

import struct
import zlib

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from lenetkit.environment import PRETRAINED_MODEL_PATH
from lenetkit.prediction import predict
from lenetkit.preprocess import ImageError, on_ground, preprocess_digit, read_image

from conftest import overlap


def drawn_digit(ink: int = 0, paper: int = 255, size=(400, 300),
                box=(20, 30, 140, 230)) -> Image.Image:
    """A large hand-drawn-like '0' (a thick ellipse) placed off-centre, near the top-left corner."""
    image = Image.new("L", size, paper)
    ImageDraw.Draw(image).ellipse(box, outline=ink, width=18)
    return image


def centre_of_mass(digit: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = digit.sum().item()
    return (digit * rows).sum().item() / mass, (digit * cols).sum().item() / mass


def ink_extent(digit: torch.Tensor, threshold: float = 0.1) -> tuple[int, int]:
    rows, cols = (digit > threshold).nonzero(as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_a_large_dark_on_light_off_centre_digit_comes_back_white_on_black_and_centred():
    digit = preprocess_digit(drawn_digit())
    assert digit.shape == (28, 28) and digit.dtype == torch.float32
    assert digit.max().item() == pytest.approx(1.0)
    # black background at the border
    assert digit[0].max().item() == 0 and digit[:, 0].max().item() == 0
    row, col = centre_of_mass(digit)
    assert abs(row - 14) <= 0.6 and abs(col - 14) <= 0.6
    assert max(ink_extent(digit)) in (20, 21)  # the longer side scaled to 20 pixels


def test_the_aspect_ratio_is_kept():
    height, width = ink_extent(preprocess_digit(drawn_digit()))
    assert height > width  # the ellipse is 200 tall and 120 wide
    assert width / height == pytest.approx(120 / 200, abs=0.12)


def test_light_ink_on_dark_paper_gives_the_same_digit_as_dark_ink_on_light_paper():
    dark_on_light = preprocess_digit(drawn_digit(ink=0, paper=255))
    light_on_dark = preprocess_digit(drawn_digit(ink=255, paper=0))
    assert torch.allclose(dark_on_light, light_on_dark, atol=1e-4)


@pytest.mark.parametrize("ground", [1, 20, 45])
def test_a_thick_light_digit_on_a_dark_grey_ground_reads_as_on_black(ground):
    """A dark-mode drawing: strokes so thick that most blocks of the image are more ink than
    ground, on a ground a little above black."""
    def seven(ground: int) -> Image.Image:
        image = Image.new("L", (280, 280), ground)
        ImageDraw.Draw(image).line([(70, 50), (210, 50), (120, 240)], fill=255, width=23)
        return image

    on_black = preprocess_digit(seven(0))
    assert overlap(preprocess_digit(seven(ground)), on_black) > 0.95
    assert str(predict(seven(ground), model=PRETRAINED_MODEL_PATH)).startswith("7 (")  # a digit


def test_a_blot_wider_than_the_paper_s_light_stays_solid_where_a_0_keeps_its_hole():
    blot = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(blot).ellipse((50, 50, 230, 230), fill=30)  # a felt pen's dot, or a stain
    assert preprocess_digit(blot)[14, 14] > 0.5  # not its edge alone: a fine pen's 0
    assert preprocess_digit(drawn_digit())[14, 14] < 0.1


def test_grey_paper_and_a_colour_photo_work_like_black_and_white():
    reference = preprocess_digit(drawn_digit())
    grey = preprocess_digit(drawn_digit(ink=40, paper=200))
    assert torch.allclose(reference, grey, atol=0.02)
    colour = preprocess_digit(Image.merge("RGB", [drawn_digit(ink=30, paper=250)] * 3))
    assert torch.allclose(reference, colour, atol=0.02)


def test_dark_ink_on_a_transparent_background_reads_as_ink_on_white_paper():
    ink = drawn_digit(ink=0, paper=255)
    rgba = Image.new("RGBA", ink.size, (0, 0, 0, 0))
    rgba.putalpha(Image.eval(ink, lambda value: 255 - value))  # opaque black only where the ink is
    assert torch.allclose(preprocess_digit(rgba), preprocess_digit(ink), atol=0.02)
    for premultiplied in (rgba.convert("RGBa"), rgba.convert("LA").convert("La")):
        assert torch.allclose(preprocess_digit(premultiplied), preprocess_digit(ink), atol=0.02)


def test_light_ink_on_a_transparent_background_reads_as_the_same_digit():
    """A white digit saved on nothing (a drawing app's, an icon's): on white paper it would
    vanish, so a mostly transparent image with light ink gets a black ground."""
    ink = drawn_digit(ink=0, paper=255)
    rgba = Image.new("RGBA", ink.size, (255, 255, 255, 0))
    rgba.putalpha(Image.eval(ink, lambda value: 255 - value))  # opaque white only where the ink is
    assert torch.allclose(preprocess_digit(rgba), preprocess_digit(ink), atol=0.02)
    page = Image.new("RGBA", ink.size, (255, 255, 255, 255))  # an opaque page: white stays paper
    page.paste(ink)
    assert on_ground(page).getpixel((0, 0)) == (255, 255, 255, 255)
    # A white card with a 7 written on it, a third of a clear image: dark writing, so white paper.
    card = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(card).rectangle((40, 40, 159, 159), fill=(255, 255, 255, 255))
    ImageDraw.Draw(card).line([(65, 60), (135, 60), (90, 145)], fill=(0, 0, 0, 255), width=10)
    answer = predict(card, model=PRETRAINED_MODEL_PATH)
    assert (answer.name, answer.is_digit) == ("7", True)


def test_a_16_bit_image_works_like_an_8_bit_one():
    eight_bit = drawn_digit()
    sixteen_bit = Image.fromarray(np.asarray(eight_bit).astype(np.uint16) * 257)
    assert sixteen_bit.mode.startswith("I;16")
    assert torch.allclose(preprocess_digit(sixteen_bit), preprocess_digit(eight_bit), atol=1e-3)


def test_a_16_bit_png_with_a_transparent_level_reads_as_the_same_digit(tmp_path):
    """A PNG's tRNS makes one gray level clear; Pillow's RGBA would clip 16-bit levels to white."""
    eight_bit = drawn_digit(ink=40, paper=220)  # over 255 in 16 bits, the ink too
    levels = np.asarray(eight_bit).astype(np.uint16) * 257
    levels[:4, :4] = 1234  # a corner of the paper, clear
    Image.fromarray(levels).save(tmp_path / "clear.png", transparency=1234)
    sixteen_bit = read_image(tmp_path / "clear.png")
    assert sixteen_bit.mode.startswith("I;16") and sixteen_bit.info["transparency"] == 1234
    assert torch.allclose(preprocess_digit(sixteen_bit), preprocess_digit(eight_bit), atol=0.02)
    floats = Image.fromarray(levels.astype(np.float32) / 65535)  # the Python API's float image
    floats.info["transparency"] = 1234 / 65535
    assert torch.allclose(preprocess_digit(floats), preprocess_digit(eight_bit), atol=0.02)


def test_a_small_digit_is_scaled_up_to_fill_the_20_pixel_box():
    digit = preprocess_digit(drawn_digit(size=(30, 30), box=(3, 3, 12, 18)))
    assert max(ink_extent(digit)) in (20, 21)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_blank_image_is_an_error(value):
    with pytest.raises(ImageError, match="no digit found"):
        preprocess_digit(Image.new("L", (50, 50), value))


def test_a_file_that_is_not_an_image_is_an_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels")
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(path)


def test_a_missing_image_file_is_an_error(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "absent.png")


def test_a_palette_image_and_an_animated_gif_are_read_as_their_first_frame(tmp_path):
    reference = preprocess_digit(drawn_digit())
    drawn_digit().convert("P").save(tmp_path / "palette.png")
    assert torch.allclose(preprocess_digit(read_image(tmp_path / "palette.png")), reference,
                          atol=0.02)
    frames = [drawn_digit(), Image.new("L", (400, 300), 255)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    assert torch.allclose(preprocess_digit(read_image(tmp_path / "animated.gif")), reference,
                          atol=0.02)


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    """A PNG of 1 KB that declares 100,000 x 100,000 pixels (10 GB once decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 100_001 * 10)  # only the first rows: the size is what matters
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
                     + chunk(b"IEND", b""))
    assert path.stat().st_size < 2_000
    with pytest.raises(ImageError, match=r"too large to be a digit \(the limit is 24,000,000 "
                       r"pixels, 120,000,000 for JPEG files\)$"):
        read_image(path)


def test_an_empty_file_is_not_an_image(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("size", [(1, 1), (3, 2)])
def test_a_tiny_uniform_image_is_blank(size):
    with pytest.raises(ImageError, match="no digit found"):
        preprocess_digit(Image.new("L", size, 0))


@pytest.mark.parametrize("page", [(9, 9), (200, 280), (2480, 3508)])
@pytest.mark.parametrize("speck", [1, 2, 3])
def test_a_speck_on_a_blank_page_is_no_digit(page, speck):
    image = Image.new("L", page, 255)
    ImageDraw.Draw(image).rectangle((4, 4, 3 + speck, 3 + speck), fill=0)
    # On a large page the speck is too faint to see where the digit is looked for: blank.
    with pytest.raises(ImageError, match=r"no digit found \((its ink is a mark \d pixels? across, "
                                         r"too small to be a digit|the image is blank)"):
        preprocess_digit(image)


@pytest.mark.parametrize("extreme", [3e38, -3e38])
def test_one_extreme_pixel_of_a_float_image_is_no_digit(extreme):
    pixels = np.zeros((28, 28), np.float32)
    pixels[14, 14] = extreme  # stretched to full contrast, it is all there is
    with pytest.raises(ImageError, match="no digit found"):
        preprocess_digit(Image.fromarray(pixels))


def test_the_shortest_mark_that_can_be_a_digit_is_still_a_28x28_input():
    image = Image.new("L", (9, 9), 255)
    ImageDraw.Draw(image).line([(4, 2), (4, 6)], fill=0)  # a "1" five pixels tall
    digit = preprocess_digit(image)
    assert digit.shape == (28, 28) and torch.isfinite(digit).all()


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=80)))
def test_any_grayscale_image_gives_a_valid_input_or_a_clear_error(pixels):
    try:
        digit = preprocess_digit(Image.fromarray(pixels))
    except ImageError:
        return
    assert digit.shape == (28, 28) and digit.dtype == torch.float32
    assert torch.isfinite(digit).all() and digit.min() >= 0 and digit.max() <= 1
    assert digit.max() == pytest.approx(1)  # the ink is there, at full strength as in MNIST


def test_an_image_over_our_pixel_limit_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    import lenetkit.preprocess

    monkeypatch.setattr(lenetkit.preprocess, "MAX_IMAGE_PIXELS", 100 * 100)
    drawn_digit(size=(101, 100), box=(10, 10, 60, 90)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="101x100 pixels is too large"):
        read_image(tmp_path / "big.png")


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_distances_on_the_ink_s_bounding_box_equal_those_on_the_whole_image(mask):
    from scipy import ndimage

    from lenetkit.preprocess import depth, within
    assert np.array_equal(depth(mask), ndimage.distance_transform_edt(mask) * mask)
    for radius in (0.5, 2.0, 3.7):
        expected = mask.any() & (ndimage.distance_transform_edt(~mask) <= radius)
        assert np.array_equal(within(mask, radius), expected)


def test_a_colour_jpeg_is_read_as_its_luminance_at_a_reduced_scale(tmp_path):
    large = drawn_digit().resize((5200, 3900), Image.Resampling.BICUBIC)
    large.convert("RGB").save(tmp_path / "big.jpg", quality=90)
    image = read_image(tmp_path / "big.jpg")
    assert image.mode == "L" and image.size == (1300, 975)  # decoded at a quarter of its side
    assert torch.allclose(preprocess_digit(image), preprocess_digit(drawn_digit()), atol=0.2)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64).map(lambda data: data.replace(b"\x00", b"\xff\xda")),
       st.integers(1, 9))
def test_start_of_scan_markers_are_counted_wherever_the_reads_split_them(data, chunk):
    import io

    from lenetkit.preprocess import jpeg_scan_count
    file = io.BytesIO(b"\xff" + data)
    file.seek(3)
    assert jpeg_scan_count(file, chunk) == (b"\xff" + data).count(b"\xff\xda")
    assert file.tell() == 3  # the file is left where it was
