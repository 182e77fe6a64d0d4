"""Small shared helpers: the compilation cache, writing outputs atomically, image grids, the
workdir's checks and lock."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time

import jax
import numpy as np

COMPILATION_CACHE_ENV = "SCORE_JAX_COMPILATION_CACHE"


def default_compilation_cache_dir() -> str:
    """`$SCORE_JAX_COMPILATION_CACHE` if set, else `<user cache dir>/score_jax/jax` (the user
    cache dir is `$XDG_CACHE_HOME`, default `~/.cache`)."""
    if COMPILATION_CACHE_ENV in os.environ:
        return os.environ[COMPILATION_CACHE_ENV]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "score_jax", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turns on jax's persistent compilation cache in `path` (None: the default dir, '': off) for
    every compilation; call before the first one. Returns the directory in use, or None."""
    path = default_compilation_cache_dir() if path is None else path
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path`, renamed onto it only if the block succeeds (else
    `path` is untouched and no partial file is left)."""
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


def save_samples(samples: np.ndarray, path_stem: str, **arrays) -> None:
    """`samples` (B, H, W, C) -> `<stem>.npz` (float32 clipped to [0, 1], and `arrays`) and
    `<stem>.png` (a grid, nearest-neighbour upscaled to about 512 px), each atomically."""
    from PIL import Image

    samples = np.clip(np.asarray(samples, np.float32), 0.0, 1.0)
    with atomic_path(path_stem + ".npz") as tmp:
        np.savez_compressed(tmp, samples=samples, **arrays)
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


LOCK_FILE = "train.lock"


def _holder(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds `W/train.lock` (JSON {host, pid, since}) for the block; RuntimeError naming the host
    and pid of a live holder. A dead holder of this host is taken over with a warning."""
    path = os.path.join(workdir, LOCK_FILE)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    fd, mine = tempfile.mkstemp(dir=workdir, prefix="." + LOCK_FILE + ".")
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        while True:
            try:
                os.link(mine, path)  # atomic: fails if a lock exists
                break
            except FileExistsError:
                pass
            holder = _holder(path)
            if holder is None:
                continue  # released meanwhile
            if holder.get("host") != me["host"] or _alive(int(holder.get("pid", -1))):
                raise RuntimeError(
                    f"--workdir={workdir!r} is in use by another training run: process "
                    f"{holder.get('pid')} on host {holder.get('host')} (since "
                    f"{holder.get('since')}; {path}). Wait for it to end or use another workdir; "
                    f"if that process is gone, delete {path}")
            # Stale: its process is gone. Takers of one host serialise on the guard file, and
            # remove the lock only if it is still the stale one they read.
            with open(path + ".guard", "a") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)
                if _holder(path) == holder:
                    os.remove(path)
                    logging.getLogger(__name__).warning(
                        "took over %s from process %s on host %s, which is no longer running",
                        path, holder.get("pid"), holder.get("host"))
    finally:
        os.remove(mine)
    try:
        yield
    finally:
        if _holder(path) == me:
            os.remove(path)


def _jsonable(value):
    """A JSON-able form of a settings value: arrays as nested lists, a path to an existing file
    as {'path', 'sha1'} of its contents (so a grid file edited in place changes the key)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)) or np.isscalar(value) and isinstance(
            value, np.generic):
        return np.asarray(value).tolist()
    if (isinstance(value, str) and ("/" in value or "." in value)  # a path, not a name
            and os.path.isfile(os.path.expanduser(value))):
        with open(os.path.expanduser(value), "rb") as f:
            return {"path": value, "sha1": hashlib.sha1(f.read()).hexdigest()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def settings_key(settings: dict) -> str:
    """10 hex digits of the SHA-1 of `settings` (JSON, sorted keys; see `_jsonable`)."""
    text = json.dumps(_jsonable(settings), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def settings_dir(parent: str, prefix: str, settings: dict, write: bool = True) -> str:
    """`parent/<prefix>_<settings_key(settings)>`, the outputs made with `settings`; with `write`,
    `settings.json` there (atomically, if missing)."""
    path = os.path.join(parent, f"{prefix}_{settings_key(settings)}")
    record = os.path.join(path, "settings.json")
    if write and not os.path.exists(record):
        with atomic_path(record) as tmp, open(tmp, "w") as f:
            json.dump(_jsonable(settings), f, indent=1, sort_keys=True)
    return path


def tree_fingerprint(tree) -> str:
    """SHA-1 (16 hex digits) of a pytree of arrays: key paths, dtypes, shapes and bytes. Reads
    one local copy of each (replicated) array, so every process gets the same value."""
    digest = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        arr = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()[:16]
