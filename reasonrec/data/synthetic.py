"""The embedded demo dataset: a synthetic multimodal catalogue with learnable sequential signal.

Items have a category, a colour, a shape and a style; each gets a 224x224 PNG drawn from those attributes. The
title names adjective, shape and category but not the colour, and the style (background tint, stripes) is drawn
only: part of every user's taste (a preferred colour, a style direction) is visible in the images alone, which is
what the deliberator's image ablation measures. Users have a taste over categories and styles, and a
long-tailed activity (most users are cold). Sequences mix three signals a recommender can learn: taste (who),
series order within a category (what comes next) and popularity. Every purchase has a star rating and a review
(``reviews``) that depend on the buyer's taste and the item: the explanation task's targets. Deterministic from
the seed.

New arrivals (``new_share`` of the catalogue) reach the shelves at the end of the window, in ``new_window`` waves
(``new_arrivals``): they can only be among a user's last few purchases, so they have few or no training
interactions and an ID-only tool knows little of them, while their title (which starts with "New") and image say as
much as any other item's, and the log shows them first bought near the end of the window (every user's timeline
ends near it). Newcomers lean to what is new (a logit pull of ``new_pull`` for a user with at most
``newcomer_len`` purchases, falling as 1/length beyond), loyal customers keep to their series: the new-item rows
concentrate on the cold users, where the paper sends its VLM.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageDraw

from reasonrec import storage
from reasonrec.data import schemas

CATEGORIES = ("Lipstick", "Serum", "Shampoo", "Perfume", "Nail Polish", "Mascara", "Cleanser", "Sunscreen",
              "Eyeshadow", "Moisturizer", "Conditioner", "Blush")
COLOURS = {"Crimson": (200, 30, 60), "Coral": (250, 120, 90), "Teal": (20, 140, 140), "Gold": (220, 180, 40),
           "Violet": (130, 70, 200), "Ivory": (235, 225, 200), "Jet": (30, 30, 40), "Rose": (230, 120, 160)}
SHAPES = ("round", "square", "triangle", "diamond")
ADJECTIVES = ("Classic", "Velvet", "Radiant", "Pure", "Matte", "Silk", "Daily", "Bold")
BRANDS = tuple(f"Brand {c}" for c in "ABCDEFGHIJKLMNOP")


@dataclasses.dataclass
class SyntheticConfig:
    users: int = 2000
    items: int = 400
    categories: int = 8
    max_len: int = 40
    seed: int = 7
    p_series: float = 0.45  # chance that the next item continues the previous item's series
    image_size: int = 224
    new_share: float = 0.15  # share of the items that are new arrivals
    new_window: int = 3  # new arrivals come in this many waves: wave w only among a user's last w purchases
    new_pull: float = 3.0  # their logit pull for a newcomer
    newcomer_len: int = 5


def new_arrivals(config: SyntheticConfig) -> np.ndarray:
    """Per item, 0 for an established item, else the wave w in 1..new_window of a new arrival: it can be among a
    user's last w purchases only. With leave-one-out splits, wave 1 is unseen until the test item, wave 2 until the
    validation item, wave 3 has a few training interactions: whichever split is scored (tools fitted on train for
    validation, refit on train + validation for test), some new arrivals are still unknown to the tools. From a
    stream of its own, so every item's attributes are the same whatever the share."""
    rng = np.random.default_rng([config.seed, 1])
    new = rng.random(config.items) < config.new_share
    return np.where(new, rng.integers(1, config.new_window + 1, config.items), 0)


def generate(config: SyntheticConfig) -> tuple[pa.Table, pa.Table, dict[str, bytes]]:
    """Return (interactions, items, images by item id)."""
    if config.categories > len(CATEGORIES):
        raise ValueError(f"at most {len(CATEGORIES)} categories")
    rng = np.random.default_rng(config.seed)
    n = config.items
    category = rng.integers(0, config.categories, n)
    colour = rng.integers(0, len(COLOURS), n)
    shape = rng.integers(0, len(SHAPES), n)
    style = rng.normal(size=(n, 4))
    popularity = rng.pareto(1.5, n) + 0.2
    wave = new_arrivals(config)
    is_new = wave > 0
    # A series is the category's older items in a fixed random order: item -> next item of the same category.
    successor = np.arange(n)
    for c in range(config.categories):
        members = rng.permutation(np.flatnonzero(category == c))
        members = members[~is_new[members]]
        successor[members] = np.roll(members, -1)

    taste = rng.dirichlet(np.full(config.categories, 0.3), config.users)
    style_pref = rng.normal(size=(config.users, 4))
    colour_pref = rng.integers(0, len(COLOURS), config.users)
    lengths = np.minimum(3 + np.floor(rng.pareto(1.2, config.users) * 3).astype(int), config.max_len)
    new_pull = config.new_pull * np.minimum(1.0, config.newcomer_len / lengths)

    by_category = [np.flatnonzero(category == c) for c in range(config.categories)]
    seqs = np.zeros((config.users, config.max_len), dtype=np.int64)
    for t in range(config.max_len):
        active = np.flatnonzero(lengths > t)
        if not len(active):
            break
        cats = (taste[active].cumsum(1) > rng.random((len(active), 1))).argmax(1)
        picked = np.empty(len(active), dtype=np.int64)
        for c in np.unique(cats):  # vectorised per category: a softmax over its items for every such user
            rows = np.flatnonzero(cats == c)
            members = by_category[c]
            users = active[rows]
            logits = (style_pref[users] @ style[members].T + np.log(popularity[members])
                      + 1.5 * (colour[members][None, :] == colour_pref[users][:, None]))
            arrived = t >= lengths[users][:, None] - wave[members][None, :]  # among the user's last `wave` buys
            logits = np.where(is_new[members][None, :],
                              np.where(arrived, logits + new_pull[users][:, None], -np.inf), logits)
            gumbel = -np.log(-np.log(rng.random(logits.shape)))
            picked[rows] = members[np.argmax(logits + gumbel, axis=1)]
        if t > 0:  # a new arrival is a break from the series: it is kept
            follow = (rng.random(len(active)) < config.p_series) & ~is_new[picked] & ~is_new[seqs[active, t - 1]]
            picked[follow] = successor[seqs[active[follow], t - 1]]
        seqs[active, t] = picked

    user_rows = np.repeat(np.arange(config.users), lengths)
    step = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    # Every user's timeline ends within a few days of the window's end (the snapshot), earlier purchases spaced back
    # from there: the newcomers joined late and the new arrivals are first bought late, as in a shop's own log.
    end = 1_600_000_000 + 180 * 86400 - rng.integers(0, 180 * 86400, config.users) // 30
    gaps = rng.exponential(2 * 86400, len(user_rows)).astype(np.int64) + 60
    frame = pd.DataFrame({"u": user_rows, "i": seqs[user_rows, step], "gap": gaps})
    after = frame.groupby("u")["gap"].transform("sum") - frame.groupby("u")["gap"].cumsum()  # time left to its end
    frame["ts"] = end[frame["u"]] - after
    frame = frame.drop_duplicates(["u", "i"], keep="first")  # a product is bought once
    colour_names = list(COLOURS)
    u, i = frame["u"].to_numpy(), frame["i"].to_numpy()
    rating, review = reviews(np.argmax(taste[u], axis=1), category[i], colour[i] == colour_pref[u],
                             np.einsum("ij,ij->i", style_pref[u], style[i]) > 0, shape[i],
                             frame.groupby("u").cumcount().to_numpy(), config.seed)
    interactions = schemas.conform(pa.table({
        "user_id": [f"u{u:06d}" for u in frame["u"]],
        "item_id": [f"i{i:05d}" for i in frame["i"]],
        "ts": frame["ts"].to_numpy(),
        "rating": rating,
        "review": review,
    }), schemas.INTERACTIONS, "synthetic")

    # A new arrival says so in its title, as shop listings do: text the VLM reads and an ID-only tool cannot.
    titles = [f"{'New ' if is_new[i] else ''}{ADJECTIVES[i % len(ADJECTIVES)]} {SHAPES[shape[i]].title()} "
              f"{CATEGORIES[category[i]]}" for i in range(n)]
    item_ids = [f"i{i:05d}" for i in range(n)]
    items = schemas.conform(pa.table({
        "item_id": item_ids,
        "title": titles,
        "categories": [[CATEGORIES[category[i]], SHAPES[shape[i]]] for i in range(n)],
        "brand": [BRANDS[i] for i in rng.integers(0, len(BRANDS), n)],
        "price": np.round(5 + popularity * 10, 2).astype(np.float32),
    }), schemas.ITEMS, "synthetic")
    images = {item_ids[i]: draw_item(colour_names[colour[i]], SHAPES[shape[i]], style[i], config.image_size)
              for i in range(n)}
    return interactions, items, images


OPENINGS = {5: ("Love it", "Absolutely love it"), 4: ("Really like it", "Very happy with it"),
            3: ("It is okay", "Decent enough"), 2: ("Not for me", "Rather disappointing"),
            1: ("Awful", "Very disappointed")}


def reviews(top_category: np.ndarray, category: np.ndarray, colour_match: np.ndarray, style_match: np.ndarray,
            shape: np.ndarray, earlier: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """Star rating and review sentence of each purchase, from the buyer and the item.

    What the text says depends on the user (their favourite category, the rating they give, how many purchases
    came before: ``earlier``; whether the item's colour, seen only in its image, is theirs; whether its look suits
    their style) as much as on the item (its shape and category, as its title names them): an item's most common
    review, or a template over its attributes, gets only part of it right. From a stream of its own, so the
    purchases themselves are the same with or without reviews."""
    rng = np.random.default_rng([seed, 2])
    fan = top_category == category
    noise = rng.choice([-1, 0, 1], size=len(fan), p=[0.15, 0.7, 0.15])
    rating = np.clip(2 + fan + colour_match + style_match + noise, 1, 5)
    pick = rng.integers(0, 2, (len(fan), 2))
    texts = []
    regular = np.where(earlier == 0, "my first order here", np.where(earlier < 5, "I am fairly new here",
                                                                       "I order here often"))
    for r, f, c, s, top, cat, sh, (a, b), who in zip(rating, fan, colour_match, style_match, top_category, category,
                                                     shape, pick, regular):  # text: once per purchase
        mine = CATEGORIES[top]
        taste = (f"as a {mine} fan this {CATEGORIES[cat]} fits my routine" if f else
                 (f"a change from my usual {mine}" if b else f"not what I buy, I am more into {mine}"))
        texts.append(f"{OPENINGS[r][a]}, {who}: {taste}; the {SHAPES[sh].title()} {CATEGORIES[cat]} "
                     f"{'is my colour' if c else 'is not my colour'} and the look "
                     f"{'suits me' if s else 'is not my style'}.")
    return rating.astype(np.float32), texts


def draw_item(colour: str, shape: str, style: np.ndarray, size: int = 224) -> bytes:
    """A product shot: the item's shape in its colour, with the style as background tint and stripe count."""
    tint = tuple(int(200 + 25 * np.tanh(s)) for s in style[:3])
    image = Image.new("RGB", (size, size), tint)
    draw = ImageDraw.Draw(image)
    for k in range(int(abs(style[3]) * 3) + 1):  # stripes
        y = (k + 1) * size // (int(abs(style[3]) * 3) + 2)
        draw.line([(0, y), (size, y)], fill=tuple(max(c - 40, 0) for c in tint), width=3)
    rgb, m = COLOURS[colour], size // 5
    box = [m, m, size - m, size - m]
    if shape == "round":
        draw.ellipse(box, fill=rgb, outline=(0, 0, 0), width=3)
    elif shape == "square":
        draw.rectangle(box, fill=rgb, outline=(0, 0, 0), width=3)
    elif shape == "triangle":
        draw.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=rgb, outline=(0, 0, 0))
    else:
        draw.polygon([(size // 2, m), (size - m, size // 2), (size // 2, size - m), (m, size // 2)],
                     fill=rgb, outline=(0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write(config: SyntheticConfig, out_uri: str) -> dict:
    """Write the dataset in the ``parquet`` source format, images under ``images/`` with absolute URIs."""
    interactions, items, images = generate(config)
    out_uri = storage.absolute(out_uri)  # image URIs are read by Ray workers whose working directory differs
    image_uris = [storage.join(out_uri, "images", f"{item}.png") for item in items.column("item_id").to_pylist()]
    for uri, item in zip(image_uris, items.column("item_id").to_pylist()):
        storage.write_bytes(uri, images[item])
    items = items.set_column(items.schema.get_field_index("image_uri"), "image_uri", pa.array(image_uris))
    storage.write_parquet(items, storage.join(out_uri, "items.parquet"))
    storage.write_parquet(interactions, storage.join(out_uri, "interactions.parquet"))
    return {"users": config.users, "items": config.items, "interactions": interactions.num_rows}
