"""The chat playground (playground/) on AWS: a private S3 bucket behind CloudFront (`demoUi: true`).

- The bucket is private: all four public-access blocks on, bucket-owner-enforced ownership (no ACLs),
  SSE-S3 encryption stated, and a bucket policy that lets only this distribution read objects, through
  origin access control (SigV4-signed requests; "cloudfront.amazonaws.com" with AWS:SourceArn the
  distribution's ARN, as the CloudFront Developer Guide's OAC bucket policy), and refuses plain HTTP.
- CloudFront serves it over HTTPS only (viewer protocol `https-only`, TLS 1.2+ between CloudFront and S3),
  GET/HEAD only, with a response headers policy: HSTS, nosniff, frame DENY, no referrer, and a CSP that
  runs only the page's own files and lets it fetch only from itself and https endpoints (the user may
  point it at any endpoint; naming the gateway's host would be circular, as the gateway needs this origin).
- Logs: CloudFront standard logs and S3 server access logs go to a log bucket of their own (private,
  encrypted, expired after `log_retention_days`). CloudFront's legacy standard logging writes with an
  ACL grant, so that bucket keeps ACLs on (BucketOwnerPreferred) and blocks public ones.
- The page's files are BucketObjects; `DemoUiConfig` adds `config.json` (the gateway's base URL, never its
  key) once the gateway exists: the gateway needs this distribution's origin for CORS first.

Outputs: `url` (https://<domain>/), `origin` (https://<domain>, what the gateway allows), the bucket names
and the distribution id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
from pulumi_aws import cloudfront, s3

from components._args import InvalidArgs, require, require_choice
from components.aws_common import LOG_RETENTION_DAYS, policy_document

_COMPONENT = "DemoUi"
PAGE_DIR = Path(__file__).resolve().parent.parent / "playground"
# key -> content type; the page has no build step, these files are what is served.
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
CONFIG_KEY = "config.json"
PRICE_CLASSES = ("PriceClass_100", "PriceClass_200", "PriceClass_All")
# AWS managed cache policy "CachingOptimized" (CloudFront Developer Guide, managed cache policies).
CACHING_OPTIMIZED_POLICY_ID = "658327ea-f89d-4fab-a63d-7e88639e58f6"
# Served with every object: the page changes with each `pulumi up`, and a stale page would call a stale API.
OBJECT_CACHE_CONTROL = "no-cache"
HSTS_SECONDS = 63_072_000  # two years


# The page's CSP as CloudFront sends it: only its own files run; fetches go to itself or https endpoints.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self' https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class DemoUiArgs:
    log_retention_days: int = 30
    price_class: str = "PriceClass_100"
    page_dir: Path = PAGE_DIR
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require(_COMPONENT, "log_retention_days", isinstance(self.log_retention_days, int)
                and not isinstance(self.log_retention_days, bool) and self.log_retention_days in LOG_RETENTION_DAYS,
                f"{self.log_retention_days!r} is not one of {', '.join(map(str, LOG_RETENTION_DAYS))} "
                "(the log bucket's expiry, kept like the stack's CloudWatch logs)")
        require_choice(_COMPONENT, "price_class", self.price_class, PRICE_CLASSES)
        missing = [name for name in PAGE_FILES if not (Path(self.page_dir) / name).is_file()]
        if missing:
            raise InvalidArgs(_COMPONENT, "page_dir", f"{self.page_dir} lacks {', '.join(missing)} (the playground page)")


class DemoUi(pulumi.ComponentResource):
    url: pulumi.Output[str]
    origin: pulumi.Output[str]
    bucket_name: pulumi.Output[str]
    log_bucket_name: pulumi.Output[str]
    distribution_id: pulumi.Output[str]

    def __init__(self, name: str, args: DemoUiArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:demo_ui:{_COMPONENT}", name, None, opts)
        self._name = name
        tags = dict(args.tags)
        child = pulumi.ResourceOptions(parent=self)

        logs, logs_acls_on = self._private_bucket(f"{name}-logs", tags, object_ownership="BucketOwnerPreferred")
        s3.BucketLifecycleConfiguration(
            f"{name}-logs-expiry", bucket=logs.id,
            rules=[{"id": "expire-logs", "status": "Enabled", "filter": {"prefix": ""},
                    "expiration": {"days": args.log_retention_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 1}}],
            opts=child,
        )
        site, _ = self._private_bucket(f"{name}-site", tags, object_ownership="BucketOwnerEnforced")
        site_logging = s3.BucketLogging(f"{name}-site-access-logs", bucket=site.id, target_bucket=logs.id,
                                        target_prefix="s3-access/", opts=child)

        oac = cloudfront.OriginAccessControl(
            f"{name}-oac", description=f"{name}: CloudFront reads the page bucket with SigV4",
            origin_access_control_origin_type="s3", signing_behavior="always", signing_protocol="sigv4", opts=child,
        )
        headers = cloudfront.ResponseHeadersPolicy(
            f"{name}-security-headers",
            comment=f"{name}: security headers of the playground page",
            security_headers_config={
                "content_security_policy": {
                    "content_security_policy": CONTENT_SECURITY_POLICY,
                    "override": True,
                },
                "content_type_options": {"override": True},
                "frame_options": {"frame_option": "DENY", "override": True},
                "referrer_policy": {"referrer_policy": "no-referrer", "override": True},
                "strict_transport_security": {"access_control_max_age_sec": HSTS_SECONDS, "include_subdomains": True,
                                              "preload": False, "override": True},
            },
            opts=child,
        )
        distribution = cloudfront.Distribution(
            f"{name}-cdn",
            comment=f"{name}: the LLM chat playground",
            enabled=True,
            is_ipv6_enabled=True,
            http_version="http2and3",
            price_class=args.price_class,
            default_root_object="index.html",
            origins=[{"origin_id": "page", "domain_name": site.bucket_regional_domain_name,
                      "origin_access_control_id": oac.id}],
            default_cache_behavior={
                "target_origin_id": "page",
                "viewer_protocol_policy": "https-only",
                "allowed_methods": ["GET", "HEAD"],
                "cached_methods": ["GET", "HEAD"],
                "compress": True,
                "cache_policy_id": CACHING_OPTIMIZED_POLICY_ID,
                "response_headers_policy_id": headers.id,
            },
            restrictions={"geo_restriction": {"restriction_type": "none"}},
            viewer_certificate={"cloudfront_default_certificate": True},
            logging_config={"bucket": logs.bucket_domain_name, "prefix": "cloudfront/", "include_cookies": False},
            tags=tags,
            # A new bucket starts with ACLs off (BucketOwnerEnforced, since April 2023); CloudFront refuses a log
            # bucket without ACLs ("does not enable ACL access"), so the distribution waits for the ownership
            # change, which nothing in its inputs orders (CloudFront Developer Guide, standard logging (legacy)).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[site_logging, logs_acls_on]),
        )
        s3.BucketPolicy(
            f"{name}-site-policy", bucket=site.id,
            policy=pulumi.Output.all(site.arn, distribution.arn).apply(lambda v: policy_document([
                {"Sid": "CloudFrontReadsThroughOAC", "Effect": "Allow",
                 "Principal": {"Service": "cloudfront.amazonaws.com"}, "Action": "s3:GetObject",
                 "Resource": f"{v[0]}/*", "Condition": {"StringEquals": {"AWS:SourceArn": v[1]}}},
                _deny_plain_http(v[0]),
            ])),
            opts=child,
        )
        s3.BucketPolicy(
            f"{name}-logs-policy", bucket=logs.id,
            policy=pulumi.Output.all(logs.arn, site.arn).apply(lambda v: policy_document([
                # S3 server access logging writes as the logging service (S3 User Guide, "Permissions for
                # log delivery": bucket policy for logging.s3.amazonaws.com).
                {"Sid": "S3ServerAccessLogs", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"},
                 "Action": "s3:PutObject", "Resource": f"{v[0]}/s3-access/*",
                 "Condition": {"ArnLike": {"aws:SourceArn": v[1]}}},
                _deny_plain_http(v[0]),
            ])),
            opts=child,
        )
        for key, content_type in PAGE_FILES.items():
            s3.BucketObjectv2(
                f"{name}-{key.replace('.', '-')}", bucket=site.id, key=key,
                source=pulumi.FileAsset(str(Path(args.page_dir) / key)),
                content_type=content_type, cache_control=OBJECT_CACHE_CONTROL, tags=tags, opts=child,
            )

        self.bucket_name = site.bucket
        self.log_bucket_name = logs.bucket
        self.distribution_id = distribution.id
        self.origin = distribution.domain_name.apply(lambda domain: f"https://{domain}")
        self.url = self.origin.apply(lambda origin: origin + "/")
        self.register_outputs({
            "url": self.url,
            "origin": self.origin,
            "bucket_name": self.bucket_name,
            "log_bucket_name": self.log_bucket_name,
            "distribution_id": self.distribution_id,
        })

    def _private_bucket(self, name: str, tags: Mapping[str, str], *,
                        object_ownership: str) -> tuple[s3.Bucket, s3.BucketOwnershipControls]:
        child = pulumi.ResourceOptions(parent=self)
        # force_destroy: `pulumi destroy` removes the page and its logs with the stack.
        bucket = s3.Bucket(name, force_destroy=True, tags=tags, opts=child)
        s3.BucketPublicAccessBlock(f"{name}-public-access", bucket=bucket.id, block_public_acls=True,
                                   block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True,
                                   opts=child)
        ownership = s3.BucketOwnershipControls(f"{name}-ownership", bucket=bucket.id,
                                               rule={"object_ownership": object_ownership}, opts=child)
        # SSE-S3: S3 encrypts every object by default since 2023; stated so the guardrail sees it. (SSE-KMS
        # would need the distribution in the key policy, and CloudFront's legacy logs cannot write to it.)
        s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}, "bucket_key_enabled": True}],
            opts=child,
        )
        return bucket, ownership


def _deny_plain_http(bucket_arn: str) -> dict:
    return {"Sid": "RefusePlainHttp", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


@dataclass(frozen=True)
class DemoUiConfigArgs:
    bucket_name: pulumi.Input[str]
    # The gateway's OpenAI base URL (ending in /v1); the page fills it in. Never the key.
    api_url: pulumi.Input[str]
    model: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if isinstance(self.api_url, str):
            require("DemoUiConfig", "api_url", self.api_url.startswith("https://"),
                    f"must be the gateway's https base URL, got {self.api_url!r}")


class DemoUiConfig(pulumi.ComponentResource):
    """`config.json` beside the page: the endpoint it talks to. Separate from DemoUi because the gateway
    needs DemoUi's origin (CORS) before its URL exists."""

    def __init__(self, name: str, args: DemoUiConfigArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__("llminfer:demo_ui:DemoUiConfig", name, None, opts)
        body = pulumi.Output.from_input(args.api_url).apply(
            lambda url: json.dumps({"baseUrl": url, **({"model": args.model} if args.model else {})}))
        config = s3.BucketObjectv2(f"{name}-config", bucket=args.bucket_name, key=CONFIG_KEY, content=body,
                                   content_type="application/json", cache_control=OBJECT_CACHE_CONTROL,
                                   tags=dict(args.tags), opts=pulumi.ResourceOptions(parent=self))
        self.key = config.key
        self.register_outputs({"key": self.key})


__all__ = ["DemoUi", "DemoUiArgs", "DemoUiConfig", "DemoUiConfigArgs", "CONTENT_SECURITY_POLICY"]
