"""The pip arguments that pick the CPU build of torch, for the Makefile's default install.

Usage: python3 scripts/torch_index.py [INDEX_URL]   (default: PyTorch's CPU index)

On Linux, PyPI's torch wheel is the CUDA build (torch plus about 17 nvidia-* / cuda-* packages and
triton, several GB). PyTorch's CPU index has the CPU wheel and torch's own dependencies, so where
that index answers this prints `--index-url INDEX_URL`; where it does not answer within
TIMEOUT_S (a machine that reaches only a local mirror or a wheel folder), it prints nothing and pip
uses its configured index. Either way one line on stderr says which. Standard library only: it runs
before the venv exists.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TIMEOUT_S = 3  # seconds to wait for the index: a reachable one answers in well under a second


def reachable(url: str, timeout: float = TIMEOUT_S) -> bool:
    """True if `url`/torch/ (the index's torch page) answers 200 within `timeout` seconds."""
    request = urllib.request.Request(url.rstrip("/") + "/torch/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):  # refused, no route, DNS, timeout, 404, bad URL
        return False


def pip_args(url: str = CPU_INDEX, timeout: float = TIMEOUT_S) -> list[str]:
    return ["--index-url", url] if reachable(url, timeout) else []


def main(argv: list[str]) -> None:
    url = argv[0] if argv else CPU_INDEX
    args = pip_args(url)
    where = f"the CPU wheel from {url}" if args else f"pip's configured index ({url} did not answer in {TIMEOUT_S} s)"
    print(f"torch: {where}", file=sys.stderr)
    print(" ".join(args))


if __name__ == "__main__":
    main(sys.argv[1:])
