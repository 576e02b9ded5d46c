"""Offline recommendation data: the P5/VIP5 folder layout and raw Amazon 5-core review files.

In:  a P5/VIP5 folder (`sequential_data.txt`: lines "user item item ..." in time order;
     `datamaps.json` with `id2user`/`id2item`; optional `item_text_idgenrec.txt` ("ASIN phrase" per
     line, used as item titles); optional `exp_splits.json` (or a trusted `exp_splits.pkl`) with
     `train`/`val`/`test` review lists), or a raw `reviews_*_5.json.gz` file (one JSON review per
     line). Optional image features: an `.npy` of shape (N, F) plus `<stem>_ids.txt` with the ASIN of
     each row.
Out: `RecData`: users 1..U and items 1..I (the integers written into prompts), each user's item
     sequence in time order, explanations (user, item, text, rating, split), optional image features
     (I+1, F) with row 0 unused and a (I+1,) mask of items that have one.
Also: `reindex_items` (seeded random numbering, the default for headline results, because P5
numbering follows first appearance along the sequences and so leaks the answer), `leave_one_out`
(last item test, second-to-last validation) and `sample_negatives` (seeded, untouched items only).
"""

from __future__ import annotations

import gzip
import json
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

NUMBERINGS = ("random", "original")
EXPLANATION_SPLITS = ("train", "valid", "test")
TITLES_FILE = "item_text_idgenrec.txt"


@dataclass(frozen=True)
class DataConfig:
    """How to load one dataset.

    path: a P5/VIP5 folder or a `reviews_*_5.json.gz` file.
    numbering: "random" (seeded re-indexing of items; headline results) or "original".
    reindex_seed: seed of the random item numbering.
    core: k of the k-core filter re-applied to raw review files (users and items with >= k reviews).
    image_features: optional `.npy` (N, F); row ids are read from `<stem>_ids.txt` beside it.
    explanation_seed: seed of the 8:1:1 random split of raw reviews into explanation splits.
    max_explanation_words: explanation targets are cut to this many words.
    trust_pickle: allow reading `exp_splits.pkl` (pickle runs code; only for files you trust).
    """

    path: str
    numbering: str = "random"
    reindex_seed: int = 2023
    core: int = 5
    image_features: str | None = None
    explanation_seed: int = 0
    max_explanation_words: int = 25
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if self.numbering not in NUMBERINGS:
            raise ValueError(f"DataConfig.numbering must be one of {NUMBERINGS}, got {self.numbering!r}")
        if self.core < 1:
            raise ValueError(f"DataConfig.core must be >= 1, got {self.core}")
        if self.max_explanation_words < 1:
            raise ValueError(f"DataConfig.max_explanation_words must be >= 1, got {self.max_explanation_words}")
        if not Path(self.path).exists():
            raise FileNotFoundError(f"DataConfig.path does not exist: {self.path}")


@dataclass(frozen=True)
class Explanation:
    """One review turned into an explanation target for a (user, item) pair."""

    user: int
    item: int
    text: str
    rating: float
    split: str = "train"
    feature: str = ""


@dataclass(frozen=True, eq=False)
class RecData:
    """Users 1..U, items 1..I; index u-1 / i-1 into the tuples below."""

    name: str
    sequences: tuple[tuple[int, ...], ...]
    user_keys: tuple[str, ...]
    item_keys: tuple[str, ...]
    item_titles: tuple[str, ...] | None = None
    item_categories: tuple[str, ...] | None = None
    explanations: tuple[Explanation, ...] = ()
    image_features: np.ndarray | None = None
    has_image: np.ndarray | None = None
    numbering: str = "original"
    user_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.sequences) != len(self.user_keys):
            raise ValueError("RecData.sequences and user_keys differ in length")
        n_items = len(self.item_keys)
        for user, items in enumerate(self.sequences, start=1):
            if items and not all(1 <= i <= n_items for i in items):
                raise ValueError(f"RecData.sequences: user {user} has an item outside 1..{n_items}")
        if self.image_features is not None and self.image_features.shape[0] != n_items + 1:
            raise ValueError(f"RecData.image_features must have {n_items + 1} rows (row 0 unused)")

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_items(self) -> int:
        return len(self.item_keys)

    @property
    def n_interactions(self) -> int:
        return sum(len(s) for s in self.sequences)

    def title(self, item: int) -> str:
        """A short item text for prompts: the title phrase when known, else `item_<id>`."""
        if self.item_titles is not None and self.item_titles[item - 1]:
            return self.item_titles[item - 1]
        return f"item_{item}"

    def category(self, item: int) -> str:
        return self.item_categories[item - 1] if self.item_categories is not None else ""

    def summary(self) -> dict:
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.n_interactions,
            "n_explanations": len(self.explanations),
            "numbering": self.numbering,
            "image_features": None if self.image_features is None else int(self.has_image.sum()),
        }


# ----------------------------------------------------------------------------- loading


def load_data(config: DataConfig) -> RecData:
    """Load `config.path` (P5 folder or raw review file), attach images, apply the numbering."""
    path = Path(config.path)
    if path.is_dir():
        data = load_p5_folder(path, trust_pickle=config.trust_pickle,
                              max_explanation_words=config.max_explanation_words)
    else:
        data = load_amazon_reviews(path, core=config.core, explanation_seed=config.explanation_seed,
                                   max_explanation_words=config.max_explanation_words)
    if config.image_features is not None:
        features, has_image = load_image_features(Path(config.image_features), data.item_keys)
        data = replace(data, image_features=features, has_image=has_image)
    return reindex_items(data, numbering=config.numbering, seed=config.reindex_seed)


def _dense_ids(raw_ids: Iterable[int], what: str) -> dict[int, int]:
    """Map the file's integer ids onto 1..N, keeping their order (identity when already 1..N)."""
    ordered = sorted(set(raw_ids))
    if not ordered:
        raise ValueError(f"no {what} found")
    return {raw: dense for dense, raw in enumerate(ordered, start=1)}


def load_p5_folder(folder: Path, *, trust_pickle: bool = False, max_explanation_words: int = 25) -> RecData:
    """Read `sequential_data.txt` (+ `datamaps.json`, titles, explanation splits) in P5 numbering."""
    rows = [line.split() for line in (folder / "sequential_data.txt").read_text().splitlines() if line.strip()]
    user_map = _dense_ids((int(r[0]) for r in rows), "users")
    item_map = _dense_ids((int(i) for r in rows for i in r[1:]), "items")
    sequences: list[tuple[int, ...]] = [()] * len(user_map)
    for row in rows:
        sequences[user_map[int(row[0])] - 1] = tuple(item_map[int(i)] for i in row[1:])
    id2user, id2item = _read_datamaps(folder / "datamaps.json")
    user_keys = tuple(id2user.get(str(raw), str(raw)) for raw in user_map)
    item_keys = tuple(id2item.get(str(raw), str(raw)) for raw in item_map)
    data = RecData(name=folder.name, sequences=tuple(sequences), user_keys=user_keys, item_keys=item_keys,
                   item_titles=_read_titles(folder / TITLES_FILE, item_keys),
                   item_categories=_read_categories(folder, [str(raw) for raw in item_map]))
    explanations = _read_explanation_splits(folder, data, trust_pickle=trust_pickle,
                                            max_words=max_explanation_words)
    return replace(data, explanations=explanations)


def _read_datamaps(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    if not path.exists():
        return {}, {}
    maps = json.loads(path.read_text())
    for key in ("id2user", "id2item"):
        if key not in maps:
            raise ValueError(f"{path}: missing key {key!r}")
    return maps["id2user"], maps["id2item"]


def _read_categories(folder: Path, raw_item_ids: Sequence[str]) -> tuple[str, ...] | None:
    """Per item, its attribute names (categories and brand) from `item2attributes.json`, decoded
    through `datamaps.json`; None when the folder has no attributes."""
    path, maps = folder / "item2attributes.json", folder / "datamaps.json"
    if not path.exists() or not maps.exists():
        return None
    names = json.loads(maps.read_text()).get("id2attribute", {})
    attributes = json.loads(path.read_text())
    return tuple(", ".join(names.get(str(a), "") for a in attributes.get(raw, []) if names.get(str(a)))
                 for raw in raw_item_ids)


def _read_titles(path: Path, item_keys: Sequence[str]) -> tuple[str, ...] | None:
    if not path.exists():
        return None
    phrases = {}
    for line in path.read_text().splitlines():
        key, _, phrase = line.partition(" ")
        phrases[key] = phrase.strip()
    return tuple(phrases.get(key, "") for key in item_keys)


def _read_explanation_splits(folder: Path, data: RecData, *, trust_pickle: bool, max_words: int
                             ) -> tuple[Explanation, ...]:
    """VIP5's `exp_splits` (train/val/test lists of review dicts), as JSON or a trusted pickle."""
    if (folder / "exp_splits.json").exists():
        splits = json.loads((folder / "exp_splits.json").read_text())
    elif (folder / "exp_splits.pkl").exists():
        if not trust_pickle:
            raise ValueError(f"{folder / 'exp_splits.pkl'}: set DataConfig.trust_pickle to read a pickle")
        with open(folder / "exp_splits.pkl", "rb") as handle:
            splits = pickle.load(handle)  # noqa: S301 - only with trust_pickle
    else:
        return ()
    users = {key: u for u, key in enumerate(data.user_keys, start=1)}
    items = {key: i for i, key in enumerate(data.item_keys, start=1)}
    out = []
    for split_name, ours in (("train", "train"), ("val", "valid"), ("test", "test")):
        for review in splits.get(split_name, []):
            user, item = users.get(review["reviewerID"]), items.get(review["asin"])
            text = review.get("explanation") or review.get("reviewText", "")
            if user is None or item is None or not text.strip():
                continue
            out.append(Explanation(user, item, normalize_text(text, max_words=max_words),
                                   float(review.get("overall", 5.0)), ours, str(review.get("feature", ""))))
    return tuple(out)


def load_image_features(npy_path: Path, item_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `npy_path` keyed by ASIN (`<stem>_ids.txt`) -> (I+1, F) features and (I+1,) mask."""
    matrix = np.load(npy_path)
    ids_path = npy_path.with_name(npy_path.stem + "_ids.txt")
    ids = ids_path.read_text().split()
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise ValueError(f"{npy_path}: shape {matrix.shape} does not match {len(ids)} ids in {ids_path}")
    row_of = {key: row for row, key in enumerate(ids)}
    features = np.zeros((len(item_keys) + 1, matrix.shape[1]), dtype=np.float32)
    has_image = np.zeros(len(item_keys) + 1, dtype=bool)
    for item, key in enumerate(item_keys, start=1):
        if key in row_of:
            features[item] = matrix[row_of[key]]
            has_image[item] = True
    return features, has_image


# ----------------------------------------------------------------------------- raw reviews


def read_reviews(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def k_core(reviews: list[dict], k: int) -> list[dict]:
    """Drop users and items with fewer than k reviews, repeatedly, until none is left."""
    while True:
        users = Counter(r["reviewerID"] for r in reviews)
        items = Counter(r["asin"] for r in reviews)
        kept = [r for r in reviews if users[r["reviewerID"]] >= k and items[r["asin"]] >= k]
        if len(kept) == len(reviews):
            return kept
        reviews = kept


def load_amazon_reviews(path: Path, *, core: int = 5, explanation_seed: int = 0,
                        max_explanation_words: int = 25) -> RecData:
    """A raw 5-core file -> time-ordered sequences (P5 numbering) and 8:1:1 explanation splits."""
    reviews = _first_review_per_pair(read_reviews(path))
    reviews = k_core(reviews, core)
    if not reviews:
        raise ValueError(f"{path}: no reviews left after the {core}-core filter")
    by_user: dict[str, list[tuple[int, int, dict]]] = {}
    for order, review in enumerate(reviews):
        by_user.setdefault(review["reviewerID"], []).append((int(review.get("unixReviewTime", 0)), order, review))
    user_keys = tuple(by_user)
    item_ids: dict[str, int] = {}
    sequences = []
    for key in user_keys:
        timeline = sorted(by_user[key], key=lambda entry: entry[:2])
        sequences.append(tuple(item_ids.setdefault(r["asin"], len(item_ids) + 1) for _, _, r in timeline))
    user_ids = {key: u for u, key in enumerate(user_keys, start=1)}
    names = tuple(str(by_user[key][0][2].get("reviewerName", key)) for key in user_keys)
    explanations = _review_explanations(reviews, user_ids, item_ids, seed=explanation_seed,
                                        max_words=max_explanation_words)
    return RecData(name=Path(path).name.split(".")[0], sequences=tuple(sequences), user_keys=user_keys,
                   item_keys=tuple(item_ids), explanations=explanations, user_names=names)


def _first_review_per_pair(reviews: list[dict]) -> list[dict]:
    seen, out = set(), []
    for review in reviews:
        pair = (review["reviewerID"], review["asin"])
        if pair not in seen:
            seen.add(pair)
            out.append(review)
    return out


def _review_explanations(reviews: list[dict], user_ids: dict[str, int], item_ids: dict[str, int], *,
                         seed: int, max_words: int) -> tuple[Explanation, ...]:
    """One explanation per review with text; a seeded 8:1:1 train/valid/test split."""
    rng = np.random.default_rng(seed)
    out = []
    for review in reviews:
        text = explanation_sentence(review.get("reviewText", ""), review.get("summary", ""), max_words=max_words)
        if not text:
            continue
        draw = rng.random()
        split = "train" if draw < 0.8 else "valid" if draw < 0.9 else "test"
        out.append(Explanation(user_ids[review["reviewerID"]], item_ids[review["asin"]], text,
                               float(review.get("overall", 5.0)), split))
    return tuple(out)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s*(?=[A-Z])|(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,!?;:]")


def normalize_text(text: str, *, max_words: int = 25) -> str:
    """Lower-case words and punctuation marks separated by single spaces, cut to `max_words`."""
    return " ".join(_WORD.findall(text.lower())[:max_words])


def explanation_sentence(review_text: str, summary: str = "", *, min_words: int = 4, max_words: int = 25) -> str:
    """The first review sentence of `min_words`..`max_words` words, else the first sentence cut
    to `max_words`, else the summary; normalised by `normalize_text`."""
    sentences = [s.strip() for s in _SENTENCE_END.split(review_text) if s.strip()]
    for sentence in sentences:
        if min_words <= len(normalize_text(sentence, max_words=10_000).split()) <= max_words:
            return normalize_text(sentence, max_words=max_words)
    if sentences:
        return normalize_text(sentences[0], max_words=max_words)
    return normalize_text(summary, max_words=max_words)


# ----------------------------------------------------------------------------- numbering


def item_permutation(n_items: int, seed: int) -> np.ndarray:
    """(I+1,) array mapping an original item id to its random id; entry 0 stays 0."""
    mapping = np.zeros(n_items + 1, dtype=np.int64)
    mapping[1:] = np.random.default_rng(seed).permutation(n_items) + 1
    return mapping


def reindex_items(data: RecData, *, numbering: str, seed: int) -> RecData:
    """Renumber items: "original" keeps `data`; "random" applies a seeded bijection of 1..I."""
    if numbering not in NUMBERINGS:
        raise ValueError(f"numbering must be one of {NUMBERINGS}, got {numbering!r}")
    if numbering == "original":
        return data
    new_of = item_permutation(data.n_items, seed)
    old_of = np.argsort(new_of)  # old_of[new] = old
    reorder = [int(old) for old in old_of[1:]]
    return replace(
        data,
        sequences=tuple(tuple(int(new_of[i]) for i in seq) for seq in data.sequences),
        item_keys=tuple(data.item_keys[old - 1] for old in reorder),
        item_titles=None if data.item_titles is None else tuple(data.item_titles[old - 1] for old in reorder),
        item_categories=None if data.item_categories is None else tuple(data.item_categories[old - 1]
                                                                         for old in reorder),
        explanations=tuple(replace(e, item=int(new_of[e.item])) for e in data.explanations),
        image_features=None if data.image_features is None else data.image_features[old_of],
        has_image=None if data.has_image is None else data.has_image[old_of],
        numbering="random",
    )


# ----------------------------------------------------------------------------- splits and negatives


@dataclass(frozen=True)
class Example:
    """A next-item example: `history` (oldest first) -> `target`."""

    user: int
    history: tuple[int, ...]
    target: int


@dataclass(frozen=True, eq=False)
class LeaveOneOut:
    """train[u-1] = items[:-2]; valid: items[:-2] -> items[-2]; test: items[:-1] -> items[-1]."""

    train: tuple[tuple[int, ...], ...]
    valid: tuple[Example, ...]
    test: tuple[Example, ...]


def leave_one_out(sequences: Sequence[Sequence[int]]) -> LeaveOneOut:
    """Users with fewer than 3 items keep everything in train and get no valid/test example."""
    train, valid, test = [], [], []
    for user, items in enumerate(sequences, start=1):
        items = tuple(items)
        if len(items) < 3:
            train.append(items)
            continue
        train.append(items[:-2])
        valid.append(Example(user, items[:-2], items[-2]))
        test.append(Example(user, items[:-1], items[-1]))
    return LeaveOneOut(tuple(train), tuple(valid), tuple(test))


def sample_negatives(touched: Iterable[int], n_items: int, *, user: int, seed: int, count: int = 99
                     ) -> tuple[int, ...]:
    """`count` distinct items in 1..n_items the user never touched, reproducible per (seed, user)."""
    touched = set(touched)
    if n_items - len(touched & set(range(1, n_items + 1))) < count:
        raise ValueError(f"user {user}: fewer than {count} untouched items among {n_items}")
    rng = np.random.default_rng([seed, user])
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        for item in rng.integers(1, n_items + 1, size=2 * count).tolist():
            if item not in touched and item not in chosen:
                chosen[item] = None
                if len(chosen) == count:
                    break
    return tuple(chosen)


def direct_candidates(example: Example, sequence: Sequence[int], n_items: int, *, seed: int,
                      count: int = 99) -> tuple[int, ...]:
    """The target followed by `count` negatives untouched by the user's whole sequence."""
    return (example.target, *sample_negatives(sequence, n_items, user=example.user, seed=seed, count=count))


def cold_items(n_items: int, share: float, seed: int) -> frozenset[int]:
    """A seeded `share` of items 1..I: kept out of training to stand for items that arrive later."""
    count = int(round(n_items * share))
    if count == 0:
        return frozenset()
    return frozenset(int(i) for i in np.random.default_rng([seed, 7]).choice(n_items, count, replace=False) + 1)


def validation_users(split: LeaveOneOut, count: int, seed: int) -> frozenset[int]:
    """A seeded sample of `count` users with a validation example: the users a run validates on."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(split.valid), size=min(count, len(split.valid)), replace=False)
    return frozenset(split.valid[i].user for i in chosen)


def with_validation_items(split: LeaveOneOut, keep_out: frozenset[int]) -> LeaveOneOut:
    """The split whose training sequences also end with each user's validation item, except the
    users in `keep_out` (they stay the validation users). Test examples are unchanged: the test item
    is never trained on, and the most recent interactions are no longer left out of training."""
    extended = {e.user: (*e.history, e.target) for e in split.valid if e.user not in keep_out}
    return replace(split, train=tuple(extended.get(user, seq) for user, seq in enumerate(split.train, start=1)),
                   valid=tuple(e for e in split.valid if e.user in keep_out))


SPLIT_FIELDS = ("train_on_valid", "validate_users", "seed", "cold_items_share")  # the keywords of training_split


def training_split(data: RecData, *, train_on_valid: bool = False, validate_users: int = 2000, seed: int = 0,
                   cold_items_share: float = 0.0) -> LeaveOneOut:
    """The split a run trains on (and its baselines are fitted on): leave-one-out, then optionally
    the validation items of all but `validate_users` seeded users, then a seeded share of cold items
    removed from training. The keywords are the run's `TrainConfig` fields of the same names."""
    split = leave_one_out(data.sequences)
    if train_on_valid:
        split = with_validation_items(split, validation_users(split, validate_users, seed))
    return without_items(split, cold_items(data.n_items, cold_items_share, seed))


def without_items(split: LeaveOneOut, items: frozenset[int]) -> LeaveOneOut:
    """The split with `items` removed from every training sequence (evaluation examples unchanged)."""
    if not items:
        return split
    return replace(split, train=tuple(tuple(i for i in seq if i not in items) for seq in split.train))
