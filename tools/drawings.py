"""MNIST digits drawn as a person draws on serve.py's page: pen strokes along each digit's
centre line, blown up to the canvas, for bench_serve.py and the tests.

A digit is thinned to a one-pixel skeleton (lenetkit.strokes.skeleton), the skeleton is
walked into polylines (each one a stroke: pen down, moves, pen up), and the strokes are
drawn with a round-capped pen as the page's canvas draws them.
"""

import io

import numpy as np
from PIL import Image, ImageDraw

from lenetkit.strokes import skeleton

CANVAS_SIDE = 280  # the page's canvas, in pixels
# The page's pen: about as thick as MNIST's strokes when a digit fills the canvas.
PEN_WIDTH = CANVAS_SIDE / 12
SENT_SIDE = CANVAS_SIDE // 4  # the page sends its drawing at a quarter of the canvas's side
UPSCALE = 4  # the digit is thinned at 4 x 28 pixels: smoother centre lines than at 28
# Neighbours as (row, column) offsets, clockwise from north, as Zhang and Suen number them.
NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))

Stroke = list[tuple[float, float]]  # (x, y) points on the canvas


def skeleton_edges(skeleton: np.ndarray) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """The skeleton as a graph: each pixel's 8-connected skeleton neighbours."""
    pixels = set(zip(*np.nonzero(skeleton)))
    return {(r, c): {(r + dr, c + dc) for dr, dc in NEIGHBOURS if (r + dr, c + dc) in pixels}
            for r, c in pixels}


def polylines(graph: dict[tuple[int, int], set[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """Walks the graph into pen strokes, each edge drawn once: a stroke starts at a loose end
    where there is one (as a hand starts a line), and goes on while an undrawn edge leads on."""
    lone = [[pixel] for pixel, neighbours in graph.items() if not neighbours]
    graph = {pixel: set(neighbours) for pixel, neighbours in graph.items()}
    strokes = []
    while any(graph.values()):
        ends = [pixel for pixel, neighbours in graph.items() if len(neighbours) % 2 == 1]
        pixel = min(ends or [pixel for pixel, neighbours in graph.items() if neighbours])
        stroke = [pixel]
        while graph[pixel]:
            following = min(graph[pixel])
            graph[pixel].discard(following)
            graph[following].discard(pixel)
            stroke.append(pixel := following)
        strokes.append(stroke)
    return strokes + lone


def digit_strokes(digit: np.ndarray, side: int = CANVAS_SIDE) -> list[Stroke]:
    """The pen strokes that draw `digit` (28x28 uint8, white on black) on a canvas of `side`
    pixels, as (x, y) points: its skeleton at the scale where 28 pixels fill the canvas."""
    large = Image.fromarray(digit).resize((28 * UPSCALE,) * 2, Image.Resampling.BILINEAR)
    middle = skeleton(np.asarray(large) > 100)
    scale = side / (28 * UPSCALE)
    return [[((c + 0.5) * scale, (r + 0.5) * scale) for r, c in stroke]
            for stroke in polylines(skeleton_edges(middle))]


def drawing(strokes: list[Stroke], side: int = CANVAS_SIDE, pen: float = PEN_WIDTH) -> Image.Image:
    """The strokes as the page's canvas draws them: white, round-capped, on black."""
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        if len(stroke) > 1:
            draw.line(stroke, fill=255, width=round(pen), joint="curve")
        for x, y in (stroke[0], stroke[-1]):
            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=255)
    return image


def canvas_png(digit: np.ndarray, side: int = SENT_SIDE) -> bytes:
    """The PNG file the page sends for `digit` drawn on its canvas: the drawing scaled to
    `side` pixels."""
    image = drawing(digit_strokes(digit))
    if side != image.width:
        image = image.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=None)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
