#!/usr/bin/env python3
"""Checks that the erniebot SDK (0.5.x) works against `runner sim`.

Fetches an access token from the simulator's token endpoint, points the SDK's "yinian" backend
at the simulator, calls `erniebot.Image.create(...)`, then downloads every image URL of the answer
and checks that each is a PNG of the requested size (signature and IHDR, standard library only).

    python3 tests/python/erniebot_check.py --base-url http://127.0.0.1:8787 [--ak sim-ak --sk sim-sk]

Exit codes: 0 passed, 1 failed, 77 skipped (the erniebot package is not installed).
"""

import argparse
import json
import os
import struct
import sys
import urllib.parse
import urllib.request

SKIP = 77
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    return 1


def fetch_token(base_url, ak, sk):
    query = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": ak, "client_secret": sk}
    )
    request = urllib.request.Request(f"{base_url}/oauth/2.0/token?{query}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read().decode("utf-8"))
    return body["access_token"]


def png_size(data):
    """(width, height) from a PNG's IHDR chunk, or None if it is no PNG."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the simulator, e.g. http://127.0.0.1:8787")
    parser.add_argument("--ak", default="sim-ak")
    parser.add_argument("--sk", default="sim-sk")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--image-num", type=int, default=2)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="seconds between the SDK's polls (its default is 5)",
    )
    args = parser.parse_args()
    base_url = args.base_url.rstrip("/")

    # Loopback only: never let a proxy from the environment get in the way.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

    try:
        import erniebot
        from erniebot.resources.resource import EBResource
    except ImportError as e:
        print(f"SKIP: the erniebot package is not installed ({e}); pip install 'erniebot>=0.5,<0.6'")
        return SKIP

    token = fetch_token(base_url, args.ak, args.sk)
    erniebot.api_type = "yinian"
    erniebot.access_token = token
    erniebot.api_base_url = f"{base_url}/rpc/2.0/ernievilg/v1"
    if args.poll_interval is not None:
        # The SDK sleeps a fixed 5 s between polls; a test need not wait that long.
        EBResource.POLLING_INTERVAL_SECS = args.poll_interval

    response = erniebot.Image.create(
        model="ernie-vilg-v2",
        prompt="请帮我画一只可爱的大猫咪",
        width=args.width,
        height=args.height,
        version="v2",
        image_num=args.image_num,
    )

    data = response.data
    if data.get("task_status") != "SUCCESS":
        return fail(f"task did not succeed: {data}")
    sub_tasks = data.get("sub_task_result_list", [])
    if len(sub_tasks) != args.image_num:
        return fail(f"expected {args.image_num} sub-tasks, got {len(sub_tasks)}")
    urls = [image["img_url"] for sub in sub_tasks for image in sub["final_image_list"]]
    passed = response.get_result()
    if len(urls) != args.image_num or sorted(passed) != sorted(urls):
        return fail(f"expected {args.image_num} passing image URLs, got {urls} (passed: {passed})")

    for url in urls:
        with urllib.request.urlopen(url, timeout=30) as image:
            content = image.read()
            content_type = image.headers.get("Content-Type")
        size = png_size(content)
        if size is None:
            return fail(f"{url} is not a PNG ({len(content)} bytes, {content_type})")
        if size != (args.width, args.height):
            return fail(f"{url} is {size[0]}x{size[1]}, expected {args.width}x{args.height}")
        print(f"ok: {url.split('?')[0]} is a {size[0]}x{size[1]} PNG of {len(content)} bytes")

    print(f"PASS: erniebot {erniebot.__version__} Image.create made {len(urls)} images via {base_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
