"""The front both vLLM stacks (Azure VM, GKE pod) put before the engine: a Caddy config, rendered here.

Why a front at all: vLLM's `--api-key` guards only paths that start with `/v1` (the `authentication`
middleware in vLLM 0.8.4 `vllm/entrypoints/openai/api_server.py` returns early with
`if not url_path.startswith("/v1")`; vLLM's security docs list the other routes as unprotected). So
`POST /invocations` (chat completions), `/tokenize`, `/detokenize`, `/pooling`, `/score`, `/rerank`,
`/classify`, `/metrics`, `/version`, `/ping`, `/docs`, ... answer anyone who reaches vLLM's port. The front
is the only thing that listens where clients can reach; vLLM listens on 127.0.0.1 behind it.

What the front does, and nothing else:

- `/v1/...` (any method but OPTIONS, which vLLM's key check waves through) -> vLLM, byte for byte, streamed as it comes (`flush_interval -1`: server-sent events are not
  buffered). The API key check stays with vLLM (it answers 401), so the front holds no secret.
- `GET|HEAD /health` (`HEALTH_PATH`) -> vLLM's own `/health`, so a load balancer's or kubelet's check
  sees the engine's health (a 502 while vLLM is down).
- with `metrics_listen`, a second listener that serves only `GET /metrics` (`METRICS_PATH`) from vLLM,
  for a scraper the caller admits to that port alone (GKE: the Managed Prometheus collectors).
- with `page_dir` (demoUi), the chat playground on the same origin: `GET|HEAD /`, `/index.html`,
  `/playground.js`, `/playground.css` from that folder (nothing else in it), and `/config.json` naming
  `/v1` as the base URL. Same origin, so no CORS; its CSP lets the page fetch only this origin.
- everything else: `404 {"error": "not found"}`, never reaching vLLM.

The `/v1/` test is case-sensitive (`path_regexp`; Caddy's `path` matcher ignores case) and Caddy matches on
the cleaned path while it forwards the raw one, so a request whose raw path has `/.` (dot segments), `//`,
`\\` or any percent-escape is refused too: what vLLM routes is then exactly what was checked
(`/v1/../invocations`, `/v1/%2e%2e/invocations`, `//invocations` all get the 404). The admin API is off
(no admin listener on :2019). Caddy writes its autosave.json under `XDG_CONFIG_HOME` and, with TLS, its
certificates under `XDG_DATA_HOME`: both must be writable.

Works with Debian's caddy 2.6.2 and the caddy:2.10 image (the tests run it against a real Caddy).
"""

from __future__ import annotations

import re
from pathlib import Path

HEALTH_PATH = "/health"  # the front's health path, proxied to vLLM's /health
METRICS_PATH = "/metrics"  # served only on the metrics listener, proxied to vLLM's /metrics
API_PREFIX = "/v1/"  # the only client paths passed to vLLM (the prefix vLLM's --api-key guards)
REFUSED_STATUS = 404
REFUSED_BODY = '{"error": "not found"}'
CADDY_IMAGE = "caddy:2.10"

# A raw request target (path before any '?') with a dot segment, an empty segment, a backslash or any
# percent-escape: refused, because Caddy matches on the cleaned, decoded path but forwards the raw one.
_RAW_PATH_TRICKS = r"^[^?]*(/\.|//|\\|%)"
_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[0-9A-Za-z.-]*):(?P<port>[0-9]{1,5})$")
_UPSTREAM = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[0-9A-Za-z.-]+):[0-9]{1,5}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s{}]+@[^@\s{}]+\.[^@\s{}]+$")
_PAGE_DIR = re.compile(r"^/[A-Za-z0-9_./-]*$")
# The playground's files (playground/), the only ones served from page_dir, and what the page is told.
PAGE_FILES = ("index.html", "playground.js", "playground.css")
PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
PAGE_CONFIG_PATH = "/config.json"
PAGE_CONFIG_BODY = '{"baseUrl": "/v1"}'
PAGE_CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def caddyfile(
    listen: str,
    upstream: str,
    *,
    tls_domain: str = "",
    tls_email: str = "",
    metrics_listen: str = "",
    page_dir: str = "",
) -> str:
    """The Caddyfile of the front.

    listen: `":PORT"` or `"HOST:PORT"` (HOST is the address bound, e.g. `127.0.0.1`); plain HTTP, or with
    `tls_domain` HTTPS for that domain on that port (use `":443"`; Caddy then also takes port 80 for the
    ACME HTTP-01 challenge and the redirect to HTTPS). upstream: vLLM's `"HOST:PORT"`, e.g.
    `"127.0.0.1:8000"`. tls_email: the ACME account email (optional). metrics_listen: `":PORT"` of a
    second plain-HTTP listener that serves only `GET /metrics`; `""` serves no metrics. page_dir: the
    absolute folder holding the playground's files (demoUi), served on the API's origin; `""` serves none.
    """
    bind, port = _split_listen("listen", listen)
    if not _UPSTREAM.fullmatch(upstream or ""):
        raise ValueError(f"upstream {upstream!r} is not HOST:PORT, e.g. 127.0.0.1:8000")
    if tls_domain and not _DOMAIN.fullmatch(tls_domain):
        raise ValueError(f"tls_domain {tls_domain!r} is not a DNS name such as llm.example.com")
    if tls_email and not tls_domain:
        raise ValueError("tls_email needs tls_domain")
    if tls_email and not _EMAIL.fullmatch(tls_email):
        raise ValueError(f"tls_email {tls_email!r} is not an email address")
    if page_dir and not _PAGE_DIR.fullmatch(page_dir):
        raise ValueError(f"page_dir {page_dir!r} is not an absolute path of letters, digits, _ . / -, "
                         "e.g. /srv/playground")
    metrics = _split_listen("metrics_listen", metrics_listen) if metrics_listen else None
    if metrics is not None and metrics[1] == port:
        raise ValueError(f"metrics_listen {metrics_listen!r} must differ from listen {listen!r}")

    # No `persist_config off`: caddy 2.6.2 does not know it (it came later); Caddy then autosaves the
    # adapted JSON under XDG_CONFIG_HOME, which the caller keeps writable (an emptyDir on GKE).
    options = ["\tadmin off"]
    if tls_domain:
        if tls_email:
            options.append(f"\temail {tls_email}")
    else:
        options.append("\tauto_https off")
    # A bare domain on 443 is Caddy's automatic HTTPS site (ACME HTTP-01 and the redirect on :80).
    site = (tls_domain if port == 443 else f"{tls_domain}:{port}") if tls_domain else f"http://:{port}"
    blocks = ["{\n" + "\n".join(options) + "\n}", _api_site(site, bind, upstream, page_dir)]
    if metrics is not None:
        blocks.append(_metrics_site(f"http://:{metrics[1]}", metrics[0], upstream))
    return "\n\n".join(blocks) + "\n"


def page_files() -> dict[str, str]:
    """The playground's files by name, as the stacks ship them to the front (ConfigMap, cloud-init)."""
    return {name: (PLAYGROUND_DIR / name).read_text() for name in PAGE_FILES}


def _split_listen(name: str, listen: str) -> tuple[str, int]:
    match = _LISTEN.fullmatch(listen or "")
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ValueError(f"{name} {listen!r} is not ':PORT' or 'HOST:PORT', e.g. ':8080'")
    return match["host"].strip("[]"), port


def _bind(bind: str) -> str:
    return f"\tbind {bind}\n" if bind else ""


def _refuse() -> str:
    return f"""\thandle {{
\t\theader Content-Type application/json
\t\trespond `{REFUSED_BODY}` {REFUSED_STATUS}
\t}}
"""


def _page(page_dir: str) -> str:
    """The playground's files and config.json (demoUi), each with the page's security headers."""
    if not page_dir:
        return ""
    files = "|".join(re.escape(name) for name in PAGE_FILES)
    headers = (f'\t\theader {{\n\t\t\tContent-Security-Policy "{PAGE_CONTENT_SECURITY_POLICY}"\n'
               "\t\t\tX-Content-Type-Options nosniff\n\t\t\tX-Frame-Options DENY\n\t\t\tReferrer-Policy no-referrer\n"
               "\t\t\tCache-Control no-cache\n\t\t}\n")
    return f"""\t@page {{
\t\tmethod GET HEAD
\t\tpath_regexp ^/({files})?$
\t\tnot vars_regexp {{http.request.uri}} {_RAW_PATH_TRICKS}
\t}}
\thandle @page {{
{headers}\t\troot * {page_dir}
\t\tfile_server
\t}}
\t@page_config {{
\t\tmethod GET HEAD
\t\tpath_regexp ^{re.escape(PAGE_CONFIG_PATH)}$
\t}}
\thandle @page_config {{
{headers}\t\theader Content-Type application/json
\t\trespond `{PAGE_CONFIG_BODY}` 200
\t}}
"""


def _api_site(site: str, bind: str, upstream: str, page_dir: str = "") -> str:
    return f"""{site} {{
{_bind(bind)}\t@health {{
\t\tmethod GET HEAD
\t\tpath_regexp ^{re.escape(HEALTH_PATH)}$
\t\tnot vars_regexp {{http.request.uri}} {_RAW_PATH_TRICKS}
\t}}
\thandle @health {{
\t\trewrite * {HEALTH_PATH}
\t\treverse_proxy {upstream}
\t}}
\t@api {{
\t\tpath_regexp ^{API_PREFIX}
\t\tnot vars_regexp {{http.request.uri}} {_RAW_PATH_TRICKS}
\t\t# vLLM's key check waves every OPTIONS through (serve/middleware/authenticate.py): none reach it.
\t\tnot method OPTIONS
\t}}
\thandle @api {{
\t\treverse_proxy {upstream} {{
\t\t\t# Tokens go out as vLLM sends them (server-sent events): no buffering.
\t\t\tflush_interval -1
\t\t}}
\t}}
{_page(page_dir)}{_refuse()}}}"""


def _metrics_site(site: str, bind: str, upstream: str) -> str:
    return f"""{site} {{
{_bind(bind)}\t@metrics {{
\t\tmethod GET
\t\tpath_regexp ^{re.escape(METRICS_PATH)}$
\t\tnot vars_regexp {{http.request.uri}} {_RAW_PATH_TRICKS}
\t}}
\thandle @metrics {{
\t\trewrite * {METRICS_PATH}
\t\treverse_proxy {upstream}
\t}}
{_refuse()}}}"""
