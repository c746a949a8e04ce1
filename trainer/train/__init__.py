"""Train wing: one run from flags to an export.

`config` is the frozen run configuration; `run` checks what can be checked, trains (`loop`, with
`steps`, `models`, `losses`, `augment`), fits the serving decode (`decode_fit`) and exports once.
After each epoch the loop runs its `actions` (early stopping with the best checkpoint, summaries,
the log line); `distribute`, `preemption` and `checkpoints` make it survive clusters. Depends on the
data and serve wings.
"""
