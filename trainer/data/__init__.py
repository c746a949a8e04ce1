"""Data wing: photos in folders or buckets -> verified TFRecord shards, and shards -> model batches.

`prepare` (configured by one `PrepareConfig`, with its `prepare_*` stages, `photo_source` and
`shard_writer`) decodes untrusted photos with Pillow (`images`) into the pairs `schema` defines;
`input_pipeline` reads them back for training and evaluation; `gcs` and `outputs` are the storage
both sides share. Depends only on `trainer.errors`.
"""
