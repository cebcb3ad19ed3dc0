"""Many adapters on one frozen base: named adapters, mixed-adapter batches, adapter arithmetic.

`mixed`: an `Adapter` (spec + its own `peft` tree, task head included), the converters from
and to today's single-adapter layout, stacking N LoRA adapters along a leading adapter axis,
routing each row of a batch to its own adapter (a gather: data, not a static choice) and the
per-adapter averaged loss. `arithmetic`: HF PEFT's `add_weighted_adapter` combinations,
jittable. Saving / loading one adapter by name in PEFT's folder layout is `lmx.hf.named`.
"""
