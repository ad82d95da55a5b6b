"""Why the tiny deliberator trained from scratch stays at chance: a text-only probe of the skill it lacks.

The deliberator must tell whether a candidate matches something in the user's history. This probe isolates that
skill in a Llama of the tiny VLM's text shape: "is word x among the three history words?", optionally with label
noise (the synthetic catalogue's yes/no labels agree with a category match ~75% of the time), filler tokens after
each history word (an item's image tokens) and a random prefix (the template's other text). It prints held-out
accuracy (clean labels) every 100 steps for a sweep of learning rate, model size, sequence length and a
short-to-long warm-up, so the figures in docs/results.md can be re-measured:

    python benchmarks/matching_probe.py            # the default sweep, ~18 min on 2 cores
    python benchmarks/matching_probe.py --steps 400 --runs "lr=3e-4,hidden=128,layers=2"
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

WORDS, YES, NO, SEP, ASK, FILLER = 8, 8, 9, 10, 11, 12
FILLERS, PREFIX_WORDS = 20, 50
VOCAB = FILLER + FILLERS + PREFIX_WORDS


@dataclasses.dataclass
class Run:
    lr: float = 2e-4
    hidden: int = 256
    layers: int = 4
    noise: float = 0.0  # share of flipped training labels
    fill: int = 0  # filler tokens after every word (an item's image tokens)
    prefix: int = 0  # random tokens before the history (the template's other text)
    warmup: int = 0  # first steps on the short form (no filler, no prefix)
    batch: int = 32

    @classmethod
    def parse(cls, text: str) -> Run:
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for pair in filter(None, text.split(",")):
            key, value = pair.split("=")
            if key not in fields:
                raise ValueError(f"--runs {text!r}: unknown field {key!r}; fields are {sorted(fields)}")
            values[key] = (float if fields[key] == "float" else int)(value)
        return cls(**values)


def batch(rng, run: Run, n: int, noisy: bool, short: bool):
    import torch

    fill, prefix = (0, 0) if short else (run.fill, run.prefix)
    words, asked = rng.integers(0, WORDS, (n, 3)), rng.integers(0, WORDS, n)
    yes = (words == asked[:, None]).any(1)
    if noisy:
        yes ^= rng.random(n) < run.noise
    parts = [rng.integers(FILLER + FILLERS, VOCAB, (n, prefix))]
    for j in range(3):
        parts += [words[:, j:j + 1], rng.integers(FILLER, FILLER + FILLERS, (n, fill))]
    parts += [np.full((n, 1), SEP), asked[:, None], rng.integers(FILLER, FILLER + FILLERS, (n, fill)),
              np.full((n, 1), ASK), np.where(yes, YES, NO)[:, None]]
    return torch.tensor(np.concatenate(parts, 1))


def train(run: Run, steps: int, seed: int) -> list[float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=run.hidden, intermediate_size=2 * run.hidden,
        num_hidden_layers=run.layers, num_attention_heads=run.hidden // 64, num_key_value_heads=run.hidden // 64,
        max_position_embeddings=512))
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr)
    accuracy = []
    for step in range(steps + 1):
        if step % 100 == 0:
            with torch.no_grad():
                held_out = batch(rng, run, 500, noisy=False, short=False)
                predicted = model(input_ids=held_out).logits[:, -2].argmax(-1)
                accuracy.append(float((predicted == held_out[:, -1]).float().mean()))
        if step == steps:
            break
        tokens = batch(rng, run, run.batch, noisy=True, short=step < run.warmup)
        loss = torch.nn.functional.cross_entropy(model(input_ids=tokens).logits[:, -2], tokens[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return accuracy


DEFAULT_RUNS = [
    "lr=1e-3,hidden=128,layers=2", "lr=3e-4,hidden=128,layers=2", "lr=1e-4,hidden=128,layers=2",
    "lr=2e-4,hidden=256,layers=4", "lr=2e-4,hidden=256,layers=4,noise=0.2",
    "lr=2e-4,hidden=256,layers=4,fill=6,prefix=40",
    "lr=2e-4,hidden=256,layers=4,noise=0.2,fill=6,prefix=40",
    "lr=2e-4,hidden=256,layers=4,noise=0.2,fill=6,prefix=40,warmup=300",
]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--runs", nargs="*", default=DEFAULT_RUNS, help="key=value,... per run (fields of Run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    majority = 1 - (1 - 1 / WORDS) ** 3  # P(yes) = 0.33: always answering "no" scores 0.67
    print(f"held-out accuracy every 100 steps (always 'no': {1 - majority:.2f})")
    for text in args.runs:
        start = time.perf_counter()
        curve = train(Run.parse(text), args.steps, args.seed)
        print(f"{text:<60} {' '.join(f'{a:.2f}' for a in curve)}  ({time.perf_counter() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
