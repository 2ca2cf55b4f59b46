"""Encryption failures, in two kinds:

- :class:`CryptoError` (500 ``crypto_error``, counted, reported, never garbage): the data does
  not open with the keys given: a damaged or moved ciphertext, a wrapped data key refused
  by its master key (AWS KMS answering ``InvalidCiphertextException``: the ciphertext or its
  encryption context does not match), a master key version that is not configured. Retrying
  does not help; someone must look (``InneraCryptoErrors``).
- :class:`KeyServiceUnavailable` (503 ``key_service_unavailable``): the key service cannot be
  used right now (AWS KMS unreachable, throttling, the key disabled or pending deletion,
  access denied, no credentials). Nothing is wrong with the data; it opens again when the
  service does. The provider logs one line per failure naming the key and the AWS error
  code, and counts it (``innera_key_service_errors_total``); no Sentry event (a KMS outage
  would otherwise send one per request).
"""

from __future__ import annotations

import logging

from innera.errors import AppError, ServiceUnavailable
from innera.observability import sentry
from innera.observability.metrics import Metrics

log = logging.getLogger("innera.crypto")


class CryptoError(AppError):
    status, code = 500, "crypto_error"
    message = "The data could not be encrypted or decrypted"


class KeyServiceUnavailable(ServiceUnavailable):
    code = "key_service_unavailable"
    message = "The key service is unavailable; try again later"


def crypto_failed(metrics: Metrics, operation: str, exc: BaseException, **context: str
                  ) -> CryptoError:
    """Count ``innera_crypto_errors_total{operation}``, send to Sentry, log; return the
    error to raise."""
    metrics.crypto_errors.labels(operation=operation).inc()
    log.error("%s failed: %s (%s)", operation, type(exc).__name__,
              ", ".join(f"{k}={v}" for k, v in context.items()))
    sentry.capture_task_exception(exc, component="crypto", operation=operation, **context)
    return CryptoError()
