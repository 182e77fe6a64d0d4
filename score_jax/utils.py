"""Small shared helpers: writing outputs atomically, image grids."""
from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds.

    A crash or an exception leaves `path` untouched (the old file, or none) and no partial file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def image_grid(images: np.ndarray, pad: int = 1, cols: int | None = None) -> np.ndarray:
    """`images` (B, H, W, C) in [0, 1] -> one uint8 (rows, cols, C) grid, row by row, `cols`
    images wide (default: as square as possible)."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    b, h, w, c = images.shape
    cols = int(np.ceil(np.sqrt(b))) if cols is None else int(cols)
    rows = int(np.ceil(b / cols))
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i in range(b):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = images[i]
    return (grid * 255).round().astype(np.uint8)


def save_samples(samples: np.ndarray, path_stem: str) -> None:
    """`samples` (B, H, W, C) in [0, 1] -> `<stem>.npz` (float32 `samples`, clipped to [0, 1]) and
    `<stem>.png`, a grid scaled up (nearest neighbour) to about 512 px on its longer side. Each file
    is written atomically."""
    from PIL import Image

    samples = np.clip(np.asarray(samples, np.float32), 0.0, 1.0)
    with atomic_path(path_stem + ".npz") as tmp:
        np.savez_compressed(tmp, samples=samples)
    grid = image_grid(samples)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    scale = max(1, 512 // max(img.size))
    img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    with atomic_path(path_stem + ".png") as tmp:
        img.save(tmp, format="PNG")


def check_workdir(workdir: str) -> None:
    """Creates `workdir` and proves it writable, or raises a clear error."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"--workdir={workdir!r} is not writable: {e}") from None
