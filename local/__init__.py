"""The local baseline: llama.cpp's llama-server on this machine, a random-weight model, and the demo."""
