"""Glyphs: letters and digits rendered from the fonts matplotlib ships; nothing to download.

A class is one character, an image is that character in one of 16 fonts (DejaVu Sans, DejaVu
Serif, DejaVu Sans Mono and STIX General, each regular, bold, italic/oblique and bold italic) with
a small random rotation, scale and shift. Unseen classes are unseen characters, so the task is the
Omniglot one (recognise a new character from a few drawings) in a form that renders in seconds.

Which characters: Latin, Greek and Cyrillic letters (upper and lower case) and the digits that all
16 fonts map in their cmap and draw with ink. Characters whose clean renderings coincide (Latin A,
Greek Alpha and Cyrillic A; Latin o, Greek omicron and Cyrillic o; ...) would be the same class
under two labels, so each group of coinciding characters keeps its first member in the order
digits, Latin, Greek, Cyrillic. Two characters coincide when, in at least half of the fonts, their
clean 32x32 renderings differ by less than 0.15 in relative L2 distance
||a - b|| / max(||a||, ||b||). Half, not all: STIX draws its Cyrillic a little differently, and
requiring every font would keep Latin O and Cyrillic O apart although 13 of the 16 fonts draw them
pixel for pixel alike. On the shipped fonts, the distance reached in half the fonts is below 0.10
for every coinciding pair and above 0.20 for every other pair; 0.15 sits in the gap.

Layout: a glyph is drawn at a fixed font size (0.72 of the image side per em), so case still
shows in size (o against O), and centred by its ink box. The few glyphs wider or taller than 0.8 of
the image (bold Zhe, Shcha, ...) are scaled down to fit.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dnc_keras.datasets.cache import cached_arrays, file_fingerprint
from dnc_keras.datasets._base import MetricDataset, assemble, check_train_classes, image_hw

# Font name -> file name in matplotlib's mpl-data/fonts/ttf.
FONT_FILES = {
    "DejaVu Sans": "DejaVuSans.ttf",
    "DejaVu Sans Bold": "DejaVuSans-Bold.ttf",
    "DejaVu Sans Oblique": "DejaVuSans-Oblique.ttf",
    "DejaVu Sans Bold Oblique": "DejaVuSans-BoldOblique.ttf",
    "DejaVu Serif": "DejaVuSerif.ttf",
    "DejaVu Serif Bold": "DejaVuSerif-Bold.ttf",
    "DejaVu Serif Italic": "DejaVuSerif-Italic.ttf",
    "DejaVu Serif Bold Italic": "DejaVuSerif-BoldItalic.ttf",
    "DejaVu Sans Mono": "DejaVuSansMono.ttf",
    "DejaVu Sans Mono Bold": "DejaVuSansMono-Bold.ttf",
    "DejaVu Sans Mono Oblique": "DejaVuSansMono-Oblique.ttf",
    "DejaVu Sans Mono Bold Oblique": "DejaVuSansMono-BoldOblique.ttf",
    "STIX General": "STIXGeneral.ttf",
    "STIX General Bold": "STIXGeneralBol.ttf",
    "STIX General Italic": "STIXGeneralItalic.ttf",
    "STIX General Bold Italic": "STIXGeneralBolIta.ttf",
}

# Code point ranges searched for classes, in the order that decides which member of a group of
# coinciding characters is kept.
_SCRIPTS = (
    ("digits", range(0x30, 0x3A)),
    ("latin", range(0x41, 0x5B)),
    ("latin", range(0x61, 0x7B)),
    ("greek", range(0x370, 0x400)),
    ("cyrillic", range(0x400, 0x500)),
)
_CATEGORIES = ("Lu", "Ll", "Nd")

_EM = 0.72  # font size in pixels per pixel of image side
_MAX_EXTENT = 0.8  # glyphs larger than this fraction of the image side are shrunk to fit
_MIN_CANVAS = 128  # glyphs are drawn on a canvas at least this large, then box-downsampled
_REFERENCE_SIZE = 32  # coincidence is judged on clean renderings of this size
_NEAR_DISTANCE = 0.15
_NEAR_FONT_FRACTION = 0.5


def font_paths(font_dir=None) -> dict[str, Path]:
    """The 16 font files, by font name.

    Args:
        font_dir: folder holding the `.ttf` files. Defaults to `None`: matplotlib's
            `mpl-data/fonts/ttf`.

    Raises:
        FileNotFoundError: naming every font whose file is missing.
    """
    if font_dir is None:
        import matplotlib

        font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    font_dir = Path(font_dir)
    paths = {name: font_dir / file for name, file in FONT_FILES.items()}
    missing = [f"{name} ({path.name})" for name, path in paths.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"The glyphs dataset needs {len(FONT_FILES)} fonts that matplotlib ships; missing in "
            f"'{font_dir}': {', '.join(missing)}. Reinstall matplotlib or pass font_dir."
        )
    return paths


def _load_font(path, size):
    # The basic layout engine keeps renderings identical whether or not libraqm is installed.
    return ImageFont.truetype(str(path), size=size, layout_engine=ImageFont.Layout.BASIC)


def _candidates() -> list[str]:
    chars = (chr(c) for _, block in _SCRIPTS for c in block)
    return [c for c in chars if unicodedata.category(c) in _CATEGORIES]


def _covered(chars, paths) -> list[str]:
    """The characters that every font maps to a real glyph (not .notdef) in its cmap."""
    from fontTools.ttLib import TTFont  # a dependency of matplotlib

    keep = set(chars)
    for path in paths:
        with TTFont(str(path), lazy=True) as font:
            cmap = font.getBestCmap()
            keep &= {c for c in chars if cmap.get(ord(c), ".notdef") != ".notdef"}
    return [c for c in chars if c in keep]


class _Renderer:
    """Draws clean, centred glyphs on a square-pixel canvas `ss` times the image size."""

    def __init__(self, paths, hw):
        self.hw = hw
        self.ss = max(1, math.ceil(_MIN_CANVAS / min(hw)))
        self.canvas = (hw[1] * self.ss, hw[0] * self.ss)  # PIL's (width, height)
        side = min(hw) * self.ss
        self.limit = _MAX_EXTENT * side
        self.fonts = [_load_font(p, max(1, round(_EM * side))) for p in paths]

    def clean(self, char, font_index) -> Image.Image:
        """The glyph, white on black, at canvas resolution."""
        font = self.fonts[font_index]
        left, top, right, bottom = font.getbbox(char, anchor="ls")
        extent = max(right - left, bottom - top)
        if extent > self.limit:
            font = font.font_variant(size=max(1, int(font.size * self.limit / extent)))
            left, top, right, bottom = font.getbbox(char, anchor="ls")
        img = Image.new("L", self.canvas, 0)
        origin = (self.canvas[0] / 2 - (left + right) / 2, self.canvas[1] / 2 - (top + bottom) / 2)
        ImageDraw.Draw(img).text(origin, char, fill=255, font=font, anchor="ls")
        return img

    def jittered(self, clean: Image.Image, angle_deg, scale, dx, dy) -> np.ndarray:
        """Rotate and scale about the centre, shift by (dx, dy) image pixels, downsample."""
        if angle_deg or scale != 1.0 or dx or dy:
            cx, cy = self.canvas[0] / 2, self.canvas[1] / 2
            tx, ty = cx + dx * self.ss, cy + dy * self.ss
            # PIL maps each output pixel back to an input pixel: the inverse of
            # out = scale * R(angle) (in - centre) + centre + shift.
            a = math.radians(angle_deg)
            cos, sin = math.cos(a) / scale, math.sin(a) / scale
            clean = clean.transform(
                self.canvas,
                Image.Transform.AFFINE,
                (cos, sin, cx - cos * tx - sin * ty, -sin, cos, cy + sin * tx - cos * ty),
                resample=Image.Resampling.BILINEAR,
            )
        if self.ss > 1:
            clean = clean.reduce(self.ss)
        return np.asarray(clean, np.uint8)


def render_clean(chars, image_size=_REFERENCE_SIZE, font_dir=None) -> np.ndarray:
    """Clean (unjittered) renderings of characters in the 16 fonts, white on black.

    Args:
        chars: the characters to draw.
        image_size: int or (height, width). Defaults to `32`.
        font_dir: see `font_paths`. Defaults to `None`.

    Returns:
        float32 array [len(chars), 16, H, W] in [0, 1], fonts in the order of `FONT_FILES`.
    """
    renderer = _Renderer(list(font_paths(font_dir).values()), image_hw(image_size))
    out = np.zeros((len(chars), len(renderer.fonts), *renderer.hw), np.float32)
    for i, char in enumerate(chars):
        for f in range(len(renderer.fonts)):
            out[i, f] = renderer.jittered(renderer.clean(char, f), 0.0, 1.0, 0.0, 0.0) / 255.0
    return out


def _near_identical(renderings) -> np.ndarray:
    """Boolean [n, n]: pairs whose clean renderings coincide in at least half the fonts."""
    n, n_fonts = renderings.shape[:2]
    flat = renderings.reshape(n, n_fonts, -1).transpose(1, 0, 2).astype(np.float64)
    gram = flat @ flat.transpose(0, 2, 1)
    sq = np.einsum("fii->fi", gram)
    dist2 = np.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 0.0)
    rel = np.sqrt(dist2 / np.maximum(np.maximum(sq[:, :, None], sq[:, None, :]), 1e-12))
    votes = (rel < _NEAR_DISTANCE).sum(axis=0)
    return votes >= math.ceil(_NEAR_FONT_FRACTION * n_fonts)


@functools.lru_cache(maxsize=4)
def _classes_cached(font_dir_key):
    paths = list(font_paths(font_dir_key).values())
    chars = _covered(_candidates(), paths)
    renderings = render_clean(chars, _REFERENCE_SIZE, font_dir_key)
    inked = renderings.reshape(len(chars), len(paths), -1).max(axis=-1).min(axis=-1) > 0
    chars = [c for c, ok in zip(chars, inked) if ok]
    renderings = renderings[inked]
    near = _near_identical(renderings)
    # Union-find over near-identical pairs; the root is the lowest index, i.e. the first in
    # script order (digits, Latin, Greek, Cyrillic).
    parent = list(range(len(chars)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(near, 1))):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    dropped = {}
    for i, c in enumerate(chars):
        if root(i) != i:
            dropped.setdefault(chars[root(i)], []).append(c)
    kept = tuple(c for i, c in enumerate(chars) if root(i) == i)
    return kept, {k: tuple(v) for k, v in dropped.items()}


def glyph_classes(font_dir=None) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The characters that are classes, and those dropped as coinciding with a kept one.

    Computed once per process and font folder (about a second).

    Args:
        font_dir: see `font_paths`. Defaults to `None`.

    Returns:
        (classes, dropped): classes in script order; dropped maps a kept character to the
        characters dropped for coinciding with it, e.g. `{"A": ("Α", "А"), ...}`.
    """
    key = None if font_dir is None else str(Path(font_dir).resolve())
    kept, dropped = _classes_cached(key)
    return kept, dict(dropped)


def preprocessing(image_size=32, invert=False):
    """The glyphs' record: rendered at `image_size` (so identity there), grey, Lanczos for
    images of other sizes at serving time."""
    from dnc_keras.preprocessing import Preprocessing

    return Preprocessing(size=image_hw(image_size), channels=1, fit="stretch",
                         kernel="lanczos", invert=bool(invert))


def load_glyphs(
    image_size=32,
    seed=0,
    train_classes="standard",
    images_per_font=2,
    rotation=10.0,
    shift=2.0,
    scale=0.1,
    invert=False,
    font_dir=None,
    cache=True,
) -> MetricDataset:
    """Rendered glyphs: one class per character, one image per font and jitter draw.

    A random half of the characters (fixed by `seed`, rounded up) trains, the rest tests. Each
    class has 16 x `images_per_font` images; each image draws its own rotation, scale and shift
    uniformly in the given ranges. The same arguments give the same arrays.

    Args:
        image_size: int or (height, width). Defaults to `32`.
        seed: int, fixes the split and the jitter. Defaults to `0`.
        train_classes: `"standard"` (half the characters train, half test) or `"all"` (every
            character trains, test is empty: for a model to deploy). Defaults to `"standard"`.
        images_per_font: images of each character in each font. Defaults to `2`.
        rotation: largest rotation, degrees either way. Defaults to `10.0`.
        shift: largest shift, image pixels either way along each axis. Defaults to `2.0`.
        scale: largest relative change of size, either way. Defaults to `0.1`.
        invert: `False` draws white glyphs on black (strokes bright, like the inverted Omniglot
            images), `True` black on white. Defaults to `False`.
        font_dir: see `font_paths`. Defaults to `None`.
        cache: read the drawings from `dnc_keras.datasets.cache` when an earlier process drew
            them with these arguments, fonts and code, else store them there (drawing takes
            seconds; reading, a fraction). Defaults to `True`.

    Returns:
        MetricDataset named `"glyphs"`, images [N, H, W, 1]; class names are the characters.
        `info` holds `fonts`, `dropped` (see `glyph_classes`), `font_ids_train` and
        `font_ids_test` (the font index of every image), the jitter ranges, `render_seconds`
        and `from_cache`.

    Example:
        >>> ds = load_glyphs(seed=0)
        >>> ds.x_train.shape[1:]
        (32, 32, 1)
    """
    start = time.perf_counter()
    check_train_classes(train_classes)
    hw = image_hw(image_size)
    if not isinstance(images_per_font, (int, np.integer)) or images_per_font < 1:
        raise ValueError(f"images_per_font must be an int >= 1. Received: {images_per_font!r}")
    for arg, value, upper in (("rotation", rotation, 180.0), ("shift", shift, math.inf),
                              ("scale", scale, 1.0)):
        if not 0 <= value < upper:
            raise ValueError(f"{arg} must be in [0, {upper}). Received: {arg}={value!r}")
    paths = font_paths(font_dir)
    # seed=None draws fresh entropy each time: nothing to read back.
    key = {"image_size": [int(v) for v in hw], "seed": None if seed is None else int(seed),
           "images_per_font": int(images_per_font),
           "rotation": float(rotation), "shift": float(shift), "scale": float(scale),
           "fonts": [file_fingerprint(p) for p in paths.values()], "code": _code_version()}
    split_seq, jitter_seq = np.random.SeedSequence(seed).spawn(2)
    drawn, from_cache = cached_arrays(
        "glyphs", key, lambda: _draw(paths, font_dir, hw, jitter_seq, images_per_font,
                                     rotation, shift, scale),
        use_cache=cache and seed is not None)
    chars = [str(c) for c in drawn["chars"]]
    dropped = {k: tuple(v) for k, v in json.loads(str(drawn["dropped"])).items()}

    order = np.random.default_rng(split_seq).permutation(len(chars))
    if train_classes == "all":
        train_idx, test_idx = np.arange(len(chars)), np.array([], int)
    else:
        n_train = (len(chars) + 1) // 2
        train_idx, test_idx = np.sort(order[:n_train]), np.sort(order[n_train:])

    from dnc_keras.preprocessing import transform_arrays

    n_fonts = len(paths)
    record = preprocessing(hw, invert)
    # The record's transform, in batches of every class at once (one class per call costs
    # seconds of eager TensorFlow ops).
    images = transform_arrays(drawn["renders"].reshape(-1, *hw, 1), record).reshape(
        drawn["renders"].shape)
    images_by_class, renders, font_ids = {}, {}, {}
    for i in np.concatenate([train_idx, test_idx]):
        renders[chars[i]] = drawn["renders"][i]
        images_by_class[chars[i]] = images[i]
        font_ids[chars[i]] = np.repeat(np.arange(n_fonts, dtype=np.int32), images_per_font)

    train_names = [chars[i] for i in train_idx]
    test_names = [chars[i] for i in test_idx]
    info = {
        "source": "fonts shipped with matplotlib (mpl-data/fonts/ttf), drawn with Pillow",
        "fonts": tuple(paths),
        "font_ids_train": np.concatenate([font_ids[c] for c in train_names]),
        "font_ids_test": np.concatenate(
            [font_ids[c] for c in test_names] or [np.zeros(0, np.int32)]
        ),
        "dropped": dropped,
        "codepoints": {c: f"U+{ord(c):04X} {unicodedata.name(c)}" for c in chars},
        "images_per_font": int(images_per_font),
        "rotation": float(rotation),
        "shift": float(shift),
        "scale": float(scale),
        "invert": bool(invert),
        "seed": seed,
    }
    dataset = assemble("glyphs", images_by_class, train_names, test_names, info, record, renders)
    info["render_seconds"] = time.perf_counter() - start
    info["from_cache"] = from_cache
    return dataset


def _draw(paths, font_dir, hw, jitter_seq, images_per_font, rotation, shift, scale):
    """{"chars", "dropped" (JSON), "renders" uint8 [chars, fonts x images_per_font, H, W, 1]}:
    every class drawn, whatever the split."""
    chars, dropped = glyph_classes(font_dir)
    n_fonts = len(paths)
    # Jitter is drawn for every (character, font, copy) whatever the split, so an image does not
    # change when train_classes does.
    rng = np.random.default_rng(jitter_seq)
    draws = (len(chars), n_fonts, images_per_font)
    angles = rng.uniform(-rotation, rotation, draws)
    scales = rng.uniform(1.0 - scale, 1.0 + scale, draws)
    shifts = rng.uniform(-shift, shift, (*draws, 2))
    renderer = _Renderer(list(paths.values()), hw)
    renders = np.zeros((len(chars), n_fonts, images_per_font, *hw), np.uint8)
    for i, char in enumerate(chars):
        for f in range(n_fonts):
            clean = renderer.clean(char, f)
            for k in range(images_per_font):
                dx, dy = shifts[i, f, k]
                renders[i, f, k] = renderer.jittered(clean, angles[i, f, k], scales[i, f, k],
                                                     dx, dy)
    return {"chars": np.array(chars), "dropped": np.array(json.dumps(dropped)),
            "renders": renders.reshape(len(chars), -1, *hw, 1)}


@functools.lru_cache(maxsize=1)
def _code_version():
    """This module's source and the drawing libraries' versions: a change to either draws anew
    rather than reading an older drawing from the cache. Read at the first load, not at
    import."""
    import hashlib

    import PIL

    with open(__file__, "rb") as f:
        source = hashlib.sha256(f.read()).hexdigest()[:16]
    return [source, PIL.__version__, ImageFont.core.freetype2_version, np.__version__]
