"""Round-trips the S3 features ESS relies on against a real S3 endpoint.

Creates a scratch bucket, then checks put, get, ranged get, a two-part multipart upload,
presigned GET URLs (SigV4 and V2) fetched by a plain HTTP client, and deletes everything again.
Exits non-zero with the failing step on stderr. Run by scripts/ensure-services.sh.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Any

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

MIB = 1024 * 1024


def make_client(args: argparse.Namespace, signature_version: str = "s3v4") -> Any:
    config = Config(
        signature_version=signature_version,
        s3={"addressing_style": "path"},
        # Swift's s3api predates the SDKs' default CRC checksums; send them only when required.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 1},
    )
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint_url,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name=args.region,
        config=config,
    )


def wait_until_ready(s3: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            s3.list_buckets()
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"s3 not ready after {seconds:.0f}s: {exc}") from exc
            time.sleep(0.3)


def expect(step: str, got: object, want: object) -> None:
    if got != want:
        shown_got = f"{len(got)} bytes" if isinstance(got, bytes) else repr(got)
        shown_want = f"{len(want)} bytes" if isinstance(want, bytes) else repr(want)
        raise SystemExit(f"s3 check failed at {step}: got {shown_got}, want {shown_want}")


def check(args: argparse.Namespace) -> None:
    s3 = make_client(args)
    wait_until_ready(s3, args.wait)
    bucket = f"ess-check-{uuid.uuid4().hex[:12]}"
    small_key = "small/object.bin"
    big_key = "multipart/object.bin"
    small = os.urandom(64 * 1024)
    # S3's minimum part size is 5 MiB for every part but the last; keep both above it.
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB + 1234)]

    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key=small_key, Body=small)
        got = s3.get_object(Bucket=bucket, Key=small_key)["Body"].read()
        expect("get", got, small)
        got = s3.get_object(Bucket=bucket, Key=small_key, Range="bytes=100-4195")["Body"].read()
        expect("ranged get", got, small[100:4196])

        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=big_key)["UploadId"]
        etags = [
            s3.upload_part(
                Bucket=bucket, Key=big_key, UploadId=upload_id, PartNumber=number, Body=body
            )["ETag"]
            for number, body in enumerate(parts, start=1)
        ]
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key=big_key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, 1)]
            },
        )
        whole = b"".join(parts)
        head = s3.head_object(Bucket=bucket, Key=big_key)
        expect("multipart size", head["ContentLength"], len(whole))
        # A range across the part boundary is what a straddling event range reads.
        start, end = 5 * MIB - 1000, 5 * MIB + 999
        got = s3.get_object(Bucket=bucket, Key=big_key, Range=f"bytes={start}-{end}")["Body"]
        expect("multipart ranged get", got.read(), whole[start : end + 1])

        with httpx.Client(timeout=30) as http:
            for version in ("s3v4", "s3"):
                url = make_client(args, version).generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": small_key}, ExpiresIn=300
                )
                response = http.get(url)
                expect(f"presigned GET ({version}) status", response.status_code, 200)
                expect(f"presigned GET ({version}) body", response.content, small)
            response = http.get(f"{args.endpoint_url}/{bucket}/{small_key}")
            if response.status_code < 400:
                raise SystemExit(f"s3 check failed: unsigned GET gave {response.status_code}")
    finally:
        for key in (small_key, big_key):
            s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_bucket(Bucket=bucket)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    env = os.environ.get
    parser.add_argument("--endpoint-url", default=env("ESS_TEST_S3_ENDPOINT_URL"))
    parser.add_argument("--access-key", default=env("ESS_TEST_S3_ACCESS_KEY"))
    parser.add_argument("--secret-key", default=env("ESS_TEST_S3_SECRET_KEY"))
    parser.add_argument("--region", default=env("ESS_TEST_S3_REGION", "us-east-1"))
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for readiness")
    args = parser.parse_args()
    if not (args.endpoint_url and args.access_key and args.secret_key):
        parser.error("endpoint, access key and secret key are required (flags or ESS_TEST_S3_*)")
    started = time.monotonic()
    try:
        check(args)
    except (BotoCoreError, ClientError, httpx.HTTPError) as exc:
        raise SystemExit(f"s3 check failed: {exc}") from exc
    elapsed = time.monotonic() - started
    print(f"s3:        round trip ok (put, get, range, multipart, presigned v4+v2) {elapsed:.1f}s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
