"""One exception tree for the errors the service raises on purpose.

Why one root: ``except ValueError`` used to catch a bad protocol file, an unreadable unit and a
malformed request alike, so a bug in the protocol could come out as "the input holds data this
rule cannot read". Each family says whose fault it is, and so how it is answered:

- :class:`InputError`: the caller's input cannot be evaluated (HTTP 400, CLI exit 2);
- :class:`ProtocolError`: the protocol files are inconsistent (a bug in the data; never turned
  into an undetermined criterion);
- :class:`UpstreamError`: a server we call (FHIR server, terminology server, state store)
  failed (HTTP 502/504, CLI exit 3); the FHIR family is ``service.fhir.errors.FhirError``;
- :class:`ConfigurationError`: the settings cannot work (refused at start).

``InputError`` and ``ProtocolError`` keep ``ValueError`` as a second base, and
``ConfigurationError`` ``RuntimeError``: callers that caught those still do.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error the service raises on purpose (not a bug in Python code)."""


class InputError(ServiceError, ValueError):
    """The input cannot be evaluated at all (not JSON, not a Bundle, no single Patient)."""


class ProtocolError(ServiceError, ValueError):
    """The protocol files are inconsistent (a bug in the data, found at load time)."""


class UpstreamError(ServiceError):
    """A server the service calls failed or answered something it cannot use."""


class ConfigurationError(ServiceError, RuntimeError):
    """Settings that cannot work; raised at start, never at request time."""


# Raised by a rule or the record builder, these are bugs of the set-up, not of the patient's
# data: a catch-all that turns unreadable data into "undetermined" must let them through.
NOT_DATA_ERRORS: tuple[type[Exception], ...] = (ProtocolError, ConfigurationError)
