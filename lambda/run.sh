#!/bin/bash
# The Lambda's handler. The Web Adapter layer (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) runs this script,
# waits for GET /health on AWS_LWA_PORT, then relays each invocation (response_stream mode) to the same
# ASGI server a local run uses.
export PYTHONPATH="${LAMBDA_TASK_ROOT:-$(dirname "$0")}${PYTHONPATH:+:$PYTHONPATH}"
exec python -m uvicorn gateway.app:app --host 127.0.0.1 --port "${AWS_LWA_PORT:-8080}" \
  --no-access-log --log-level warning
