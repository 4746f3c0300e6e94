"""The versions of the libraries that wrote a file, recorded in run directories, checkpoints and reports."""

from __future__ import annotations

import platform


def library_versions() -> dict[str, str]:
    """Python, saliencekit, torch, torchvision, numpy and matplotlib versions, in that order.

    >>> sorted(library_versions())
    ['matplotlib', 'numpy', 'python', 'saliencekit', 'torch', 'torchvision']
    """
    import matplotlib
    import numpy as np
    import torch
    import torchvision

    from saliencekit import __version__

    return {"python": platform.python_version(), "saliencekit": __version__, "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": np.__version__, "matplotlib": matplotlib.__version__}
