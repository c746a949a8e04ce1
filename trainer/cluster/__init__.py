"""Cluster wing: `trainer.launch`, the Kubernetes side of a run.

`launch` is the command; `k8s` is its Kubernetes client (API errors, a submitted run, its pods and
log); `manifests` holds what every run's rendering of k8s/ shares, `image` pins the trainer image;
`train_job`, `prepare_job` and `colorize_job` build the training, prepare and colorize runs, and
`serving` runs promotion. Depends on the other wings.
"""
