"""Peak driver and object-store memory of ``finetune-vlm --base`` for two checkpoint sizes (issue 21): neither grows
with the checkpoint, since each Ray Train worker reads the base from storage itself and the driver never loads it.

    python benchmarks/finetune_memory.py --data demo_output/data --bundle demo_output/bundle

Each size runs in a fresh process (its own local Ray). Both peaks are polled every 0.2 s: the driver's resident set
(not ``ru_maxrss``, which Linux carries over fork and exec, so a child would report this parent's peak after it
built the large checkpoint) and the object store's bytes from the node's store stats. A LoRA fine-tune of 2 steps,
no evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SIZES = {"small": (128, 2), "large": (1024, 8)}  # (hidden size, text layers) of the tiny Idefics3


def build_checkpoint(data_uri: str, folder: Path, hidden: int, layers: int) -> int:
    """A randomly initialised checkpoint of the given size; returns its bytes on disk."""
    from reasonrec.data.prepared import PreparedData
    from reasonrec.vlm.build import TinyVLMConfig, build_tiny, save

    titles = [t for t in PreparedData(data_uri).table("items").column("title").to_pylist() if t]
    model, processor = build_tiny(titles, TinyVLMConfig(hidden_size=hidden, layers=layers, heads=hidden // 64))
    save(model, processor, folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def plasma_used(state) -> int:
    """Bytes in the object store now (Ray's own store stats, what `ray memory --stats-only` prints)."""
    import ray._private.internal_api as internal

    return int(internal.get_memory_info_reply(state).store_stats.object_store_bytes_used)


def child(data_uri: str, bundle: str, base: str) -> dict:
    """One fine-tune in this process; its peaks."""
    import psutil
    import ray

    from reasonrec.train.vlm import finetune_vlm
    from reasonrec.vlm.finetune import FinetuneConfig

    import ray._private.internal_api as internal

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    state = internal.get_state_from_address(ray.get_runtime_context().gcs_address)
    driver, peak, done = psutil.Process(), {"rss": 0, "store": 0}, threading.Event()

    def poll():
        while not done.is_set():
            peak["rss"] = max(peak["rss"], driver.memory_info().rss)
            peak["store"] = max(peak["store"], plasma_used(state))
            time.sleep(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    start = time.perf_counter()
    finetune_vlm(data_uri, bundle, FinetuneConfig(steps=2, batch_size=2, lora_rank=4, eval_users=0,
                                                  checkpoint_every=0, log_every=1), base=base)
    done.set()
    watcher.join()
    return {"driver_peak_mb": round(peak["rss"] / 2**20, 1), "object_store_peak_mb": round(peak["store"] / 2**20, 1),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundle", required=True, help="a bundle with tools (a copy is tuned into, not this one)")
    parser.add_argument("--child", nargs=2, metavar=("BUNDLE_COPY", "BASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(os.path.abspath(args.data), *args.child)))
        return
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (hidden, layers) in SIZES.items():
            base = Path(tmp, f"base-{name}")
            size = build_checkpoint(os.path.abspath(args.data), base, hidden, layers)
            copy = Path(tmp, f"bundle-{name}")
            shutil.copytree(args.bundle, copy)
            done = subprocess.run([sys.executable, __file__, "--data", args.data, "--bundle", args.bundle,
                                   "--child", str(copy), str(base)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            rows[name] = {"checkpoint_mb": round(size / 2**20, 1), **json.loads(done.stdout.strip().splitlines()[-1])}
            print(f"{name:>6s} checkpoint {rows[name]['checkpoint_mb']:8.1f} MB: driver peak "
                  f"{rows[name]['driver_peak_mb']:7.1f} MB, object store peak {rows[name]['object_store_peak_mb']:6.1f}"
                  f" MB ({rows[name]['seconds']} s)", flush=True)
    small, large = rows["small"], rows["large"]
    print(f"checkpoint x{large['checkpoint_mb'] / small['checkpoint_mb']:.1f}: driver peak "
          f"x{large['driver_peak_mb'] / small['driver_peak_mb']:.2f}, object store peak "
          f"x{large['object_store_peak_mb'] / max(small['object_store_peak_mb'], 0.1):.2f}")


if __name__ == "__main__":
    main()
