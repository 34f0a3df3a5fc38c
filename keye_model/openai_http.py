"""One client for OpenAI-compatible servers (vLLM, SGLang, a hosted API): an endpoint's URL and a JSON
POST with retries. LongCoT generation (``tasks.generation``) and the judge reward
(``keye_model.reference_judge``) both talk to servers through it.

Retries: connection errors, timeouts and HTTP 429/5xx, with exponential backoff (``backoff_s`` doubling);
any other non-200 answer (a bad model name, a bad key) fails at once, as it will not get better.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

#: HTTP statuses worth another try.
RETRY_STATUS = (429, 500, 502, 503, 504)


def endpoint_url(base_url: str, api: str = "chat") -> str:
    """``http://host:8000`` or ``http://host:8000/v1`` -> ``.../v1/chat/completions`` (``api="chat"``) or
    ``.../v1/completions``."""
    root = base_url.rstrip("/")
    root = root if root.endswith("/v1") else root + "/v1"
    return f"{root}/{'chat/completions' if api == 'chat' else 'completions'}"


def post_json(
    url: str,
    body: dict,
    *,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_retries: int = 3,
    backoff_s: float = 0.5,
) -> dict:
    """The server's JSON answer to ``body``. RuntimeError when it refuses the request; ConnectionError
    naming ``url`` and the attempts when every try failed."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    last: Exception | None = None
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx.TransportError as exc:  # connect/read errors, timeouts, dropped connections
            last = exc
            log.warning("endpoint %s: attempt %d failed: %r", url, attempt + 1, exc)
            continue
        if response.status_code in RETRY_STATUS:
            last = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            log.warning("endpoint %s: attempt %d got %s", url, attempt + 1, last)
            continue
        if response.status_code != 200:
            raise RuntimeError(
                f"endpoint {url} refused the request: HTTP {response.status_code}: {response.text[:300]}"
            )
        return response.json()
    raise ConnectionError(f"endpoint {url} failed after {max_retries + 1} attempts: {last!r}")
