"""The deliberator's vision-language model: a tiny Idefics3 built from config (offline), or a given HF folder."""
