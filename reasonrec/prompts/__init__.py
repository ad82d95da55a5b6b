"""R-VIT prompts (paper §3.1, Appendix A): instruction templates kept as data, their renderer, and the CoT target."""
