"""Cluster wing: `trainer.launch`, the Kubernetes side of a run.

`launch` is the command; `k8s` is its Kubernetes client (API errors, a submitted run, its pods and
log); `manifests` renders k8s/ for a run, `image` pins the trainer image, `prepare_job` and `serving`
run the prepare Job and promotion. Depends on the other wings.
"""
