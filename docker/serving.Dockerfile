# Optional: TF Serving with a model baked in, for clusters that can't read the bucket.
# The build context is the export folder (the one holding the integer version folders):
#   docker build -f docker/serving.Dockerfile -t colorizer-serving:1 runs/colorizer/export
# The stock image's entrypoint serves ${MODEL_BASE_PATH}/${MODEL_NAME} = /models/colorizer.
FROM tensorflow/serving:2.20.0
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; k8s/components/serving/serving.yaml probes that the model is AVAILABLE

ENV MODEL_NAME=colorizer
COPY --chown=65532:65532 . /models/colorizer/
USER 65532:65532
