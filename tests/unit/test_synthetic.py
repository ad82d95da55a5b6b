import io

import numpy as np
from PIL import Image

from reasonrec.data import synthetic


def test_deterministic_long_tailed_and_with_images():
    config = synthetic.SyntheticConfig(users=300, items=60, seed=11)
    a_inter, a_items, a_images = synthetic.generate(config)
    b_inter, b_items, _ = synthetic.generate(config)
    assert a_inter.equals(b_inter) and a_items.equals(b_items)
    counts = np.unique(a_inter.column("user_id").to_numpy(zero_copy_only=False), return_counts=True)[1]
    assert np.median(counts) <= 5 and counts.max() >= 15  # many cold users, a long tail of active ones
    image = Image.open(io.BytesIO(a_images["i00000"]))
    assert image.size == (224, 224)
    assert all(a_items.column("title").to_pylist())
    # one interaction per (user, item), timestamps increase within a user
    frame = a_inter.to_pandas()
    assert not frame.duplicated(["user_id", "item_id"]).any()
    assert (frame.groupby("user_id")["ts"].diff().dropna() > 0).all()


def test_image_uris_are_absolute_when_written_to_a_relative_path(tmp_path, monkeypatch):
    import os

    from reasonrec import storage
    from reasonrec.data import synthetic

    monkeypatch.chdir(tmp_path)
    synthetic.write(synthetic.SyntheticConfig(users=50, items=60, seed=1), "raw")
    uris = storage.read_parquet(str(tmp_path / "raw" / "items.parquet")).column("image_uri").to_pylist()
    assert all(os.path.isabs(u) and os.path.exists(u) for u in uris)


def test_new_arrivals_are_late_and_lean_to_newcomers():
    config = synthetic.SyntheticConfig(users=1500, items=200, seed=4)
    interactions = synthetic.generate(config)[0].to_pandas().sort_values(["user_id", "ts"])
    wave = synthetic.new_arrivals(config)
    assert 0.08 < (wave > 0).mean() < 0.22 and set(np.unique(wave)) == {0, 1, 2, 3}
    interactions["wave"] = wave[interactions["item_id"].str[1:].astype(int)]
    interactions["new"] = interactions["wave"] > 0
    position = interactions.groupby("user_id").cumcount()
    length = interactions.groupby("user_id")["item_id"].transform("size")
    # Wave w only among a user's last w purchases (a dropped repeat can shift a position by one).
    new = interactions["new"]
    assert (position[new] >= length[new] - interactions["wave"][new] - 1).all()
    first_wave = interactions[interactions["wave"] == 1]
    assert (position[first_wave.index] >= length[first_wave.index] - 2).all()
    last = interactions[position == length - 1]
    newcomers, loyal = last[length[last.index] <= config.newcomer_len], last[length[last.index] > 15]
    assert newcomers["new"].mean() > 1.5 * loyal["new"].mean()
    # Without new arrivals every item is an established one.
    assert not synthetic.new_arrivals(synthetic.SyntheticConfig(new_share=0.0)).any()


def test_reviews_depend_on_the_buyer_and_the_item():
    """The explanation targets: a rating and a sentence that say as much about the user's taste as about the item,
    so that neither the item's most common review nor a template over its attributes can copy them."""
    interactions, items, _ = synthetic.generate(synthetic.SyntheticConfig(users=400, items=60))
    rows = interactions.to_pandas()
    assert rows["review"].notna().all() and rows["rating"].between(1, 5).all() and rows["rating"].nunique() == 5
    title = dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist()))
    assert all(t.split()[-1] in r for t, r in zip(rows["item_id"].map(title), rows["review"]))  # its category
    per_item = rows.groupby("item_id")["review"].agg(lambda r: r.value_counts(normalize=True).iloc[0])
    assert per_item.mean() < 0.5  # one item, many users: no review dominates
    opening = rows["review"].str.split(",").str[0]
    assert (opening.groupby(rows["rating"]).nunique() == 2).all()  # the opening follows the stars
    again, _, _ = synthetic.generate(synthetic.SyntheticConfig(users=400, items=60))
    assert again.equals(interactions)
