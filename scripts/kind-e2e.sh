#!/usr/bin/env bash
# End to end on a local kind cluster, AWS replaced by an in-cluster moto server, in DEPLOY.md's order:
#   kind cluster → both images built and loaded → the namespace → moto, provisioned like the stack, and the
#   ingestion Lambda's container under its runtime interface emulator, fed S3 events from the events queue →
#   Spark Operator 2.5.2 → the pomona chart with values-kind.yaml → sample uploads → one run from the schedule's
#   spec → outputs checked.
#
# Usage: scripts/kind-e2e.sh [--dry-run] [--keep]
#   --dry-run  print every step and command, run nothing (needs none of the tools)
#   --keep     leave the cluster up afterwards
# Needs docker, kind, kubectl, helm, and the project installed (the `pomona` CLI) on the host.
# Environment: MOBILENET_V2_SHA256 (required: Dockerfile.spark verifies the weights with it), KIND_CLUSTER,
#   SAMPLES (a <label>/<image> folder; default ../shared/data/fruits-360-sample), RUN_TIMEOUT (seconds).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-pomona-e2e}
CONTEXT="kind-${CLUSTER}"
NAMESPACE=pomona
TAG=e2e
SPARK_IMAGE="pomona-spark:${TAG}"
LAMBDA_IMAGE="pomona-lambda:${TAG}"
SPARK_OPERATOR_VERSION=2.5.2
MOTO_IMAGE=motoserver/moto:5.2.5
# The moto Service below; helm/pomona/values-kind.yaml points the job at the same address.
MOTO_URL="http://moto.${NAMESPACE}.svc:5000"
MOTO_LOCAL_PORT=15000
SAMPLES=${SAMPLES:-${ROOT}/../shared/data/fruits-360-sample}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
# moto accepts any credentials; boto3 only needs some.
AWS_ENV=(AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1)

DRY_RUN=0
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: expected --dry-run, --keep or --help, got ${arg}" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

# Print a command, then run it unless this is a dry run.
run() {
  printf '+ %s\n' "$*"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# The same for a command reading a manifest or script on stdin: a dry run prints the input.
run_with_input() {
  printf '+ %s <<EOF\n' "$*"
  if [[ $DRY_RUN == 0 ]]; then "$@"; else cat; echo "EOF"; fi
}

kube() { run kubectl --context "$CONTEXT" --namespace "$NAMESPACE" "$@"; }
kube_apply() { run_with_input kubectl --context "$CONTEXT" --namespace "$NAMESPACE" apply -f -; }

# Host-side environment for the `pomona` CLI, talking to moto through a port-forward.
host_env() {
  env "${AWS_ENV[@]}" AWS_ENDPOINT_URL="http://127.0.0.1:${MOTO_LOCAL_PORT}" \
    POMONA_BUCKET=pomona-images \
    POMONA_EVENTS_QUEUE_URL="${MOTO_URL}/123456789012/pomona-events" \
    POMONA_IMAGES_QUEUE_URL="${MOTO_URL}/123456789012/pomona-images" \
    POMONA_IMAGES_DLQ_URL="${MOTO_URL}/123456789012/pomona-images-dlq" \
    "$@"
}

PORT_FORWARD_PID=""
cleanup() {
  if [[ -n $PORT_FORWARD_PID ]]; then kill "$PORT_FORWARD_PID" 2>/dev/null || true; fi
  if [[ $DRY_RUN == 0 && $KEEP == 0 ]]; then kind delete cluster --name "$CLUSTER" || true; fi
}
trap cleanup EXIT

preflight() {
  step "preflight: tools and inputs"
  if [[ $DRY_RUN == 1 ]]; then
    echo "(dry run: nothing is checked or run)"
    MOBILENET_V2_SHA256=${MOBILENET_V2_SHA256:-<sha256 of the MobileNetV2 weights>}
    return
  fi
  local tool
  for tool in docker kind kubectl helm pomona; do
    command -v "$tool" >/dev/null || { echo "error: expected ${tool} on PATH, found none" >&2; exit 1; }
  done
  : "${MOBILENET_V2_SHA256:?expected MOBILENET_V2_SHA256 (Dockerfile.spark verifies the weights with it)}"
  [[ -d $SAMPLES ]] || { echo "error: expected a folder of samples at ${SAMPLES}, found none" >&2; exit 1; }
}

create_cluster() {
  step "create the kind cluster ${CLUSTER}"
  if [[ $DRY_RUN == 0 ]] && kind get clusters | grep -qx "$CLUSTER"; then
    echo "(exists)"
  else
    run kind create cluster --name "$CLUSTER" --wait 180s
  fi
}

# Before the Spark Operator, whose chart creates Roles in the namespaces it watches (DEPLOY.md, step 3).
create_namespace() {
  step "create the namespace ${NAMESPACE}"
  run_with_input kubectl --context "$CONTEXT" apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: ${NAMESPACE}}
EOF
}

build_images() {
  step "build the Spark and Lambda images and load them into kind"
  run docker build -f "${ROOT}/Dockerfile.spark" -t "$SPARK_IMAGE" \
    --build-arg "MOBILENET_V2_SHA256=${MOBILENET_V2_SHA256}" "$ROOT"
  run docker build -f "${ROOT}/Dockerfile.lambda" -t "$LAMBDA_IMAGE" "$ROOT"
  run kind load docker-image --name "$CLUSTER" "$SPARK_IMAGE" "$LAMBDA_IMAGE"
}

install_spark_operator() {
  step "install the Spark Operator ${SPARK_OPERATOR_VERSION} (CRDs, controller, webhook)"
  run helm repo add spark-operator https://kubeflow.github.io/spark-operator --force-update
  # The pomona chart brings the job's ServiceAccount and RBAC; the webhook applies envFrom, volumes and
  # security contexts to the driver and executor pods.
  run helm upgrade --install spark-operator spark-operator/spark-operator \
    --kube-context "$CONTEXT" --namespace spark-operator --create-namespace \
    --version "$SPARK_OPERATOR_VERSION" \
    --set "spark.jobNamespaces={${NAMESPACE}}" \
    --set spark.serviceAccount.create=false --set spark.rbac.create=false \
    --set webhook.enable=true --wait --timeout 5m
}

deploy_moto() {
  step "deploy the moto server (S3, SQS, DynamoDB) as ${MOTO_URL}"
  kube_apply <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: moto, labels: {app: moto}}
spec:
  replicas: 1
  selector: {matchLabels: {app: moto}}
  template:
    metadata: {labels: {app: moto}}
    spec:
      containers:
        - name: moto
          image: ${MOTO_IMAGE}
          ports: [{containerPort: 5000}]
          readinessProbe: {httpGet: {path: /moto-api/, port: 5000}}
---
apiVersion: v1
kind: Service
metadata: {name: moto}
spec:
  selector: {app: moto}
  ports: [{port: 5000, targetPort: 5000}]
EOF
  kube rollout status deployment/moto --timeout 180s
  # Placeholder keys for moto; the chart's values-kind.yaml passes this Secret to the driver and executors.
  kube_apply <<EOF
apiVersion: v1
kind: Secret
metadata: {name: moto-credentials}
stringData: {AWS_ACCESS_KEY_ID: testing, AWS_SECRET_ACCESS_KEY: testing}
EOF
}

provision_stack() {
  step "provision the bucket, queues, notification and table on moto (pomona.local.stack.provision)"
  run_with_input kubectl --context "$CONTEXT" --namespace "$NAMESPACE" run provision --rm -i --restart=Never \
    --image "$SPARK_IMAGE" --image-pull-policy Never \
    --env AWS_ACCESS_KEY_ID=testing --env AWS_SECRET_ACCESS_KEY=testing --env AWS_DEFAULT_REGION=us-east-1 \
    --command -- python - <<PY
from pomona.local.stack import local_session, provision
from pomona.core.resources import describe
from pomona.core.settings import Settings

settings = provision(describe("pomona"), session=local_session(), endpoint_url="${MOTO_URL}", base=Settings())
print(settings.to_env())
PY
}

deploy_lambda() {
  step "run the ingestion Lambda under its runtime interface emulator, fed by the events queue"
  kube_apply <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: ingest, labels: {app: ingest}}
spec:
  replicas: 1
  selector: {matchLabels: {app: ingest}}
  template:
    metadata: {labels: {app: ingest}}
    spec:
      containers:
        # Outside Lambda the AWS base image starts the runtime interface emulator on :8080.
        - name: lambda
          image: ${LAMBDA_IMAGE}
          imagePullPolicy: Never
          ports: [{containerPort: 8080}]
          envFrom: [{secretRef: {name: moto-credentials}}]
          env:
            - {name: AWS_DEFAULT_REGION, value: us-east-1}
            - {name: AWS_ENDPOINT_URL, value: "${MOTO_URL}"}
            - {name: POMONA_BUCKET, value: pomona-images}
            - {name: POMONA_IMAGES_QUEUE_URL, value: "${MOTO_URL}/123456789012/pomona-images"}
            - {name: POMONA_IDEMPOTENCY_TABLE, value: pomona-idempotency}
            - {name: POWERTOOLS_TRACE_DISABLED, value: "true"}
        # Lambda's SQS event source mapping, locally: S3 events from the events queue, as aws:sqs batches.
        - name: events
          image: ${SPARK_IMAGE}
          imagePullPolicy: Never
          envFrom: [{secretRef: {name: moto-credentials}}]
          env:
            - {name: AWS_DEFAULT_REGION, value: us-east-1}
            - {name: AWS_ENDPOINT_URL, value: "${MOTO_URL}"}
            - {name: POMONA_EVENTS_QUEUE_URL, value: "${MOTO_URL}/123456789012/pomona-events"}
          command:
            - python
            - -c
            - |
              import json, urllib.request
              from pomona.local.poller import EventSourcePoller
              from pomona.core.settings import Settings
              RIE = "http://127.0.0.1:8080/2015-03-31/functions/function/invocations"
              def invoke(event, context):
                  request = urllib.request.Request(RIE, data=json.dumps(event).encode())
                  with urllib.request.urlopen(request, timeout=60) as response:
                      return json.load(response)
              poller = EventSourcePoller(Settings.from_env().events_queue_url, invoke, wait_s=5)
              while True:
                  poller.poll_once()
EOF
  kube rollout status deployment/ingest --timeout 180s
}

install_pomona() {
  step "install the pomona chart with values-kind.yaml"
  run helm upgrade --install pomona "${ROOT}/helm/pomona" \
    --kube-context "$CONTEXT" --namespace "$NAMESPACE" \
    --values "${ROOT}/helm/pomona/values-kind.yaml" \
    --set "image.tag=${TAG}" --wait --timeout 5m
}

port_forward_moto() {
  step "reach moto from the host on 127.0.0.1:${MOTO_LOCAL_PORT}"
  printf '+ %s &\n' "kubectl --context ${CONTEXT} --namespace ${NAMESPACE} port-forward service/moto ${MOTO_LOCAL_PORT}:5000"
  if [[ $DRY_RUN == 0 ]]; then
    kubectl --context "$CONTEXT" --namespace "$NAMESPACE" port-forward service/moto "${MOTO_LOCAL_PORT}:5000" \
      >/dev/null &
    PORT_FORWARD_PID=$!
    sleep 3
  fi
}

upload_samples() {
  step "upload the samples as the app does (uploads/<label>/<file>) and wait for ingestion"
  run host_env pomona upload "$SAMPLES"
  # Ingestion is done when the events queue is empty; accepted images then wait in the images queue.
  run_with_input host_env python - <<'PY'
import time
import boto3
from pomona.core.settings import Settings

settings = Settings.from_env()
sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url)
names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    events = sqs.get_queue_attributes(QueueUrl=settings.events_queue_url, AttributeNames=names)["Attributes"]
    if not any(int(v) for v in events.values()):
        break
    time.sleep(5)
else:
    raise SystemExit("expected the events queue to drain within 600 s, found it still holding messages")
images = sqs.get_queue_attributes(QueueUrl=settings.images_queue_url, AttributeNames=names[:1])["Attributes"]
print(f"ingested: {images['ApproximateNumberOfMessages']} images queued")
PY
}

run_job() {
  step "start a run from the schedule's spec and wait for it"
  run pomona cluster run --context "$CONTEXT" --namespace "$NAMESPACE" --name pomona \
    --wait --timeout "$RUN_TIMEOUT"
  run pomona cluster status --context "$CONTEXT" --namespace "$NAMESPACE" --name pomona
}

check_outputs() {
  step "check the outputs: a PCA version, committed batches, the images queue drained"
  run_with_input host_env python - <<'PY'
import json
import subprocess

report = json.loads(subprocess.run(["pomona", "status", "--json"], check=True, capture_output=True, text=True).stdout)
problems = []
if not report["pca_version"]:
    problems.append("expected a PCA version, found none")
if not report["batches"]:
    problems.append("expected a committed batch, found none")
if report["queues"]["images"].get("visible"):
    problems.append(f"expected the images queue drained, found {report['queues']['images']}")
if problems:
    raise SystemExit("; ".join(problems))
print(f"ok: PCA v{report['pca_version']}, {len(report['batches'])} batch(es), labels {report['labels']}")
PY
}

preflight
create_cluster
build_images
create_namespace
deploy_moto
provision_stack
deploy_lambda
install_spark_operator
install_pomona
port_forward_moto
upload_samples
run_job
check_outputs
step "done"
