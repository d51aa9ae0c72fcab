"""The streaming gateway: an OpenAI-compatible chat-completions API in front of a SageMaker endpoint.

Run it anywhere an ASGI app runs (`uvicorn gateway.app:app`); on Lambda the Web Adapter layer starts
the same command from `run.sh`. Settings come from `GATEWAY_*` environment variables (see settings.py).
Kept import-free so that the start path loads only what a request needs.
"""
