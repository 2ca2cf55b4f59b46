"""Attachments on S3 or an S3-compatible endpoint, through boto3 run off the event loop.

boto3 is blocking; every call goes through ``trio.to_thread`` behind a limiter so that a slow
S3 cannot take every worker thread.
"""

from __future__ import annotations

from typing import Any

import trio


class S3Storage:
    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str | None,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        max_concurrency: int = 16,
        timeout_s: float = 10.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"} if endpoint else None,
                max_pool_connections=max_concurrency,
            ),
        )

    async def call(self, method: str, **kwargs: Any) -> Any:
        """Run one boto3 client method in a worker thread."""
        fn = getattr(self.client, method)
        return await trio.to_thread.run_sync(
            lambda: fn(**kwargs), limiter=self.limiter, abandon_on_cancel=True
        )

    async def check_health(self) -> None:
        await self.call("head_bucket", Bucket=self.bucket)
