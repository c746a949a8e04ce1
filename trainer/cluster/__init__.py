"""Cluster wing: `trainer.launch`, the Kubernetes side of a run.

`launch` is the command; `manifests` renders k8s/ for a run, `image` pins the trainer image,
`prepare_job` and `serving` run the prepare Job and promotion. Depends on the other wings.
"""
