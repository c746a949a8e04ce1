"""Serve wing: what a trained model becomes and how it is used.

`preprocess` is the one preprocessing path of training and serving; `export` writes the SavedModel
TF Serving loads (request limits in `image_limits`, warmup in `warmup`, TF Serving's protos in
`serving_protos`); `rest` and `client` speak TF Serving's REST API; `evaluate`, `metrics` and
`promote` score and promote versions. Depends on the data wing, never on training.
"""
