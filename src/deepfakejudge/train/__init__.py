"""Judge training and meta-evaluation: SFT examples from datasets, LoRA training (TRL + PEFT),
merge/export, data-format exporters, and agreement of a judge with gold or human scores.

Modules import their heavy dependencies (torch, trl, peft) where they use them, so that
`dfj judge` can read a trained adapter's run record without the training extra installed.
"""
