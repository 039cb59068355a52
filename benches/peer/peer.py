#!/usr/bin/env python3
"""The peer of the pipeline benchmark: the same workload done the way an erniebot user writes it.

One asyncio task per prompt, at most CONCURRENCY at once (an asyncio.Semaphore), each calling
`await erniebot.Image.acreate(model="ernie-vilg-v2", ...)` and then downloading every image URL of
the answer with aiohttp (a dependency of erniebot) into OUT. The SDK is used as it comes:

- its polling is unchanged: after the submit it queries at once, then every
  `POLLING_INTERVAL_SECS` (5 s) until the task is final;
- its retries: `max_retries` defaults to 0, so the first rate refusal (error 18, or 15 when every
  slot is busy) would fail the item; a batch user sets it, so this script sets
  `erniebot.max_retries = 10` and the SDK's own back-off applies (exponential, 1 to 10 s, plus up
  to 0.5 s of jitter).

    python3 benches/peer/peer.py --base-url http://127.0.0.1:PORT --prompts prompts.txt \\
        --concurrency 4 --out /tmp/peer-images

Prints one JSON object on stdout: items, images, failed, errors by type, span_s (first submit to
the last image written), the erniebot version. Exit codes: 0 every item archived, 1 some failed,
77 skipped (erniebot is not installed: pip install 'erniebot>=0.5,<0.6').
"""

import argparse
import asyncio
import collections
import json
import os
import sys
import time
import urllib.parse
import urllib.request

SKIP = 77


def fetch_token(base_url, ak, sk):
    query = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": ak, "client_secret": sk}
    )
    request = urllib.request.Request(f"{base_url}/oauth/2.0/token?{query}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read().decode("utf-8"))
    return body["access_token"]


async def main_async(args, erniebot, aiohttp):
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    os.makedirs(args.out, exist_ok=True)
    semaphore = asyncio.Semaphore(args.concurrency)
    errors = collections.Counter()
    images = 0
    first_submit = None
    last_written = None

    async with aiohttp.ClientSession() as session:

        async def one(i, prompt):
            nonlocal images, first_submit, last_written
            async with semaphore:
                if first_submit is None:
                    first_submit = time.monotonic()
                try:
                    response = await erniebot.Image.acreate(
                        model="ernie-vilg-v2",
                        prompt=prompt,
                        width=args.width,
                        height=args.height,
                        version="v2",
                        image_num=1,
                    )
                    for j, url in enumerate(response.get_result()):
                        async with session.get(url) as r:
                            r.raise_for_status()
                            data = await r.read()
                        with open(os.path.join(args.out, f"{i:06d}-{j}.png"), "wb") as out:
                            out.write(data)
                        images += 1
                        last_written = time.monotonic()
                except Exception as e:  # noqa: BLE001 - counted and reported, the batch goes on
                    errors[type(e).__name__] += 1

        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    span = (last_written - first_submit) if first_submit and last_written else None
    return {
        "items": len(prompts),
        "images": images,
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "span_s": span,
        "erniebot": erniebot.__version__,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--prompts", required=True, help="one prompt per line")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", required=True, help="folder the images are written to")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--ak", default="sim-ak")
    parser.add_argument("--sk", default="sim-sk")
    args = parser.parse_args()
    base_url = args.base_url.rstrip("/")
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

    try:
        import aiohttp
        import erniebot
    except ImportError as e:
        print(f"SKIP: erniebot is not installed ({e}); pip install 'erniebot>=0.5,<0.6'")
        return SKIP

    erniebot.api_type = "yinian"
    erniebot.access_token = fetch_token(base_url, args.ak, args.sk)
    erniebot.api_base_url = f"{base_url}/rpc/2.0/ernievilg/v1"
    erniebot.max_retries = 10

    report = asyncio.run(main_async(args, erniebot, aiohttp))
    print(json.dumps(report))
    return 0 if report["failed"] == 0 and report["images"] == report["items"] else 1


if __name__ == "__main__":
    sys.exit(main())
