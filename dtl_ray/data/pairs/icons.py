"""The `icons` development pair: desktop icons drawn in five styles as source, a sixth style as
target. Real images of another kind than digits, made offline from Debian's icon themes.

- **Classes** are the icons' *context* folders in the freedesktop layout: `actions` (edit,
  go, media buttons), `apps`, `devices`, `mimetypes` (file types), `places` (folders,
  drives) and `status`: what an icon is for, which its drawing shows only in part.
- **Source** (labeled): the themes Oxygen (glossy, shaded), Tango (classic outlines), GNOME
  (the old gradient style), Faenza (glossy flat) and Moka (flat, round), at most
  `SOURCE_CAP` icons per theme and class. Heterogeneous like a real source: some styles are
  far closer to the target's than others.
- **Target**: elementary-xfce (flat, thin outlines; about 750 drawings), split into 5
  labeled icons per class, an unlabeled pool (35% of the rest), val (20%) and test (45%), by
  icon name, so no drawing is in two splits.

Each icon is its PNG rendition closest to 48 px in its theme (sizes read from the files),
scaled to 48 x 48, transparency kept (the pipeline flattens it onto black). Within a theme one
drawing is kept once, however many names link to it.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct

import numpy as np
from PIL import Image

from dtl_ray import storage

__all__ = ["CLASSES", "SOURCE_THEMES", "TARGET_THEME", "PACKAGES", "ROOT",
           "missing_themes", "theme_icons", "write_icons"]

CLASSES = ["actions", "apps", "devices", "mimetypes", "places", "status"]
SOURCE_THEMES = ["oxygen", "Tango", "gnome", "Faenza", "Moka"]
TARGET_THEME = "elementary-xfce"
PACKAGES = {"oxygen": "oxygen-icon-theme", "Tango": "tango-icon-theme",
            "gnome": "gnome-icon-theme", "Faenza": "faenza-icon-theme",
            "Moka": "moka-icon-theme", "elementary-xfce": "elementary-xfce-icon-theme"}
ROOT = "/usr/share/icons"
SIZE = 48
SOURCE_CAP = 160  # icons per source theme and class (apps would outnumber the rest 10:1)
SOURCE_VAL = 0.1  # of each source theme and class
TARGET_TRAIN = 5  # labeled target icons per class
TARGET_SHARES = {"unlabeled": 0.35, "val": 0.2}  # of the rest; test takes what is left
CONTEXT_ALIASES = {"mimes": "mimetypes"}


def missing_themes(root: str = ROOT) -> list[str]:
    """The pair's themes not installed under `root`."""
    return [t for t in [*SOURCE_THEMES, TARGET_THEME] if not os.path.isdir(os.path.join(root, t))]


def _png_width(path: str) -> int:
    """A PNG's width from its header (0 when the file is not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">I", head[16:20])[0] if head[:8] == b"\x89PNG\r\n\x1a\n" else 0


def _context(parts: list[str], wanted: set[str]) -> str | None:
    found = [CONTEXT_ALIASES.get(p, p) for p in parts]
    hits = [p for p in found if p in wanted]
    return hits[-1] if hits else None


def theme_icons(theme: str, classes: list[str], root: str = ROOT) -> dict[str, dict[str, str]]:
    """class -> {icon name: path of its PNG closest to SIZE px} of one theme; a drawing
    (file content) that two names or two contexts share is kept once, under the first name in
    sorted order."""
    best: dict[tuple[str, str], tuple[int, str]] = {}
    base = os.path.join(root, theme)
    for folder, _dirs, files in os.walk(base, followlinks=True):
        ctx = _context(os.path.relpath(folder, base).split(os.sep), set(classes))
        if ctx is None:
            continue
        for f in files:
            if not f.endswith(".png") or "@2x" in folder:
                continue
            path = os.path.join(folder, f)
            try:
                width = _png_width(path)
            except OSError:
                continue
            if width < 16:
                continue
            key = (ctx, f[:-4])
            score = abs(width - SIZE) + (SIZE if width < SIZE else 0)  # prefer >= SIZE
            if key not in best or (score, path) < best[key]:
                best[key] = (score, path)
    out: dict[str, dict[str, str]] = {c: {} for c in classes}
    seen: set[str] = set()
    for (ctx, name), (_s, path) in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        with open(path, "rb") as fh:
            digest = hashlib.sha1(fh.read()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out[ctx][name] = path
    return out


def _png48(path: str) -> bytes:
    im = Image.open(path).convert("RGBA").resize((SIZE, SIZE), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _split(names: list[str], shares: list[tuple[str, float]], rng) -> dict[str, list[str]]:
    """`names` shuffled and cut by `shares` (split, share of all); the rest goes to the
    split named with share None."""
    order = [names[i] for i in rng.permutation(len(names))]
    out, start = {}, 0
    for split, share in shares:
        n = len(order) - start if share is None else int(round(share))
        out[split] = order[start:start + n]
        start += n
    return out


def write_icons(out_uri: str, seed: int = 0, scale: float = 1.0, root: str = ROOT) -> dict:
    """Writes the icons pair to `<out_uri>/source` and `<out_uri>/target`.

    Args:
        out_uri: local folder or s3:// URI.
        seed: the source sample and every split follow from it.
        scale: multiplies the source cap and the target's unlabeled, val and test counts
            (the target keeps 5 labels per class).
        root: where the icon themes are installed.

    Returns:
        Counts per domain/split, and source train per theme.

    Raises:
        RuntimeError: a theme is not installed (it names the Debian packages to install).
    """
    missing = missing_themes(root)
    if missing:
        raise RuntimeError(f"the icons pair needs the icon themes {missing} under {root}: "
                           "apt-get install " + " ".join(PACKAGES[t] for t in missing))
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}

    def put(domain: str, split: str, cls: str, name: str, path: str) -> None:
        folder = "unknown" if split == "unlabeled" else cls
        storage.write_bytes(storage.join(out_uri, domain, split, folder, f"{name}.png"),
                            _png48(path))
        counts[f"{domain}/{split}"] = counts.get(f"{domain}/{split}", 0) + 1

    cap = max(2, int(round(SOURCE_CAP * scale)))
    for theme in SOURCE_THEMES:
        icons = theme_icons(theme, CLASSES, root)
        for cls in CLASSES:
            names = sorted(icons[cls])
            names = [names[i] for i in np.sort(rng.permutation(len(names))[:cap])]
            n_val = max(1, int(round(SOURCE_VAL * len(names))))
            parts = _split(names, [("val", n_val), ("train", None)], rng)
            for split, chosen in parts.items():
                for name in chosen:
                    put("source", split, cls, f"{theme}_{name}", icons[cls][name])
                if split == "train":
                    key = f"source/train/{theme}"
                    counts[key] = counts.get(key, 0) + len(chosen)
    icons = theme_icons(TARGET_THEME, CLASSES, root)
    for cls in CLASSES:
        names = sorted(icons[cls])
        rest = len(names) - TARGET_TRAIN
        shares = [("train", TARGET_TRAIN)] + [
            (s, max(1, share * rest * min(scale, 1.0))) for s, share in TARGET_SHARES.items()]
        test_n = max(1, int(round((1 - sum(TARGET_SHARES.values())) * rest * min(scale, 1.0))))
        parts = _split(names, shares + [("test", test_n)], rng)
        for split, chosen in parts.items():
            for name in chosen:
                # unlabeled names hide the class (the pipeline never reads it)
                label = (f"icon_{hashlib.sha1(name.encode()).hexdigest()[:10]}"
                         if split == "unlabeled" else f"{TARGET_THEME}_{name}")
                put("target", split, cls, label, icons[cls][name])
    return counts
