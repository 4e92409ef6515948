"""Configuration from environment variables (prefix ``ELIGIBILITY_``) and an optional ``.env``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fhir_mappings import DEFAULT_PROTOCOL


class TrustedIssuer(BaseModel):
    """A CDS client allowed to call us: its JWT ``iss`` and where its public keys are."""

    iss: str
    jwks_url: str | None = None  # fetched (and cached) when set; the only jku we honour
    jwks: dict | None = None  # or the JWKS inline, exchanged out of band


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ELIGIBILITY_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    # -- protocol and HTTP API --------------------------------------------
    protocol_path: Path = DEFAULT_PROTOCOL  # the protocol single-trial callers use
    # The portfolio (`evaluate --study`): these protocol folders (or protocol.toml files);
    # empty: every folder under fhir_mappings/ that holds a protocol.toml.
    protocol_dirs: list[Path] = Field(default_factory=list)
    max_body_bytes: int = 20 * 1024 * 1024
    # Bounded work per request (issue 19, 6; manual "Limits"): a body whose Bundles hold more
    # entries is refused with 413 before decoding; the body bytes read and decoded at once,
    # all requests together, stay within max_decoding_bytes (a request that does not fit
    # waits up to body_budget_wait_seconds, then gets 503 with Retry-After).
    max_bundle_entries: int = 200_000
    max_decoding_bytes: int = 64 * 1024 * 1024
    body_budget_wait_seconds: float = 2.0
    public_base_url: str | None = None  # our own URL as clients see it (JWT aud, card links)
    cors_origins: list[str] = Field(default_factory=list)
    # Bearer keys callers of $eligibility must present (none: the endpoints are open).
    api_keys: list[SecretStr] = Field(default_factory=list)
    # Pull mode reads patient data with the service's own FHIR credentials; without API keys
    # anyone who reaches the port could read any patient, so the service refuses to start
    # unless this says the network in front of it already restricts callers.
    allow_anonymous_pull: bool = False
    log_level: str = "INFO"

    # -- pull mode: the FHIR server we read from ----------------------------
    fhir_base_url: str | None = None  # None: answer from the built-in demo store
    fhir_auth: Literal["none", "static", "smart"] = "none"
    fhir_token: SecretStr | None = None  # for fhir_auth=static
    smart_client_id: str | None = None
    smart_private_key_path: Path | None = None
    smart_key_id: str | None = None
    smart_alg: Literal["RS384", "ES384"] = "ES384"
    smart_scopes: str = (
        "system/Patient.rs system/Observation.rs system/Condition.rs system/Procedure.rs "
        "system/Consent.rs system/QuestionnaireResponse.rs system/DiagnosticReport.rs"
    )
    connect_timeout: float = 3.0
    read_timeout: float = 8.0
    deadline_seconds: float = 10.0
    retry_attempts: int = 4
    page_size: int = 200
    max_pages: int = 50
    max_entries: int = 10_000
    max_query_length: int = 1800  # longer GET query strings switch to POST _search
    max_response_bytes: int = 50 * 1024 * 1024  # a larger FHIR server response is refused

    # -- CDS Hooks ---------------------------------------------------------
    cds_auth_enabled: bool = True
    # Trust the PUBLIC demo EHR key (service/demo_ehr.py) so `eligibility cds-demo` can show a
    # card; it applies only in demo mode (no fhir_base_url, no cds_allowed_fhir_servers).
    cds_demo_client: bool = True
    cds_issuers: list[TrustedIssuer] = Field(default_factory=list)
    cds_allowed_fhir_servers: list[str] = Field(default_factory=list)
    cds_jwt_algorithms: list[str] = Field(
        default_factory=lambda: ["ES384", "RS384", "ES256", "RS256"]
    )
    cds_jwt_leeway_seconds: int = 30
    cds_jwks_cache_seconds: int = 300
    cds_show_ineligible: bool = False
    # Several studies (trials-screening): at most this many cards, the last one linking to
    # the patient's page for the others ("and K more trials"); 0: no limit.
    cds_max_cards: int = 3
    cds_eligible_indicator: Literal["info", "warning"] = "warning"

    # -- web app (/app/): review page, attestation, SMART App Launch ---------
    # (service/app/; with no FHIR base the app runs in demo mode over the demo store)
    # SMART client registered with the EHR; the app acts only with the signed-in user's token.
    app_smart_client_id: str | None = None
    app_smart_client_secret: SecretStr | None = None  # none: public client (PKCE only)
    # FHIR bases (the launch's ``iss``) the app may be launched from; others are refused.
    app_smart_allowed_issuers: list[str] = Field(default_factory=list)
    app_smart_standalone_iss: str | None = None  # standalone launch; default: first allowed
    # Our /app/launch URL as the EHR knows it: makes the CDS card link a SMART launch.
    app_smart_launch_url: str | None = None
    app_smart_redirect_url: str | None = None  # default: {public base}/app/callback
    app_enrolment_enabled: bool = False  # the "enrol" button writes a ResearchSubject
    # Signs the session cookie (it holds only a session id); random per process when unset.
    app_session_secret: SecretStr | None = None
    app_session_idle_minutes: int = 30
    app_session_max_hours: int = 8
    app_cookie_secure: bool | None = None  # None: Secure when the request came over https
    # The coordinator's worklist (issue 21, 3): the latest `eligibility screen --out` folder
    # (worklist.csv, summary.json, run.json) and the ResultStore of answers given since.
    app_screening_output_dir: Path | None = None
    app_worklist_page_size: int = 50
    # ResultStore: "auto" is redis when REDIS_URL is set, else sqlite (in the private state dir).
    results_backend: Literal["auto", "memory", "sqlite", "redis"] = "auto"
    results_sqlite_path: Path | None = None  # default: <tmp>/cart-eligibility-<uid>/results

    # -- operations: state store, rate limits, CDS feedback, audit (issue 11) ----
    # Backend for the JWT replay cache, rate-limit counters and CDS feedback: "auto" picks
    # redis when REDIS_URL is set, sqlite when several workers run on this host, else memory.
    state_backend: Literal["auto", "memory", "sqlite", "redis"] = "auto"
    redis_url: SecretStr | None = None  # may carry a password: never logged
    state_sqlite_path: Path | None = None  # default: <tmp>/cart-eligibility-state.sqlite3
    state_key_prefix: str = "cart-eligibility:"
    state_memory_max_entries: int = 100_000
    workers: int = 1  # set by `eligibility serve --workers N` (WEB_CONCURRENCY also counts)
    # Per caller (API key, JWT iss/sub, else client address); `limits` notation, fixed window.
    rate_limit_enabled: bool = True
    rate_limit_eligibility: str = "600/minute"
    rate_limit_cds: str = "1200/minute"
    # A card overridden with one of our reasons stays hidden for this patient this long,
    # unless the result changes. Cards are remembered for feedback for cds_card_memory_days.
    cds_override_suppress_days: int = 30
    cds_card_memory_days: int = 7
    # One AuditEvent per evaluation: "log" (logger "audit"), "fhir" (POST, background), "none".
    audit_sink: Literal["log", "fhir", "none"] = "log"
    audit_log_path: Path | None = None  # "log" sink: one JSON AuditEvent per line; None: stdout
    audit_fhir_base_url: str | None = None  # default: FHIR_BASE_URL
    audit_queue_size: int = 1000

    # -- site terminology (issue 10; service/terminology/) -------------------
    # A folder of FHIR R4 ConceptMaps from the site's code systems (and unit strings) to the
    # protocol's LOINC / SNOMED CT codes (and UCUM); validated at start-up.
    site_mappings: Path | None = None
    # Optional FHIR terminology server for ConceptMap/$translate of codes the folder lacks.
    terminology_server_url: str | None = None
    terminology_conceptmap_url: str | None = None  # restrict $translate to this ConceptMap
    terminology_timeout: float = 3.0  # seconds per $translate call; a failure: undetermined
    terminology_cache_seconds: float = 3600.0
    terminology_concurrency: int = 8  # $translate calls in parallel

    # -- continuous screening: FHIR Subscriptions (issue 22; service/subscriptions/) ------
    # Our receiver's URL as the FHIR server reaches it ({public base}/subscription/notify);
    # set: `eligibility serve` subscribes at start and runs the worker and the catch-up.
    subscription_endpoint: str | None = None
    # Shared secret the FHIR server sends in the subscription header (channel.header).
    subscription_secret: SecretStr | None = None
    subscription_header: str = "X-Eligibility-Subscription-Secret"
    subscription_debounce_seconds: float = 1.0  # one evaluation per patient per this long
    subscription_queue_size: int = 10_000  # notifications waiting; more: left to the catch-up
    subscription_max_pending_patients: int = 5_000  # patients waiting for their evaluation
    subscription_concurrency: int = 4  # patients evaluated at once
    subscription_catchup_seconds: float = 60.0  # catch-up period (_lastUpdated > watermark)
    subscription_catchup_overlap_seconds: float = 30.0  # re-read this much before the mark
    subscription_seen_days: float = 14.0  # how long processed versions are remembered
    subscription_activation_timeout: float = 60.0  # wait for `active` (HAPI: a schedule)
    subscription_tasks_enabled: bool = False  # write a FHIR Task on a status change
    subscription_task_role: str = "clinical research coordinator"


@cache
def get_settings() -> Settings:
    return Settings()
