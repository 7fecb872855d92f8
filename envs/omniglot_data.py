"""The Omniglot data: the official zips, md5-checked, decoded once into tensors; class splits; the 20 one-shot runs.

Files come from the public repository (github.com/brendenlake/omniglot, folder
``python/``, :data:`OMNIGLOT_FILES`). They are looked for in one folder: the
``root`` argument, else ``$METARL_OMNIGLOT_DIR``, else ``~/.cache/metarl/omniglot``.
Nothing is fetched unless ``download=True``; a missing file is otherwise a
``FileNotFoundError`` that says where to put it.

Every zip is md5-checked before it is read. Its PNGs (105x105, black strokes on
white) are read straight from the zip, converted to greyscale, resized with
Pillow's LANCZOS filter and inverted, so a stroke is 1.0 and the background 0.0.
The decoded images are cached as a ``.pt`` file keyed by zip, md5 and image
size; later loads read the cache and never touch Pillow.

The class splits (:func:`load_split`) are disjoint sets of characters, so
held-out tasks are held out by construction. The one-shot runs
(:func:`load_one_shot_runs`, :func:`score_one_shot_runs`) are the 20-way
within-alphabet benchmark of Lake, Salakhutdinov and Tenenbaum (2015).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any
from urllib.request import urlopen

import numpy as np
import torch
from PIL import Image

from metarl.files import atomic_write
from metarl.validation import check_positive_int

OMNIGLOT_FILES: Mapping[str, str] = MappingProxyType(
    {
        "images_background": "68d2efa1b9178cc56df9314c21c6e718",  # 30 alphabets, 964 characters
        "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",  # 20 alphabets, 659 characters
        "images_background_small1": "e704a628b5459e08445c13499850abc4",  # 5 alphabets, 136 characters
        "images_background_small2": "b75a71a51d3b13f821f212756fe481fd",  # 5 alphabets, 156 characters
        "all_runs": "e8996daecdf12afeeb4a53a179f06b19",  # the 20 one-shot runs
    }
)
"""Each official zip's name (without ``.zip``) -> its md5."""

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
ENV_VAR = "METARL_OMNIGLOT_DIR"
DEFAULT_ROOT = Path("~/.cache/metarl/omniglot")

SPLIT_NAMES = ("background", "minimal", "minimal1", "minimal2", "vinyals")
VINYALS_NUM_TRAIN = 1200
VINYALS_SEED = 1

_MINIMAL_FILES = {
    "minimal": ("images_background_small1", "images_background_small2"),
    "minimal1": ("images_background_small1",),
    "minimal2": ("images_background_small2",),
}
_CACHE_VERSION = 1  # bump when decoding changes, so stale caches are never read
_CHUNK = 1 << 20


# --- Data types -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotClasses:
    """Character classes, one row per class: ``images[i]`` are the drawings of ``alphabets[i]/characters[i]``.

    ``images`` is ``(C, D, H, W)`` float32 in ``[0, 1]`` with strokes 1.0 and
    background 0.0; ``D`` is the drawers per character (20 in the official
    files), in the sorted order of their file names. A class is identified by
    its ``(alphabet, character)`` name, unique within one ``OmniglotClasses``.
    """

    images: torch.Tensor
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or not self.images.is_floating_point():
            raise ValueError(f"images must be a (C, D, H, W) float tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        if not len(self.alphabets) == len(self.characters) == self.images.shape[0]:
            raise ValueError(
                f"{self.images.shape[0]} image rows but {len(self.alphabets)} alphabets and {len(self.characters)} characters"
            )
        names = self.names
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"class names must be unique, got duplicates {duplicates[:5]}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def names(self) -> tuple[str, ...]:
        """``"alphabet/character"`` per class."""
        return tuple(f"{a}/{c}" for a, c in zip(self.alphabets, self.characters, strict=True))

    def select(self, indices: Sequence[int] | torch.Tensor) -> OmniglotClasses:
        """The classes at ``indices`` (ints, or a boolean mask over the classes), in that order."""
        index = torch.as_tensor(indices).reshape(-1)
        if index.dtype == torch.bool:
            if index.numel() != len(self):
                raise ValueError(f"a boolean mask must have one entry per class ({len(self)}), got {index.numel()}")
            index = index.nonzero().squeeze(1)
        elif index.numel() == 0:
            index = index.long()  # torch.as_tensor([]) is float
        elif index.is_floating_point() or index.is_complex():
            raise TypeError(f"select needs integer indices or a boolean mask, got {index.dtype}")
        rows = index.tolist()
        return OmniglotClasses(
            self.images[index.to(self.images.device)],
            tuple(self.alphabets[i] for i in rows),
            tuple(self.characters[i] for i in rows),
        )

    @classmethod
    def cat(cls, parts: Sequence[OmniglotClasses]) -> OmniglotClasses:
        """The classes of all ``parts`` in order; a name seen before is dropped (its images must then be equal).

        This is the union of sets that share classes: Greek and Latin are in both
        minimal sets, with the same files.
        """
        if not parts:
            raise ValueError("cannot concatenate an empty sequence of OmniglotClasses")
        shapes = {tuple(p.images.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"cannot concatenate classes with different (drawers, H, W): {sorted(shapes)}")
        seen: dict[str, torch.Tensor] = {}
        images, alphabets, characters = [], [], []
        for part in parts:
            for i, name in enumerate(part.names):
                if name in seen:
                    if not torch.equal(seen[name], part.images[i]):
                        raise ValueError(f"class {name} appears twice with different images")
                    continue
                seen[name] = part.images[i]
                images.append(part.images[i])
                alphabets.append(part.alphabets[i])
                characters.append(part.characters[i])
        stacked = torch.stack(images) if images else parts[0].images[:0]
        return cls(stacked, tuple(alphabets), tuple(characters))

    def to(self, device: torch.device | str) -> OmniglotClasses:
        return dataclasses.replace(self, images=self.images.to(device))


@dataclasses.dataclass(frozen=True, eq=False)
class OneShotRun:
    """One run of the 20-way one-shot task: one training image per class and test images to classify.

    ``train_images`` is ``(N, H, W)``, ``test_images`` ``(M, H, W)`` (``N = M = 20``
    in the official runs), both float32 with strokes 1.0. ``answers[j]`` is the
    index into ``train_images`` of the class of ``test_images[j]``. Images are
    in the sorted order of their file names (``classNN.png``, ``itemNN.png``).
    """

    name: str
    train_images: torch.Tensor
    test_images: torch.Tensor
    answers: torch.Tensor

    def __post_init__(self) -> None:
        train, test = self.train_images, self.test_images
        if train.dim() != 3 or test.dim() != 3 or test.shape[1:] != train.shape[1:]:
            raise ValueError(
                f"{self.name}: train and test images must be (N, H, W) and (M, H, W), "
                f"got {tuple(train.shape)} and {tuple(test.shape)}"
            )
        n, m = train.shape[0], test.shape[0]
        if self.answers.shape != (m,) or self.answers.dtype != torch.long:
            raise ValueError(
                f"{self.name}: answers must be a ({m},) long tensor, got {self.answers.dtype} {tuple(self.answers.shape)}"
            )
        if n == 0 or m == 0:
            raise ValueError(f"{self.name}: a run needs training and test images, got {n} and {m}")
        if not (0 <= int(self.answers.min()) and int(self.answers.max()) < n):
            raise ValueError(f"{self.name}: answers must index the {n} training images")

    def to(self, device: torch.device | str) -> OneShotRun:
        move = {k: getattr(self, k).to(device) for k in ("train_images", "test_images", "answers")}
        return dataclasses.replace(self, **move)


@dataclasses.dataclass(frozen=True)
class OneShotScore:
    """Error on the one-shot runs, as Lake et al. (2015) report it.

    ``run_errors`` holds each run's fraction of test images misclassified;
    ``mean_error_percent`` is their mean, in percent (the figure of the paper
    and of the official ``demo_classification.py``).
    """

    run_errors: tuple[float, ...]
    mean_error_percent: float


# --- Locating, downloading and checking the files ------------------------------------


def omniglot_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder the zips are looked for in: ``root``, else ``$METARL_OMNIGLOT_DIR``, else ``~/.cache/metarl/omniglot``."""
    return _resolve_root(root)[0]


def _resolve_root(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The folder and, for error messages, where the choice came from."""
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), f"from ${ENV_VAR}"
    return DEFAULT_ROOT.expanduser(), f"the default folder: neither root nor ${ENV_VAR} was given"


def locate_files(names: Sequence[str], root: str | os.PathLike[str] | None = None, download: bool = False) -> dict[str, Path]:
    """The paths of the zips ``names`` (keys of :data:`OMNIGLOT_FILES`), each md5-checked.

    Missing files are downloaded into the root folder if ``download``; otherwise
    they raise ``FileNotFoundError`` naming all of them at once.
    """
    unknown = [n for n in names if n not in OMNIGLOT_FILES]
    if unknown:
        raise ValueError(f"unknown Omniglot file(s) {unknown}; the official ones are {sorted(OMNIGLOT_FILES)}")
    folder, source = _resolve_root(root)
    paths = {n: folder / f"{n}.zip" for n in names}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing and not download:
        listed = ", ".join(f"{n}.zip" for n in missing)
        raise FileNotFoundError(
            f"Omniglot file(s) {listed} not found in {folder} ({source}). Put the official zips from "
            f"https://github.com/brendenlake/omniglot/tree/master/python there, point root= or ${ENV_VAR} "
            "at a folder that holds them, or pass download=True to fetch them (needs internet)."
        )
    for n in missing:
        _download(n, paths[n])
    for n, path in paths.items():
        verify_md5(path, OMNIGLOT_FILES[n])
    return paths


def _download(name: str, path: Path) -> None:
    """Fetch ``name``.zip into ``path`` atomically; a body with the wrong md5 never lands on disk."""
    url = OMNIGLOT_URL.format(name=name)
    expected = OMNIGLOT_FILES[name]

    def write(f: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with urlopen(url, timeout=60) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != expected:
            raise ValueError(f"downloaded {url} has md5 {digest.hexdigest()}, expected {expected}; nothing was written")

    try:
        atomic_write(path, write)
    except OSError as err:
        err.add_note(f"while downloading {url} to {path}")
        raise


def file_md5(path: str | os.PathLike[str]) -> str:
    """The md5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike[str], expected: str) -> None:
    """Raise ``ValueError`` naming the file and both digests unless ``path`` has md5 ``expected``."""
    actual = file_md5(path)
    if actual != expected:
        name = Path(path).stem
        raise ValueError(
            f"{path} has md5 {actual}, expected {expected}: it is corrupt or not the official {Path(path).name}. "
            f"Delete it and download it again (download=True fetches {OMNIGLOT_URL.format(name=name)})."
        )


# --- Decoding and caching -------------------------------------------------------------


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """One PNG as an ``(image_size, image_size)`` uint8 ink map: 255 on a stroke, 0 on the background."""
    with Image.open(io.BytesIO(data)) as img:
        # Converted to greyscale first: Pillow resizes mode "1" (bilevel) images with NEAREST whatever the filter asked.
        grey = img.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _ink_to_float(ink: torch.Tensor) -> torch.Tensor:
    """uint8 ink -> float32 in [0, 1]; the one conversion used for fresh and cached data alike."""
    return ink.to(torch.float32) / 255.0


def _default_cache_dir(folder: Path) -> Path:
    """``<root>/cache``, or the user cache when the root is read-only (a shared data folder).

    Read-only means not writable by us or without its owner-write bit: root may
    write anywhere, but a folder marked ``r-x`` asks not to be written into.
    """
    if folder.is_dir() and not (os.access(folder, os.W_OK) and folder.stat().st_mode & stat.S_IWUSR):
        return DEFAULT_ROOT.expanduser() / "cache"
    return folder / "cache"


def _cached(
    path: Path, md5: str, image_size: int, cache_dir: str | os.PathLike[str] | None, build: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``build()``'s result for this zip and size, from the cache if there, else built and cached atomically."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir(path.parent)
    cache = folder / f"{path.stem}-{md5}-{image_size}px-v{_CACHE_VERSION}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception as err:
            err.add_note(f"while reading the Omniglot cache {cache}; delete it to decode the zip again")
            raise
    data = build()
    atomic_write(cache, lambda f: torch.save(data, f))
    return data


def _read_classes_zip(path: Path, image_size: int) -> dict[str, Any]:
    """Decode ``<name>/<alphabet>/<character>/<drawing>.png`` into uint8 ink ``(C, D, H, W)``, classes sorted by name."""
    groups: dict[tuple[str, str], list[str]] = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if member.endswith("/"):
                continue
            parts = member.split("/")
            if len(parts) != 4 or parts[0] != path.stem or not parts[3].endswith(".png"):
                layout = f"{path.stem}/<alphabet>/<character>/<drawing>.png"
                raise ValueError(f"{path}: unexpected member {member!r}; an Omniglot images zip holds {layout}")
            groups.setdefault((parts[1], parts[2]), []).append(member)
        if not groups:
            raise ValueError(f"{path} holds no PNG drawings")
        keys = sorted(groups)
        counts = {k: len(v) for k, v in groups.items()}
        if len(set(counts.values())) > 1:
            lo, hi = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
            raise ValueError(
                f"{path}: characters differ in drawings: {'/'.join(lo)} has {counts[lo]}, {'/'.join(hi)} has {counts[hi]}"
            )
        ink = torch.empty((len(keys), counts[keys[0]], image_size, image_size), dtype=torch.uint8)
        for i, key in enumerate(keys):
            for j, member in enumerate(sorted(groups[key])):
                ink[i, j] = torch.from_numpy(_decode_png(zf.read(member), image_size))
    return {"ink": ink, "alphabets": [k[0] for k in keys], "characters": [k[1] for k in keys]}


def _load_classes(path: Path, image_size: int, cache_dir: str | os.PathLike[str] | None) -> OmniglotClasses:
    data = _cached(path, OMNIGLOT_FILES[path.stem], image_size, cache_dir, lambda: _read_classes_zip(path, image_size))
    return OmniglotClasses(_ink_to_float(data["ink"]), tuple(data["alphabets"]), tuple(data["characters"]))


def load_classes(
    name: str,
    root: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OmniglotClasses:
    """Every character class of one images zip (e.g. ``"images_background_small1"``), sorted by (alphabet, character).

    Args:
        name: a key of :data:`OMNIGLOT_FILES` other than ``"all_runs"``.
        root: the folder holding the zips (default: ``$METARL_OMNIGLOT_DIR``, else ``~/.cache/metarl/omniglot``).
        image_size: side of the square images after resizing (the PNGs are 105x105).
        download: fetch the zip into ``root`` if it is missing.
        cache_dir: where the decoded tensors are cached (default ``<root>/cache``, or
            ``~/.cache/metarl/omniglot/cache`` when ``root`` is read-only or has no owner-write bit).
    """
    if name == "all_runs":
        raise ValueError("all_runs.zip holds the one-shot runs, not classes; use load_one_shot_runs")
    check_positive_int("image_size", image_size)
    return _load_classes(locate_files([name], root, download)[name], image_size, cache_dir)


# --- Splits ------------------------------------------------------------------------------


def _sort_by_name(classes: OmniglotClasses) -> OmniglotClasses:
    order = sorted(range(len(classes)), key=lambda i: (classes.alphabets[i], classes.characters[i]))
    return classes.select(order)


def split_every_fifth(classes: OmniglotClasses) -> tuple[OmniglotClasses, OmniglotClasses]:
    """(train, test): the test classes are every 5th character of each alphabet in sorted order (index % 5 == 4).

    The rule of the minimal splits. It depends only on an alphabet's own
    character list, so a class falls on the same side in every set holding its
    alphabet (Greek and Latin in both minimal sets), and about a fifth of every
    alphabet is held out.
    """
    classes = _sort_by_name(classes)
    position: dict[str, int] = {}
    held_out = []
    for alphabet in classes.alphabets:  # sorted, so each alphabet's characters come in order
        index = position.get(alphabet, 0)
        position[alphabet] = index + 1
        held_out.append(index % 5 == 4)
    mask = torch.tensor(held_out, dtype=torch.bool)
    return classes.select(~mask), classes.select(mask)


def with_rotations(classes: OmniglotClasses) -> OmniglotClasses:
    """Each class, then the same classes rotated by 90, 180 and 270 degrees (``torch.rot90``, counter-clockwise).

    Rotated classes are new classes named ``<character>_rot90`` etc.; the order is
    all unrotated classes, then all rotated by 90, and so on.
    """
    images = torch.cat([torch.rot90(classes.images, k, dims=(-2, -1)) for k in range(4)])
    characters = classes.characters + tuple(f"{c}_rot{90 * k}" for k in (1, 2, 3) for c in classes.characters)
    return OmniglotClasses(images, classes.alphabets * 4, characters)


def split_vinyals(
    classes: OmniglotClasses, num_train: int = VINYALS_NUM_TRAIN, seed: int = VINYALS_SEED
) -> tuple[OmniglotClasses, OmniglotClasses]:
    """(train, test) by the rule of Vinyals et al. (2016), used by the MAML and Reptile papers.

    The classes are sorted by (alphabet, character) and shuffled by
    ``torch.randperm`` from ``torch.Generator().manual_seed(seed)``; the first
    ``num_train`` are train, the rest test (each side kept in sorted order).
    Then every class gets its three rotations (:func:`with_rotations`), on the
    side of the character it rotates, so the split stays disjoint by character.
    """
    check_positive_int("num_train", num_train)
    if num_train >= len(classes):
        raise ValueError(f"num_train must be less than the {len(classes)} classes, got {num_train}")
    classes = _sort_by_name(classes)
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed))
    train = order[:num_train].sort().values
    test = order[num_train:].sort().values
    return with_rotations(classes.select(train)), with_rotations(classes.select(test))


def load_split(
    name: str,
    root: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    held_out: bool = True,
) -> tuple[OmniglotClasses, OmniglotClasses]:
    """(train classes, held-out test classes) of a named split; the two never share a character.

    Splits:

    - ``"background"``: Lake et al.'s split. Train: the 964 characters of
      images_background (30 alphabets); test: the 659 of images_evaluation
      (20 other alphabets).
    - ``"minimal"``, ``"minimal1"``, ``"minimal2"``: the union of
      images_background_small1 and small2 (242 characters: Greek and Latin are
      in both), small1 alone (136) or small2 alone (156). The test classes are
      every 5th character of each alphabet (:func:`split_every_fifth`), so N-way
      accuracy on held-out classes can be measured with the minimal files alone.
    - ``"vinyals"``: the 1623 characters of both full zips, 1200 train and 423
      test by a seeded shuffle (:func:`split_vinyals`, seed
      :data:`VINYALS_SEED`), each with its 3 rotations as extra classes: 4800
      train and 1692 test classes (about 410 MB as float32 at 28 px). The MAML
      code shuffled folders with Python's ``random.seed(1)`` (Reptile with its
      own seed), so the membership is the same kind of split but not the same
      characters as theirs.

    ``held_out=False`` returns every class of the split's background files as
    train and an empty test set: the training set of the one-shot benchmark
    (:func:`load_one_shot_runs`, whose runs come from the evaluation alphabets).
    For ``"background"`` the train set is then unchanged and images_evaluation
    is not needed; ``"vinyals"`` has no such set (its classes include the runs'
    alphabets) and raises ``ValueError``.

    The other arguments are those of :func:`load_classes`.
    """
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown Omniglot split {name!r}; valid: {', '.join(SPLIT_NAMES)}")
    if name == "vinyals" and not held_out:
        raise ValueError("held_out=False gives the one-shot benchmark's background classes; 'vinyals' has none")
    check_positive_int("image_size", image_size)
    if name in _MINIMAL_FILES:
        files = _MINIMAL_FILES[name]
    elif name == "background" and not held_out:
        files = ("images_background",)
    else:
        files = ("images_background", "images_evaluation")
    paths = locate_files(files, root, download)  # every missing file is named at once
    parts = [_load_classes(paths[f], image_size, cache_dir) for f in files]
    if name == "background":
        return parts[0], (parts[1] if held_out else parts[0].select([]))
    if name == "vinyals":
        return split_vinyals(OmniglotClasses.cat(parts))
    classes = _sort_by_name(OmniglotClasses.cat(parts))
    return split_every_fifth(classes) if held_out else (classes, classes.select([]))


# --- The one-shot runs -------------------------------------------------------------------


def _read_runs_zip(path: Path, image_size: int) -> dict[str, Any]:
    """Decode ``runNN/{training,test}/*.png`` and parse ``runNN/class_labels.txt``.

    Each line of class_labels.txt is ``runNN/test/itemJJ.png runNN/training/classII.png``:
    a test image and the training image of its class.
    """
    with zipfile.ZipFile(path) as zf:
        members = [m for m in zf.namelist() if not m.endswith("/")]
        runs = sorted({m.split("/")[0] for m in members})
        train_ink, test_ink, answers = [], [], []
        for run in runs:
            train = sorted(m for m in members if m.startswith(f"{run}/training/") and m.endswith(".png"))
            test = sorted(m for m in members if m.startswith(f"{run}/test/") and m.endswith(".png"))
            labels_file = f"{run}/class_labels.txt"
            if labels_file not in members:
                raise ValueError(f"{path}: {run} has no class_labels.txt")
            pairs = [line.split() for line in zf.read(labels_file).decode().splitlines() if line.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"{path}: {labels_file} must hold lines '<test image> <training image>'")
            truth = dict(pairs)
            if sorted(truth) != test or not set(truth.values()) <= set(train):
                raise ValueError(f"{path}: {labels_file} does not map {run}'s test images to its training images")
            answers.append([train.index(truth[t]) for t in test])
            train_ink.append(torch.stack([torch.from_numpy(_decode_png(zf.read(m), image_size)) for m in train]))
            test_ink.append(torch.stack([torch.from_numpy(_decode_png(zf.read(m), image_size)) for m in test]))
    if len({t.shape for t in train_ink}) != 1 or len({t.shape for t in test_ink}) != 1:
        raise ValueError(f"{path}: runs differ in their numbers of training or test images")
    return {
        "names": runs,
        "train_ink": torch.stack(train_ink),
        "test_ink": torch.stack(test_ink),
        "answers": torch.tensor(answers, dtype=torch.long),
    }


def load_one_shot_runs(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[OneShotRun]:
    """The 20 runs of the 20-way within-alphabet one-shot task (all_runs.zip), in run order.

    Each run draws 20 characters from one evaluation alphabet, with one
    training image per character and 20 test images by other drawers. The
    arguments are those of :func:`load_classes`.
    """
    check_positive_int("image_size", image_size)
    path = locate_files(["all_runs"], root, download)["all_runs"]
    data = _cached(path, OMNIGLOT_FILES["all_runs"], image_size, cache_dir, lambda: _read_runs_zip(path, image_size))
    train, test = _ink_to_float(data["train_ink"]), _ink_to_float(data["test_ink"])
    return [OneShotRun(name, train[r], test[r], data["answers"][r]) for r, name in enumerate(data["names"])]


def score_one_shot_runs(
    classify: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], runs: Sequence[OneShotRun]
) -> OneShotScore:
    """Error of ``classify`` on the runs, by the protocol of Lake et al. (2015).

    ``classify(train_images, test_images)`` gets a run's ``(N, H, W)`` and
    ``(M, H, W)`` images and returns ``(M,)`` integer indices into the training
    images. A run's error is its fraction of wrong test images; the score is
    the mean over runs, in percent (as the official ``demo_classification.py``).
    """
    if not runs:
        raise ValueError("score_one_shot_runs needs at least one run")
    errors = []
    for run in runs:
        predicted = torch.as_tensor(classify(run.train_images, run.test_images))
        n, m = run.train_images.shape[0], run.test_images.shape[0]
        if predicted.shape != (m,) or predicted.is_floating_point() or predicted.is_complex() or predicted.dtype == torch.bool:
            raise ValueError(
                f"classify must return ({m},) integer indices of training images for {run.name}, "
                f"got {predicted.dtype} {tuple(predicted.shape)}"
            )
        if not (0 <= int(predicted.min()) and int(predicted.max()) < n):
            raise ValueError(
                f"classify returned indices in [{int(predicted.min())}, {int(predicted.max())}] for {run.name}; "
                f"they must index its {n} training images"
            )
        errors.append(int((predicted != run.answers.to(predicted.device)).sum()) / m)
    return OneShotScore(tuple(errors), 100.0 * sum(errors) / len(errors))
