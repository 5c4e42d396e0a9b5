"""Judge training: SFT examples from datasets, LoRA training (TRL + PEFT), merge/export and
data-format exporters. (Agreement of a judge with gold or human scores is in `metaeval/`.)

Modules import their heavy dependencies (torch, trl, peft) where they use them, so that
`dfj judge` can read a trained adapter's run record without the training extra installed.
"""
