"""Native-resolution resize arithmetic shared by images, video frames and the Slow-Fast planner.

One LLM token covers a 28x28 pixel block: the ViT cuts 14x14 patches and the projector merges 2x2 of
them. So every image or frame fed to the model is resized, keeping its aspect ratio, to sides that are
multiples of 28, and its token count is (h/28)*(w/28).

Worked example: a 480x640 photo with at most 100 tokens (100*784 = 78,400 pixels). Rounded to 28s it
would be 476x644 = 17x23 = 391 tokens, too many; scale by beta = sqrt(480*640/78,400) = 1.979, so
h = floor(480/1.979/28)*28 = 224, w = floor(640/1.979/28)*28 = 308: 8x11 = 88 tokens <= 100.
"""

from __future__ import annotations

import math

#: Pixels per side of one LLM token (patch 14 x merge 2).
TOKEN_SIDE_PX = 28


def num_tokens(height: int, width: int, factor: int = TOKEN_SIDE_PX) -> int:
    """Tokens of a frame whose sides are multiples of ``factor``."""
    assert height % factor == 0 and width % factor == 0, (height, width)
    return (height // factor) * (width // factor)


def smart_resize(
    height: int,
    width: int,
    min_tokens: int,
    max_tokens: int,
    factor: int = TOKEN_SIDE_PX,
) -> tuple[int, int]:
    """The released keye-vl-utils resize rule (its ``smart_resize``), counted in tokens instead of pixels.

    Rounds each side to the nearest multiple of ``factor``; if that is over max_tokens, scales by
    beta = sqrt(h*w / max_px) and floors both sides; if under min_tokens, scales up and ceils both. Sides
    are at least ``factor``. It can land ABOVE max_tokens: when a side floors to 0 and is lifted back to
    ``factor`` (very elongated sources), and when ceiling both sides overshoots a narrow [min, max]
    window (sources smaller than min_tokens). ``fit_size`` removes that excess; the ``keye-release``
    Slow-Fast allocation keeps it, as the release does. Raises ValueError for a degenerate input.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} is over 200")
    max_px = max_tokens * factor * factor
    min_px = min_tokens * factor * factor
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    # The float expressions are the release's, operation for operation: x.9999... must floor the same way.
    if h * w > max_px:
        beta = math.sqrt(height * width / max_px)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_px:
        beta = math.sqrt(min_px / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return max(h, factor), max(w, factor)


def fit_size(
    height: int,
    width: int,
    min_tokens: int,
    max_tokens: int,
    factor: int = TOKEN_SIDE_PX,
) -> tuple[int, int]:
    """Aspect-preserving size with sides multiples of ``factor`` and min_tokens <= tokens <= max_tokens.

    ``smart_resize``, then the larger side shrinks by one block while the size is over max_tokens. So it
    never exceeds ``max_tokens`` (rounding goes down when shrinking), and it is monotone non-decreasing
    in ``max_tokens``, which the Slow-Fast binary search relies on. Raises ValueError for a degenerate
    input.
    """
    h, w = smart_resize(height, width, min_tokens, max_tokens, factor)
    max_px = max_tokens * factor * factor
    while h * w > max_px and max(h, w) > factor:
        if h >= w:
            h -= factor
        else:
            w -= factor
    return h, w
