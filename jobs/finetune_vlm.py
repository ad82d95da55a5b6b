"""R-VIT: fine-tune the VLM deliberator with Ray Train and add vlm/ to the bundle.

Examples come from the bundle's tools (their outputs and the tool-usability labels), batches from the
evidence-horizon curriculum. Without --base a tiny VLM is built from config (tiny.architecture: idefics3, llava or
qwen2_vl) and trained in full; a given Hugging Face checkpoint (Idefics3/SmolVLM, LLaVA-1.5, Qwen2-VL; a local
folder or an s3:// URI, which each Ray Train worker reads itself) is tuned with LoRA and merged for export. After
training, HR@1 of the tuned model, the untuned one and the tuned one with images blanked is measured on held-out
test users."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli
from reasonrec.vlm.finetune import FinetuneConfig


@dataclasses.dataclass
class FinetuneJob:
    data: str
    bundle: str
    base: str | None = None
    vlm: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = lambda field: cli.default(FinetuneConfig, field)  # noqa: E731
    parser.add_argument("--data", required=True, help="a prepared folder")
    parser.add_argument("--bundle", required=True, help="a bundle with tools (its tools label the R-VIT examples)")
    parser.add_argument("--base", help="a Hugging Face VLM checkpoint to tune with LoRA, a local folder or an "
                                       "s3:// URI (Idefics3/SmolVLM, LLaVA-1.5, Qwen2-VL; default: the tiny model "
                                       "built from config, trained in full)")
    parser.add_argument("--config", help="YAML with FinetuneConfig fields (examples: {...}, curriculum: {...}, "
                                         "tiny: {...}), e.g. reasonrec/configs/rvit_synthetic.yaml")
    parser.add_argument("--steps", type=int, help=f"default {d('steps')}")
    parser.add_argument("--warmup-steps", type=int, help=f"steps on the short prompt form first (a model from "
                                                         f"scratch; default {d('warmup_steps')})")
    parser.add_argument("--batch-size", type=int, help=f"default {d('batch_size')}")
    parser.add_argument("--lr", type=float, help=f"default {d('lr')}")
    parser.add_argument("--lora-rank", type=int, help="0: full fine-tune (default: 16 with --base, else 0)")
    parser.add_argument("--noise", type=float, help=f"share of tool outputs replaced by a wrong answer "
                                                    f"(default {d('examples.noise')})")
    parser.add_argument("--workers", type=int, help=f"Ray Train workers (default {d('workers')})")
    parser.add_argument("--cpus-per-worker", type=float, help=f"default {d('cpus_per_worker')}")
    parser.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    parser.add_argument("--eval-users", type=int, help=f"held-out users for the HR@1 report (0: skip; default "
                                                       f"{d('eval_users')})")
    parser.add_argument("--storage-path", help="Ray Train run storage (shared storage on a multi-node cluster)")
    parser.add_argument("--seed", type=int, help=f"default {d('seed')}")


def config(args: argparse.Namespace) -> FinetuneJob:
    from reasonrec.config import load

    flags = ("steps", "warmup_steps", "batch_size", "lr", "lora_rank", "workers", "cpus_per_worker", "eval_users",
             "storage_path", "seed")
    overrides = {name: getattr(args, name) for name in flags}
    overrides.update({"use_gpu": True if args.gpu else None, "examples.noise": args.noise})
    return FinetuneJob(args.data, args.bundle, args.base, load(FinetuneConfig, args.config, overrides))


def run(job: FinetuneJob) -> dict:
    from reasonrec.api import finetune_vlm

    return finetune_vlm(job.data, job.bundle, job.vlm, base=job.base)


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
