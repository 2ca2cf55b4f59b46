"""Encryption failures: counted, reported, and answered 500 ``crypto_error`` (never
garbage)."""

from __future__ import annotations

import logging

from innera.errors import AppError
from innera.observability import sentry
from innera.observability.metrics import Metrics

log = logging.getLogger("innera.crypto")


class CryptoError(AppError):
    status, code = 500, "crypto_error"
    message = "The data could not be encrypted or decrypted"


def crypto_failed(metrics: Metrics, operation: str, exc: BaseException, **context: str
                  ) -> CryptoError:
    """Count ``innera_crypto_errors_total{operation}``, send to Sentry, log; return the
    error to raise."""
    metrics.crypto_errors.labels(operation=operation).inc()
    log.error("%s failed: %s (%s)", operation, type(exc).__name__,
              ", ".join(f"{k}={v}" for k, v in context.items()))
    sentry.capture_task_exception(exc, component="crypto", operation=operation, **context)
    return CryptoError()
