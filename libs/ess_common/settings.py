"""Settings of every ESS process, read from `ESS_*` environment variables.

Built in each service's `main()`, never at import, and validated there so that a wrong
setting stops the process at start with a readable message.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ess_common import enrollment
from ess_common.events import NOTICE_EVENTS
from ess_common.messaging.stomp_queue import ingress_queue
from ess_common.source_access import SourceAccess
from ess_common.url_policy import UrlPolicy, parse_networks

_BUS_SCHEMES = ("amqp://", "amqps://", "memory://")
_STORE_SCHEMES = ("s3://", "file://")
_DB_SCHEMES = ("postgresql+asyncpg://", "sqlite+aiosqlite://")
# uproot's level ranges: zlib and lzma 1-9, lz4 1-12, zstd 1-22.
_SPLIT_COMPRESSION = re.compile(
    r"source|none|(zlib|lzma):[1-9]|lz4:([1-9]|1[0-2])|zstd:([1-9]|1[0-9]|2[0-2])"
)
# The same names ess_splitter.command substitutes; the splitter checks the template again.
_SPLIT_COMMAND_PLACEHOLDERS = frozenset(
    {"input", "output", "first_event", "last_event", "skip_events", "n_events"}
)

#: Who may call the head API; see ess_head_api.auth for what each may do.
ROLES = ("panda", "pilot", "edge", "admin")
MIN_TOKEN_LENGTH = 16
#: The notices the notifier sends on the PanDA-facing exchange.
PANDA_NOTICES = tuple(event.type_name() for event in NOTICE_EVENTS)


class EssSettings(BaseSettings):
    """What the head services and the edges share."""

    model_config = SettingsConfigDict(env_prefix="ESS_", extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///var/ess.db"
    bus_url: str = "memory://"
    exchange: str = "ess"
    store_url: str = "file://var/objects"
    s3_endpoint_url: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    #: Range files one process uploads at once (all its files together), and the size of its
    #: S3 client's connection pool: a store round trip per object is paid this many at a time.
    upload_concurrency: int = Field(default=16, ge=1, le=1024)
    #: Signs URLs for the local directory store; S3 signs its own.
    url_signing_key: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_hex(16)))
    signed_url_ttl_s: int = Field(default=600, ge=10, le=7 * 24 * 3600)
    head_url: str = "http://127.0.0.1:8000"
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    #: Where spans go: an OpenTelemetry collector's OTLP/HTTP endpoint, e.g.
    #: http://collector:4318. None exports nothing (trace ids still reach the logs).
    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    #: The Prometheus metrics port of a service without an HTTP server of its own (broker,
    #: notifier, edge): `GET /metrics` there. None serves none. The head serves `/metrics` on
    #: its API port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    #: Deliveries of one message before it goes to its dead-letter queue.
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=1.0, ge=0.0)
    #: The longest wait between two deliveries of a message being retried: its own failures
    #: double the wait up to this, and so does an outage of the database or the bus, for which
    #: a message is retried for as long as it lasts (never dead-lettered).
    retry_backoff_max_s: float = Field(default=60.0, gt=0)
    prefetch: int = Field(default=8, ge=1)
    #: Deliveries of one message given back unacknowledged (its consumer died holding it)
    #: before RabbitMQ dead-letters it (the quorum queues' `x-delivery-limit`). Changing it
    #: on an existing deployment needs the queues re-declared (docs/queues.md).
    queue_delivery_limit: int = Field(default=10, ge=1)
    #: Seconds an edge's worker keeps one delivery of long work (a precache, a split) before
    #: it hands the delivery back to its queue and keeps working (`messaging.long_work`): well
    #: below RabbitMQ's `consumer_timeout` (30 min by default), after which the server would
    #: take the delivery back and give the work to someone else.
    delivery_hold_s: float = Field(default=600.0, gt=0)
    #: Bearer tokens by role (panda, pilot, edge, admin), e.g.
    #: ESS_TOKENS='{"panda": ["..."], "pilot": ["..."]}'. At the head: who may call its API
    #: (none at all: the API is open, the embedded first try); edge tokens also sign the edges'
    #: messages to the broker. At an edge (optional): the tokens its routes take without asking
    #: the head.
    tokens: dict[str, list[SecretStr]] = {}
    #: Rucio, where datasets named without their files are resolved (at the head) and where an
    #: edge looks a file's replicas up again when every known one failed; None: no catalogue.
    rucio_url: str | None = Field(default=None, pattern=r"^https?://")
    #: Rucio's authentication server; default rucio_url.
    rucio_auth_url: str | None = Field(default=None, pattern=r"^https?://")
    rucio_account: str = "ess"
    rucio_vo: str | None = None
    #: How ESS authenticates to Rucio: "userpass" (rucio_username, rucio_password),
    #: "x509_proxy" (rucio_x509_proxy, else X509_USER_PROXY), "x509" (rucio_certificate and
    #: rucio_key) or "oidc" (the token in rucio_token_file, else WLCG token discovery:
    #: BEARER_TOKEN, BEARER_TOKEN_FILE, ...).
    rucio_auth_type: Literal["userpass", "x509_proxy", "x509", "oidc"] = "x509_proxy"
    rucio_username: str | None = None
    rucio_password: SecretStr | None = None
    rucio_x509_proxy: Path | None = None
    rucio_certificate: Path | None = None
    rucio_key: Path | None = None
    rucio_token_file: Path | None = None
    #: Certificate authorities for Rucio's HTTPS (a bundle or a hashed directory such as
    #: /etc/grid-security/certificates); default X509_CERT_DIR, else the system's.
    rucio_ca_path: Path | None = None
    rucio_timeout_s: float = Field(default=60.0, gt=0)
    #: The replica protocols asked for, in order of preference.
    rucio_schemes: list[Literal["root", "davs", "https", "s3"]] = ["root", "davs", "https", "s3"]
    #: The site each RSE serves (`{"CERN-PROD_DATADISK": "CERN-PROD"}`), for reading and
    #: placing work near the data; an RSE not named here has the site of its `site` attribute
    #: (else its own name) and the region of its `region` attribute.
    rucio_rse_sites: dict[str, str] = {}
    #: The largest request body the HTTP servers (head and edges) read; a larger one is
    #: refused with 413 naming this limit. 64 MiB holds a request of tens of thousands of files.
    max_body_bytes: int = Field(default=64 * 1024**2, ge=1024)
    #: Folders `file://` sources may be read from, separated by commas (e.g. a site's shared
    #: file system, the demo's samples); none refuses every `file://` source.
    source_file_roots: Annotated[list[Path], NoDecode] = []
    #: CIDR blocks sources (`ESS_SOURCE_NETWORKS`) and callbacks (`ESS_CALLBACK_NETWORKS`)
    #: may reach although they are loopback, link-local or cloud metadata addresses, which
    #: are refused otherwise (`ess_common.url_policy`), separated by commas.
    source_networks: Annotated[list[IPvAnyNetwork], NoDecode] = []
    callback_networks: Annotated[list[IPvAnyNetwork], NoDecode] = []

    @field_validator("source_file_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("source_file_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        relative = [str(root) for root in value if not root.is_absolute()]
        if relative:
            raise ValueError(f"ESS_SOURCE_FILE_ROOTS must be absolute paths: {relative}")
        return [Path(os.path.normpath(root)) for root in value]

    @field_validator("source_networks", "callback_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return parse_networks(value)

    @property
    def source_policy(self) -> UrlPolicy:
        return UrlPolicy.of(
            "source", self.source_networks, "ESS_SOURCE_NETWORKS", self.source_file_roots
        )

    @property
    def callback_policy(self) -> UrlPolicy:
        return UrlPolicy.of("callback", self.callback_networks, "ESS_CALLBACK_NETWORKS")

    @model_validator(mode="after")
    def _rucio_credentials(self) -> EssSettings:
        if self.rucio_url is None:
            return self
        needed = {
            "userpass": ("rucio_username", "rucio_password"),
            "x509": ("rucio_certificate", "rucio_key"),
        }.get(self.rucio_auth_type, ())
        missing = [f"ESS_{name.upper()}" for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"ESS_RUCIO_AUTH_TYPE={self.rucio_auth_type} needs {' and '.join(missing)}"
            )
        return self

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: dict[str, list[SecretStr]]) -> dict[str, list[SecretStr]]:
        unknown = set(value) - set(ROLES)
        if unknown:
            raise ValueError(f"ESS_TOKENS names unknown roles {sorted(unknown)}; known: {ROLES}")
        seen: set[str] = set()
        for role, tokens in value.items():
            for token in tokens:
                secret = token.get_secret_value()
                if len(secret) < MIN_TOKEN_LENGTH or secret != secret.strip():
                    raise ValueError(
                        f"ESS_TOKENS: a {role} token is shorter than {MIN_TOKEN_LENGTH} "
                        "characters or has surrounding spaces"
                    )
                if secret in seen:
                    raise ValueError(f"ESS_TOKENS: a {role} token is given twice or to two roles")
                seen.add(secret)
        return value

    @field_validator("otlp_endpoint", mode="before")
    @classmethod
    def _no_endpoint(cls, value: object) -> object:
        # An empty variable (a compose default) means none.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("bus_url")
    @classmethod
    def _bus_scheme(cls, value: str) -> str:
        if not value.startswith(_BUS_SCHEMES):
            raise ValueError(f"ESS_BUS_URL must start with one of {_BUS_SCHEMES}")
        return value

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if not value.startswith(_STORE_SCHEMES):
            raise ValueError(f"ESS_STORE_URL must start with one of {_STORE_SCHEMES}")
        return value

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, value: str) -> str:
        if not value.startswith(_DB_SCHEMES):
            raise ValueError(f"ESS_DATABASE_URL must start with one of {_DB_SCHEMES}")
        return value


class HeadSettings(EssSettings):
    """The head services: head API, broker, notifier."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: Worker processes of the head API on its port (`python -m ess_head_api`): a request
    #: costs CPU, so one per core the API may use. Each has a database pool of its own.
    head_workers: int = Field(default=1, ge=1, le=64)
    #: An edge whose last heartbeat is older than this is lost and its work moves.
    edge_lost_after_s: float = Field(default=30.0, gt=0)
    sweep_interval_s: float = Field(default=2.0, gt=0)
    #: Results the broker's consumer holds at once: the `split.done` ones that wait are
    #: recorded together, one transaction (`ess_broker.result_batches`).
    results_prefetch: int = Field(default=64, ge=1)
    #: An edge with this many files assigned and not yet split takes no more until it works
    #: some off: backpressure, so that a slow edge does not hoard work others could do.
    edge_max_queued: int = Field(default=64, ge=1)
    #: Range files older than this are deleted from the object store with their rows (by the
    #: broker's sweep, in batches); None keeps them as long as their request.
    range_retention_s: float | None = Field(default=None, gt=0)
    range_retention_batch: int = Field(default=500, ge=1)
    #: Ranges split on demand (no request's) are deleted this long after they were made;
    #: None keeps them until `range_retention_s`.
    on_demand_retention_s: float | None = Field(default=7 * 24 * 3600.0, gt=0)
    panda_exchange: str = "panda"
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_max_attempts: int = Field(default=8, ge=1)
    #: PanDA's message broker over STOMP 1.2: stomp://user:password@host:port/vhost
    #: (stomp+ssl:// for TLS; the vhost, default "/", goes in the CONNECT frame's host header).
    stomp_url: str | None = Field(default=None, pattern=r"^stomp(\+ssl)?://")
    #: The queue PanDA sends `request.created` to over STOMP (/queue/ess.requests or
    #: /amq/queue/ess.requests: the queue ess.requests, a quorum queue the broker declares);
    #: the broker hands each message to the bus as if it had come over AMQP. None: no STOMP
    #: ingress.
    stomp_request_destination: str | None = None
    #: Where the notices for PanDA go over STOMP (e.g. /queue/panda.ess), as well as to
    #: `panda_exchange`. None: no STOMP notices.
    stomp_notice_destination: str | None = None

    @model_validator(mode="after")
    def _stomp(self) -> HeadSettings:
        destinations = (self.stomp_request_destination, self.stomp_notice_destination)
        if self.stomp_url is None and any(destinations):
            raise ValueError("a STOMP destination is set but ESS_STOMP_URL is not")
        if self.stomp_request_destination is not None:
            ingress_queue(self.stomp_request_destination)
        return self

    #: Routing keys of the notices on `panda_exchange`, by event (`request.ready`,
    #: `request.failed`, `request.cancelled`, `request.stalled`, `file.ready`); an event not
    #: named keeps its own.
    panda_routing_keys: dict[str, str] = {}
    #: A request ready, failed or cancelled this long ago is expired: its range files and its
    #: rows are deleted. 0 keeps requests forever.
    request_ttl_s: float = Field(default=30 * 24 * 3600, ge=0)
    expire_interval_s: float = Field(default=300.0, gt=0)
    #: An open request none of whose files changed for this long is stuck (a lost or
    #: dead-lettered message, an edge that vanished): the broker's sweep drives it again, its
    #: unfinished files back to pending and assigned anew, at most `stuck_max_drives` times;
    #: stuck once more, it fails with the reason (PanDA is told; an operator may retry it).
    stuck_after_s: float = Field(default=1800.0, gt=0)
    stuck_max_drives: int = Field(default=2, ge=0)
    #: Range objects no range row names (attempts whose results never counted, uploads cut
    #: off by a failure) are deleted by the broker's sweep once older than this: longer than
    #: a split may take from its first upload to its recorded result. Looked for every
    #: `orphan_sweep_interval_s`.
    orphan_grace_s: float = Field(default=24 * 3600.0, gt=0)
    orphan_sweep_interval_s: float = Field(default=3600.0, gt=0)
    #: How often a Server-Sent Events stream looks for a change of its request, and how long
    #: one lasts at most (the client reconnects).
    events_poll_interval_s: float = Field(default=1.0, gt=0)
    events_max_s: float = Field(default=300.0, gt=0)
    #: The most files one request may list, and sources and replicas one file may list; past
    #: them `POST /v1/requests` answers 413 naming the limit.
    max_request_files: int = Field(default=50_000, ge=1)
    max_file_sources: int = Field(default=64, ge=1)
    max_file_replicas: int = Field(default=64, ge=1)

    @field_validator("panda_routing_keys")
    @classmethod
    def _panda_routing_keys(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - set(PANDA_NOTICES)
        if unknown:
            raise ValueError(
                f"ESS_PANDA_ROUTING_KEYS names unknown events {sorted(unknown)}; "
                f"known are {list(PANDA_NOTICES)}"
            )
        return value


class EdgeSettings(EssSettings):
    """One edge: its name, its cache, its place on the grid."""

    edge_name: str = Field(default="edge-local", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    edge_site: str = "local"
    edge_region: str = "local"
    edge_cache_dir: Path = Path("var/cache")
    edge_quota_bytes: int = Field(default=50 * 1024**3, gt=0)
    #: Where pilots reach this edge's HTTP server; default http://<edge_host>:<edge_port>.
    edge_url: str | None = None
    edge_host: str = "127.0.0.1"
    edge_port: int = Field(default=8001, ge=1, le=65535)
    #: Coordinates of the edge (degrees), for pointing pilots that give theirs to the nearest.
    edge_latitude: float | None = Field(default=None, ge=-90, le=90)
    edge_longitude: float | None = Field(default=None, ge=-180, le=180)
    #: Above the high watermark (a fraction of the quota) least recently used cached inputs
    #: that no work pins, and pulled-through range files, are evicted down to the low one.
    edge_high_watermark: float = Field(default=0.95, gt=0, le=1)
    edge_low_watermark: float = Field(default=0.80, gt=0, le=1)
    edge_evict_interval_s: float = Field(default=2.0, gt=0)
    #: How long a download waits for cache space that eviction may free before it is refused.
    edge_reserve_wait_s: float = Field(default=60.0, ge=0)
    #: A pin (work cached but not yet split) older than this is stale: its work went elsewhere.
    edge_pin_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    #: How long the edge answers lookups from the dataset information it fetched from the head.
    edge_lookup_ttl_s: float = Field(default=30.0, gt=0)
    #: This edge's credential, from its enrollment at the head (`ess edge enroll NAME`): signs
    #: its heartbeats and results, checks the work the head signs for it, and is its bearer
    #: token at the head. The broker hears no edge without one.
    edge_token: SecretStr | None = None
    #: Where to read this edge's token when ESS_EDGE_TOKEN is not set: a folder holding one
    #: file per edge, named after it (a Kubernetes Secret of every edge's token, mounted).
    edge_token_dir: Path | None = None
    #: On-demand splits (ranges a pilot asks for that no request prepared) this edge runs at
    #: once, each in its own process; an ask past them is answered 503 at once.
    edge_on_demand_slots: int = Field(default=2, ge=1, le=64)
    #: How long an on-demand ask waits for its split before the answer is 202 (ask again).
    edge_on_demand_wait_s: float = Field(default=20.0, ge=0, le=120)
    #: The Retry-After of an on-demand ask refused for want of capacity.
    edge_on_demand_retry_after_s: int = Field(default=5, ge=1)
    #: Niceness of the precacher and splitter processes (queued work of prepared requests),
    #: so that on-demand splits and the pilots' downloads get the cores first.
    edge_work_niceness: int = Field(default=10, ge=0, le=19)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    download_timeout_s: float = Field(default=600.0, gt=0)
    #: Certificate authorities trusted for http(s):// and dav(s):// sources besides the
    #: system's: a bundle, or a directory of hashed certificates such as X509_CERT_DIR.
    source_ca_path: Path | None = None
    #: A file with the bearer token (e.g. a WLCG token) sent to http(s):// and dav(s)://
    #: sources; read at every use.
    source_token_file: Path | None = None
    #: "Subscribe to close sites": the RSE that serves this edge's site. With
    #: rucio_subscribe, the edge asks Rucio for a replication rule of each dataset it gets work
    #: of to this RSE (lasting rucio_rule_lifetime_s), and reads a file from there once its
    #: copy is available, waiting at most rucio_subscription_wait_s before it reads another.
    rucio_rse: str | None = None
    rucio_subscribe: bool = False
    rucio_rule_lifetime_s: int = Field(default=7 * 24 * 3600, gt=0)
    rucio_subscription_wait_s: float = Field(default=300.0, ge=0)
    #: A file whose event trees uproot cannot write back unchanged is delivered "whole" as
    #: one range, or "fail"s naming the tree, branch and type.
    split_unsplittable: Literal["whole", "fail"] = "whole"
    #: Objects besides the event trees that cannot be carried into the range files are left
    #: out and reported ("skip"), or make the file "unsplittable" (then split_unsplittable).
    split_uncarried: Literal["skip", "unsplittable"] = "skip"
    #: Compression of the range files: "source" (the input's), "none" or <algorithm>:<level>
    #: with algorithm zlib, lzma (levels 1-9), lz4 (1-12) or zstd (1-22).
    split_compression: str = "source"
    #: A command run per range instead of uproot, e.g. "skim {input} {output} {skip_events}
    #: {n_events}"; placeholders {input}, {output}, {first_event}, {last_event} (1-based),
    #: {skip_events}, {n_events}. Split like a shell would, never run through one.
    split_command: str | None = None
    split_command_timeout_s: float = Field(default=600.0, gt=0)
    #: Processes that share one uproot split, each writing a contiguous block of its ranges:
    #: 0 means the edge's cores, 1 splits in the splitter's own process.
    split_workers: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _subscription(self) -> EdgeSettings:
        if self.rucio_subscribe and not (self.rucio_url and self.rucio_rse):
            raise ValueError("ESS_RUCIO_SUBSCRIBE needs ESS_RUCIO_URL and ESS_RUCIO_RSE")
        return self

    @field_validator("edge_token", mode="before")
    @classmethod
    def _no_token(cls, value: object) -> object:
        # ESS_EDGE_TOKEN= (empty, as a deployment template leaves it before enrollment): none.
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _token_from_dir(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("edge_token") not in (None, ""):
            return data
        folder, name = data.get("edge_token_dir"), data.get("edge_name")
        if not folder or not name:
            return data
        try:
            token = (Path(str(folder)) / str(name)).read_text().strip()
        except OSError as exc:
            raise ValueError(f"ESS_EDGE_TOKEN_DIR holds no token of edge {name}: {exc}") from exc
        return {**data, "edge_token": token or None}

    @model_validator(mode="after")
    def _token_of_this_edge(self) -> EdgeSettings:
        if self.edge_token is not None:
            named = enrollment.edge_of(self.edge_token.get_secret_value())
            if named != self.edge_name:
                raise ValueError(
                    f"ESS_EDGE_TOKEN is not a token of edge {self.edge_name} (enrolled with "
                    f"`ess edge enroll {self.edge_name}`)"
                )
        return self

    @model_validator(mode="after")
    def _watermarks(self) -> EdgeSettings:
        if self.edge_low_watermark >= self.edge_high_watermark:
            raise ValueError(
                f"ESS_EDGE_LOW_WATERMARK ({self.edge_low_watermark}) must be below "
                f"ESS_EDGE_HIGH_WATERMARK ({self.edge_high_watermark})"
            )
        return self

    @property
    def source_access(self) -> SourceAccess:
        return SourceAccess(self.source_ca_path, self.source_token_file)

    @property
    def public_url(self) -> str:
        """The URL the heartbeat announces: the configured one, or the address served."""
        if self.edge_url:
            return self.edge_url.rstrip("/")
        host = socket.getfqdn() if self.edge_host in ("0.0.0.0", "::", "") else self.edge_host
        return f"http://{host}:{self.edge_port}"

    @field_validator("split_compression")
    @classmethod
    def _split_compression(cls, value: str) -> str:
        normalised = value.strip().lower()
        if not _SPLIT_COMPRESSION.fullmatch(normalised):
            raise ValueError(
                f"ESS_SPLIT_COMPRESSION {value!r} must be 'source', 'none' or <algorithm>:<level>"
                " with zlib:1-9, lzma:1-9, lz4:1-12 or zstd:1-22"
            )
        return normalised

    @field_validator("split_command")
    @classmethod
    def _split_command(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            found = [
                (name, bool(spec or conversion))
                for argument in shlex.split(value)
                for _, name, spec, conversion in string.Formatter().parse(argument)
                if name is not None
            ]
        except ValueError as exc:
            raise ValueError(f"ESS_SPLIT_COMMAND {value!r} does not parse: {exc}") from exc
        unknown = {
            name
            for name, formatted in found
            if formatted or name not in _SPLIT_COMMAND_PLACEHOLDERS
        }
        if unknown:
            raise ValueError(
                f"ESS_SPLIT_COMMAND has unknown placeholders {sorted(unknown)}; known are "
                f"{sorted(_SPLIT_COMMAND_PLACEHOLDERS)} (write {{{{ and }}}} for literal braces)"
            )
        if not {"input", "output"} <= {name for name, _ in found}:
            raise ValueError("ESS_SPLIT_COMMAND must use both {input} and {output}")
        return value
