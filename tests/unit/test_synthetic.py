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
