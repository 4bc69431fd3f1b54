"""The one configuration object. Built once at the edge (CLI) and passed explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tipml.errors import ConfigError

if TYPE_CHECKING:
    from tipml.events.location import ArchiveLocation

DEFAULT_GATEWAY_CONFIG = Path(__file__).parent / "serving" / "gateway.yaml"
DEFAULT_EXPERIMENTS_CONFIG = Path(__file__).parent / "experiments" / "experiments.yaml"


class Settings(BaseSettings):
    """Every knob of the service. Environment variables use the ``TIPML_`` prefix, except
    ``DEFAULT_PROMPT_VERSION`` whose name is fixed by the recommender contract."""

    model_config = SettingsConfigDict(
        env_prefix="TIPML_", extra="ignore", frozen=True, populate_by_name=True
    )

    dev: bool = Field(False, description="Development mode: allows running without API tokens.")
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer tokens accepted on /score and /generate.",
    )
    data_dir: Path = Field(Path(".tipml"), description="Where tipml keeps local state.")
    archive_dir: Path | None = Field(
        None,
        description="The offline log (Parquet archive), one location for every archiver and "
        "reader: with several consume processes, a path they all mount. Default "
        "<data_dir>/offline.",
    )
    archive_url: str | None = Field(
        None,
        description="The offline log in object storage instead: an fsspec URL such as "
        "s3://bucket/prefix (S3 and S3-compatible stores via s3fs; other protocols need their "
        "package installed). Overrides archive_dir. Credentials come from the store's own "
        "environment (AWS_ACCESS_KEY_ID, …).",
    )
    archive_options: dict[str, Any] = Field(
        default_factory=dict,
        description='Options of the archive_url filesystem as JSON, e.g. {"endpoint_url": '
        '"http://minio:9000"} for an S3-compatible store.',
    )
    archive_linger_s: float | None = Field(
        None,
        ge=0,
        le=30,
        description="An archiver gathers a batch for up to this long (or until "
        "consumer_batch messages) before writing it as one Parquet part: fewer, larger files "
        "and less CPU per event; the archive trails the stream by up to this much. 0: write "
        "what each pull brings (at 200 /score rps: one file per decision). Unset: 0.5 s in "
        "`tipml consume`, 0.25 s in `tipml serve` (ADR 0024).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_requests: bool = Field(True, description="One JSON access-log line per request.")

    max_candidates: int = Field(
        1000,
        ge=1,
        le=1000,
        description="Candidates per /score call (the contract's ceiling: 1000).",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request body size limit.")

    scorer: Literal["baseline", "lightgbm", "registry"] = Field(
        "baseline",
        description="baseline (no model), lightgbm (TIPML_MODEL_PATH) or registry (the "
        "registry's champion, hot-swapped when the alias moves; the baseline until one exists).",
    )
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking server or database (postgresql://…); default "
        "sqlite:///<data_dir>/mlflow.db with artifacts under <data_dir>/mlflow-artifacts.",
    )
    registry_require_model: bool = Field(
        False, description="scorer=registry: refuse to start without a loadable champion."
    )
    registry_poll_s: float = Field(
        5.0, gt=0, le=300, description="How often serving checks the registry's aliases."
    )
    shadow: bool = Field(True, description="Score with the registry's shadow model as well.")
    dask_scheduler: str | None = Field(
        None, description="Train through lightgbm.dask on this Dask scheduler (tcp://…)."
    )
    model_path: Path | None = Field(None, description="LightGBM text model (scorer=lightgbm).")
    model_version: str | None = Field(None, description="Overrides the reported model_version.")
    model_runtime: Literal["compiled", "lightgbm"] = Field(
        "compiled",
        description="How a LightGBM model is served: compiled to machine code by lleaves "
        "(cached under TIPML_DATA_DIR/models/compiled; parity with LightGBM checked at load) "
        "or LightGBM's own predict.",
    )

    default_prompt_version: str = Field(
        "v1",
        validation_alias=AliasChoices("DEFAULT_PROMPT_VERSION", "default_prompt_version"),
        min_length=1,
    )
    score_policy: str = Field(
        "greedy",
        min_length=1,
        description="Ranking policy of /score: greedy, epsilon_greedy:<ε>, softmax:<t>, "
        "thompson, or experiment:<name>[,<name>…] (an experiment picks the policy).",
    )
    learner_grace_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="How long the experiments learner waits for a decision its feedback "
        "overtook before counting the feedback as unmatched.",
    )
    generate_deadline_s: float = Field(
        6.0, gt=0, le=120, description="Hard outer deadline of one LLM call in /generate."
    )
    generate_max_chars: int = Field(
        200, ge=20, le=2000, description="Default and ceiling of max_chars on /generate."
    )
    gateway_config: Path = Field(DEFAULT_GATEWAY_CONFIG, description="LiteLLM router config.")
    experiments_config: Path = Field(
        DEFAULT_EXPERIMENTS_CONFIG, description="Experiments file (layers, A/B tests, bandits)."
    )
    local_llm: Literal["auto", "off"] = Field(
        "auto",
        description="auto: start the embedded llama.cpp server when the gateway config uses it.",
    )
    local_llm_model: Path | None = Field(
        None, description="GGUF file for the local model; default: assembled Gemma 3 270M."
    )
    local_llm_server: Literal["llama-server", "llama-cpp-python"] = Field(
        "llama-server", description="Which llama.cpp server runs the embedded model (ADR 0008)."
    )
    local_llm_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="llama.cpp threads; 1 leaves a core to the API (ADR 0008: on 2 cores, 2 "
        "threads answer faster alone but starve under load).",
    )
    local_llm_ctx: int = Field(1024, ge=256, le=32768, description="Context per slot.")
    local_llm_slots: int = Field(
        4, ge=1, le=32, description="Parallel slots of llama-server, each with its own cache."
    )
    local_llm_poll: int = Field(
        0, ge=0, le=100, description="llama-server's busy-wait level for work (0: sleep)."
    )
    local_llm_nice: int = Field(
        10, ge=0, le=19, description="CPU niceness of the embedded model (0: same as the API)."
    )
    local_llm_startup_s: float = Field(60.0, gt=0)

    # -- event backbone (NATS JetStream) --------------------------------------------------------
    nats_url: str | None = Field(
        None, description="NATS server URL; unset: start nats-server from the wheel (embedded)."
    )
    nats_port: int = Field(0, ge=0, le=65535, description="Embedded server port (0: a free one).")
    stream_storage: Literal["file", "memory"] = "file"
    stream_replicas: int = Field(1, ge=1, le=5)
    stream_max_age_s: float = Field(30 * 86400, gt=0, description="Retention of event streams.")
    dlq_max_age_s: float = Field(90 * 86400, gt=0, description="Retention of dead letters.")
    stream_max_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="Size limit of each stream (the oldest messages go first beyond it); the "
        "server reserves it per stream and replica, so 4 streams need 4x on the server.",
    )
    duplicate_window_s: float = Field(
        600, gt=0, description="Publishes with a Nats-Msg-Id seen within this window are dropped."
    )
    dedupe_horizon_s: float = Field(
        7 * 86400,
        gt=0,
        description="An event id folded into a key's state is remembered this long (by the "
        "time the event reached the stream): a duplicate within it changes nothing.",
    )
    consumers: Literal["inprocess", "off"] = Field(
        "inprocess", description="Run the JetStream consumers inside `tipml serve`."
    )
    signal_partitions: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Partitions of the keyed signals (`signals-by-user.<user>.<kind>`): the "
        "SIGNALS stream stores each in partition hash(user) mod this, and a consumer process "
        "can own a share (`tipml consume --member K/N`). Set: the stream is updated to it at "
        "start; unset: the stream's count is kept (1 for a new stream). Grow it freely; shrink "
        "it only once the partitions above the new count are drained (ADR 0019).",
    )
    consumer_member: str | None = Field(
        None,
        pattern=r"^\d+/\d+$",
        description="`K/N`: this process is member K of N and consumes the signal partitions "
        "p with p % N == K (each member one writer of its users). Unset: every partition.",
    )
    consumer_batch: int = Field(500, ge=1, le=10_000)
    consumer_ack_wait_s: float = Field(30, gt=0)
    consumer_max_deliver: int = Field(5, ge=2, le=100)
    consumer_backoff_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 5.0, 15.0, 30.0],
        description="Comma-separated delays before redelivering a failed event.",
    )
    consumer_max_ack_pending: int = Field(20_000, ge=1)
    consumer_prefetch: bool = Field(
        True,
        description="Keep a consumer's next pull request outstanding while the current batch "
        "is processed (stream order kept; off: ask again only when the previous request is "
        "done).",
    )
    consumer_lag_ready: int = Field(
        50_000, ge=0, description="/readyz reports a consumer unhealthy above this many pending."
    )
    state_interval_s: float = Field(2.0, gt=0, description="How often state files are written.")
    rewards: dict[str, float] | None = Field(
        None, description='Reaction → reward in [0, 1], JSON (e.g. {"completed": 1}).'
    )
    score_online_timeout_s: float = Field(
        0.01,
        gt=0,
        le=1,
        description="Time budget of /score's read of the user's online features (slower: "
        "the online columns are missing for that request).",
    )
    online_timeout_s: float = Field(
        0.05, gt=0, description="Time budget of the online-feature read in /generate."
    )
    online_read: Literal["replica", "get"] = Field(
        "replica",
        description="How serving reads users' online features from JetStream KV: 'replica' "
        "keeps the bucket in memory from its watch (no round trip per request; memory grows "
        "with the users, ~0.5 KB each), 'get' asks the bucket per request.",
    )
    context_budget_chars: int = Field(
        600, ge=100, description="Prompt context budget (facts + recent signals), ~4 chars/token."
    )
    online_store: Literal["jetstream", "feast"] = Field(
        "jetstream", description="Where /generate reads online user features."
    )
    feast_online: Literal["sqlite", "redis"] = Field(
        "sqlite", description="Feast's online store (TIPML_ONLINE_STORE=feast)."
    )
    feast_redis: str = Field("127.0.0.1:6379", description="Redis for Feast's online store.")
    decision_buffer: int = Field(10_000, ge=10, description="Decisions held in memory.")
    decision_spill_max_bytes: int = Field(
        256 << 20, ge=0, description="Bound of the on-disk spill of undelivered decisions."
    )
    decision_batch_max: int = Field(
        64,
        ge=1,
        le=1000,
        description="Most /score decisions per decision-log message (a block, ADR 0028): the "
        "decisions recorded while the last publish was in flight go out as one message. 1: one "
        "message per decision.",
    )

    @field_validator("consumer_backoff_s", mode="before")
    @classmethod
    def _split_floats(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(v) for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        for token in self.api_tokens:
            if len(token.get_secret_value()) < 16 and not self.dev:
                raise ValueError("every TIPML_API_TOKENS entry must be at least 16 characters")
        if self.scorer == "lightgbm" and self.model_path is None:
            raise ValueError("TIPML_SCORER=lightgbm needs TIPML_MODEL_PATH")
        if self.consumer_member is not None:
            k, n = (int(v) for v in self.consumer_member.split("/"))
            if not 0 <= k < n:
                raise ValueError(f"TIPML_CONSUMER_MEMBER {self.consumer_member}: K must be 0..N-1")
        if (
            self.archive_linger_s is not None
            and self.archive_linger_s * 2 > self.consumer_ack_wait_s
        ):
            # a batch held past ack_wait is redelivered to another archiver while it is written
            raise ValueError(
                f"TIPML_ARCHIVE_LINGER_S ({self.archive_linger_s:g} s) must be at most half of "
                f"TIPML_CONSUMER_ACK_WAIT_S ({self.consumer_ack_wait_s:g} s)"
            )
        return self

    def archive_linger(self, *, beside_requests: bool) -> float:
        """``TIPML_ARCHIVE_LINGER_S``; unset: 0.5 s in a consume process, 0.25 s in a process
        that also answers requests (at most half of ``ack_wait``). Beside ``/score`` a shorter
        batch keeps each write a small burst; without any linger the archiver wrote one part
        per decision at 200 rps. With the decision's columnar candidates (ADR 0022), 0.25 s
        measured no worse p99 at 200 rps than 0, less CPU per request, 29x fewer files
        (ADR 0024; ADR 0020 had measured a 0.5 s linger of 20 KB decisions raise the p99)."""
        if self.archive_linger_s is not None:
            return self.archive_linger_s
        return min(0.25 if beside_requests else 0.5, self.consumer_ack_wait_s / 2)

    def owned_partitions(self, partitions: int) -> list[int]:
        """Of the stream's ``partitions`` signal partitions, those this process consumes
        (``TIPML_CONSUMER_MEMBER``; all without it). A member owning none is a ``ConfigError``:
        it would run, healthy, and do nothing for the users it was meant to own."""
        if self.consumer_member is None:
            return list(range(partitions))
        k, n = (int(v) for v in self.consumer_member.split("/"))
        owned = [p for p in range(partitions) if p % n == k]
        if not owned:
            raise ConfigError(
                f"TIPML_CONSUMER_MEMBER {self.consumer_member}: owns none of the stream's "
                f"{partitions} signal partitions; raise TIPML_SIGNAL_PARTITIONS to at least {n}",
                field="consumer_member",
            )
        return owned

    def check_serving(self) -> None:
        """What serving needs on top of valid values: refuse to start without a token."""
        if not self.api_tokens and not self.dev:
            raise ConfigError(
                "no API token configured: set TIPML_API_TOKENS (comma-separated) "
                "or TIPML_DEV=1 for local development"
            )

    @property
    def offline_dir(self) -> Path:
        """The archive's directory (``TIPML_ARCHIVE_DIR``, else ``<data_dir>/offline``); with
        ``TIPML_ARCHIVE_URL`` the archive is :attr:`archive`, not here."""
        return self.archive_dir if self.archive_dir is not None else self.data_dir / "offline"

    @property
    def archive(self) -> ArchiveLocation:
        """Where the archive lives: ``TIPML_ARCHIVE_URL``, else :attr:`offline_dir`."""
        from tipml.events.location import ArchiveLocation  # DuckDB, Arrow: not at every import

        if self.archive_url is not None:
            return ArchiveLocation.of(self.archive_url, self.archive_options)
        return ArchiveLocation.of(self.offline_dir)

    def token_values(self) -> list[bytes]:
        return [t.get_secret_value().encode() for t in self.api_tokens]


def load_settings(**overrides: object) -> Settings:
    """``Settings`` from the environment plus overrides; a bad value is a ``ConfigError``."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
