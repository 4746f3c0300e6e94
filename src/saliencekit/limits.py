"""The stated limits of saliencekit: what it refuses by name instead of running out of memory or writing names
the file system rejects. Each is enforced where the input enters, with a one-line error that names the file or
option, the value and the limit.

>>> MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_CLASSES, MAX_NAME_LENGTH
(89478485, 2048, 1000, 100)
"""

from __future__ import annotations

#: Largest image file read, in pixels (width x height): Pillow's own decompression-bomb limit (about 9459 x 9459;
#: a 10,000 x 10,000 image is refused). Decoding one such image as floating point takes about 1 GB.
MAX_IMAGE_PIXELS = 89_478_485

#: Largest side, in pixels, of the images saliencekit makes: the model input (``--image-size``, also what a
#: checkpoint asks for) and generated data (``data synth --size``). Smallest model input: 8.
MAX_IMAGE_SIDE = 2048
MIN_IMAGE_SIDE = 8

#: Most classes (or labels of a multi-label task) a dataset may have for training, evaluation and checks: one
#: thousand, as ImageNet. A model file with more outputs can still be explained.
MAX_CLASSES = 1000

#: Fewest images a class needs for training (a multi-label task: positive images per label): one each for the
#: training, validation and test splits.
MIN_IMAGES_PER_CLASS = 3

#: Longest file or folder name, in characters, that saliencekit makes from a label, a class or an image name (an
#: explained image's folder, a method's figure); a longer name is cut and ends with a short hash of the whole, so
#: that different names stay different. File systems allow 255 bytes.
MAX_NAME_LENGTH = 100


def pixel_count_error(what: str, width: int, height: int) -> str | None:
    """The one-line refusal of an image of ``width`` x ``height`` pixels above :data:`MAX_IMAGE_PIXELS`, or None.

    >>> pixel_count_error("image big.png", 10_000, 10_000)[:60]
    'image big.png is 10000 x 10000 pixels (100,000,000), above t'
    """
    if width * height <= MAX_IMAGE_PIXELS:
        return None
    return (f"{what} is {width} x {height} pixels ({width * height:,}), above the limit of {MAX_IMAGE_PIXELS:,} "
            "pixels (saliencekit.limits.MAX_IMAGE_PIXELS, Pillow's decompression-bomb limit); downscale it first: "
            f"models take at most {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE}")
