"""The model registry: MLflow's, behind the few verbs tipml needs. The only module that
imports mlflow.

* **Where**: ``TIPML_MLFLOW_URI`` — an MLflow tracking server (``http://…``) or a database
  (``postgresql://…``, ``sqlite:///…``); by default ``sqlite:///<TIPML_DATA_DIR>/mlflow.db``
  with artifacts under ``<TIPML_DATA_DIR>/mlflow-artifacts``.
* **What**: registered model ``tipml-ranker``; each version is a LightGBM booster logged with
  ``mlflow.lightgbm`` (native text format, input signature = the model-matrix columns), its
  training-set hash and window, metrics, fairness table and OPE estimate as tags and
  ``model_card.json``; the artifact's SHA-256 as the tag ``tipml.sha256``.
* **Aliases** ``challenger``, ``shadow``, ``champion``; every change goes through
  ``set_alias``, which appends to the version's rollout history (tag ``tipml.rollout``).
* **Safe loading** (``load``): download the version's artifact, check its SHA-256 against the
  one recorded at registration and that it *is* LightGBM text, then parse it with LightGBM.
  Nothing is ever unpickled: a pickle (even one with a matching hash) is refused before any
  byte of it is interpreted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from tipml.errors import TipmlError
from tipml.registry.cards import ModelCard, RolloutEvent

MODEL_NAME = "tipml-ranker"
ALIASES = ("challenger", "shadow", "champion")
EXPERIMENT = "tipml-ranker-training"
SHA_TAG = "tipml.sha256"
ROLLOUT_TAG = "tipml.rollout"
CARD_FILE = "model_card.json"
_LIGHTGBM_TEXT_HEAD = b"tree\n"


class RegistryError(TipmlError):
    code = "registry"


class NotFound(RegistryError):
    code = "not_found"


class UnsafeModel(RegistryError):
    """An artifact that must not be loaded: wrong hash, not LightGBM text."""

    code = "unsafe_model"


class RegistryUnreachable(RegistryError):
    code = "registry_unreachable"


def default_uri(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow logs alembic migrations and deprecation notes at INFO/WARNING: not ours."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    text: str
    sha256: str


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: tuple[str, ...]
    created: str
    sha256: str
    training_set_hash: str
    metrics: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "aliases": list(self.aliases),
            "created": self.created,
            "sha256": self.sha256,
            "training_set_hash": self.training_set_hash,
            "metrics": self.metrics,
        }


class Registry:
    def __init__(self, uri: str, artifact_root: Path, name: str = MODEL_NAME) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        # MLflow 3 reports usage to mlflow-telemetry.io from a background thread unless told
        # not to: nothing in tipml reaches the internet
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # before mlflow is imported
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri = uri
        self.name = name
        self.artifact_root = artifact_root
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The MLflow client, created on first use once the backend answers: MLflow itself
        retries an unreachable database for ~100 s before failing."""
        if self._client is None:
            self.probe()
            with _quiet():
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def probe(self, timeout_s: float = 2.0) -> None:
        """A TCP connect to the backend's host (nothing for SQLite or files)."""
        parsed = urlsplit(self.uri)
        scheme = parsed.scheme.split("+", 1)[0]
        if scheme in ("", "file", "sqlite") or parsed.hostname is None:
            return
        default = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "https": 443}
        port = parsed.port or default.get(scheme, 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as exc:
            raise RegistryUnreachable(
                f"registry {self._shown_uri()} cannot be reached: {exc.strerror or exc}"
            ) from None

    @classmethod
    def from_settings(cls, settings: Any) -> Registry:
        uri = settings.mlflow_uri or default_uri(settings.data_dir)
        return cls(uri, settings.data_dir / "mlflow-artifacts")

    def _errors(self, exc: Exception, what: str) -> RegistryError:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, RegistryError):
            return exc
        if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return NotFound(f"{what}: {self._known()}")
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return RegistryUnreachable(f"registry {self._shown_uri()} cannot be reached: {text}")

    def _shown_uri(self) -> str:
        if "@" in self.uri:  # never print a password
            scheme, _, rest = self.uri.partition("://")
            return f"{scheme}://…@{rest.split('@', 1)[1]}"
        return self.uri

    def _known(self) -> str:
        try:
            versions = self.versions()
        except RegistryError:
            return "the registry cannot be listed"
        if not versions:
            return f"{self.name} has no versions"
        listed = ", ".join(
            v.version + (f" ({', '.join(v.aliases)})" if v.aliases else "") for v in versions
        )
        return f"{self.name} has versions {listed}"

    # -- reading ---------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``RegistryUnreachable`` unless the backend answers."""
        try:
            with _quiet():
                self.client.search_registered_models(max_results=1)
        except Exception as exc:
            raise RegistryUnreachable(
                f"registry {self._shown_uri()} cannot be reached: {str(exc).splitlines()[0]}"
            ) from None

    def aliases(self) -> dict[str, str]:
        """alias -> version of the registered model ({} when it does not exist yet)."""
        from mlflow.exceptions import MlflowException

        self.probe()
        try:
            with _quiet():
                model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise self._errors(exc, self.name) from None
        except Exception as exc:
            raise self._errors(exc, self.name) from None
        return {str(k): str(v) for k, v in (model.aliases or {}).items()}

    def versions(self) -> list[VersionInfo]:
        try:
            with _quiet():
                found = self.client.search_model_versions(f"name = '{self.name}'")
        except Exception as exc:
            raise self._errors(exc, self.name) from None
        by_version: dict[str, list[str]] = {}
        for alias, v in self.aliases().items():
            by_version.setdefault(v, []).append(alias)
        out = []
        for mv in sorted(found, key=lambda m: int(m.version)):
            tags = dict(mv.tags or {})
            out.append(
                VersionInfo(
                    version=str(mv.version),
                    aliases=tuple(sorted(by_version.get(str(mv.version), ()))),
                    created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(),
                    sha256=tags.get(SHA_TAG, ""),
                    training_set_hash=tags.get("tipml.training_set_hash", ""),
                    metrics=orjson.loads(tags.get("tipml.metrics", "{}")),
                )
            )
        return out

    def resolve(self, ref: str) -> str:
        """``VERSION``, ``@alias``, ``NAME@alias`` or ``NAME/VERSION`` → a version number."""
        name, alias, version = self.name, None, ref
        if "@" in ref:
            name, _, alias = ref.partition("@")
        elif "/" in ref:
            name, _, version = ref.partition("/")
        if name and name != self.name:
            raise NotFound(f"no registered model {name!r}; this registry serves {self.name!r}")
        if alias is not None:
            found = self.aliases().get(alias)
            if found is None:
                raise NotFound(f"alias {alias!r} is not set: {self._known()}")
            return found
        if not version.isdigit() or version not in {v.version for v in self.versions()}:
            raise NotFound(f"version {version!r} does not exist: {self._known()}")
        return version

    def _version(self, version: str) -> Any:
        try:
            with _quiet():
                return self.client.get_model_version(self.name, version)
        except Exception as exc:
            raise self._errors(exc, f"version {version!r} does not exist") from None

    def _artifact_dir(self, version: str, into: Path) -> Path:
        import mlflow.artifacts

        mv = self._version(version)
        with _quiet():
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(into), tracking_uri=self.uri
            )
        return Path(path)

    def load(self, version: str) -> LoadedModel:
        """The version's LightGBM text, verified (see the module doc). Raises ``UnsafeModel``."""
        import yaml

        mv = self._version(version)
        want = dict(mv.tags or {}).get(SHA_TAG)
        if not want:
            raise UnsafeModel(f"{self.name} version {version} has no recorded SHA-256; not loaded")
        with tempfile.TemporaryDirectory() as tmp:
            folder = self._artifact_dir(version, Path(tmp))
            try:
                meta = yaml.safe_load((folder / "MLmodel").read_text())
                data = (folder / str(meta["flavors"]["lightgbm"]["data"])).resolve()
                if not data.is_relative_to(folder.resolve()):
                    raise UnsafeModel(
                        f"{self.name} version {version}: its MLmodel points outside the "
                        "artifact; not loaded"
                    )
                raw = data.read_bytes()
            except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
                raise UnsafeModel(
                    f"{self.name} version {version}: no LightGBM artifact ({exc}); not loaded"
                ) from None
        got = hashlib.sha256(raw).hexdigest()
        if got != want:
            raise UnsafeModel(
                f"{self.name} version {version}: artifact SHA-256 {got[:12]}… differs from the "
                f"{want[:12]}… recorded at registration; not loaded"
            )
        if not raw.startswith(_LIGHTGBM_TEXT_HEAD):
            kind = "a pickle" if raw[:1] == b"\x80" else "not LightGBM text"
            raise UnsafeModel(
                f"{self.name} version {version}: the artifact is {kind}; only LightGBM's text "
                "format is loaded"
            )
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise UnsafeModel(f"{self.name} version {version}: artifact is not text") from None
        return LoadedModel(version, text, got)

    def card(self, version: str) -> ModelCard:
        mv = self._version(version)
        tags = dict(mv.tags or {})
        with tempfile.TemporaryDirectory() as tmp:
            folder = self._artifact_dir(version, Path(tmp))
            try:
                data = orjson.loads((folder / CARD_FILE).read_bytes())
            except (OSError, orjson.JSONDecodeError):
                raise NotFound(f"{self.name} version {version} has no model card") from None
        data["version"] = version
        return ModelCard.from_dict(data, orjson.loads(tags.get(ROLLOUT_TAG, "[]")))

    # -- writing ---------------------------------------------------------------------------

    def _experiment_id(self) -> str:
        with _quiet():
            found = self.client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                return str(found.experiment_id)
            self.artifact_root.mkdir(parents=True, exist_ok=True)
            return str(
                self.client.create_experiment(
                    EXPERIMENT, artifact_location=self.artifact_root.resolve().as_uri()
                )
            )

    def register(
        self,
        model_text: str,
        feature_names: tuple[str, ...],
        card: ModelCard,
        *,
        params: Mapping[str, Any],
        example: Any,
    ) -> str:
        """Save the booster with ``mlflow.lightgbm`` (native text, signature, input example),
        put the card next to it, log both in a run and register them as a new version of
        ``tipml-ranker``; returns the version."""
        import lightgbm
        import mlflow
        import mlflow.lightgbm
        import pandas as pd
        from mlflow.models import infer_signature

        booster = lightgbm.Booster(model_str=model_text)
        frame = pd.DataFrame(example, columns=list(feature_names))
        signature = infer_signature(frame, booster.predict(example, num_threads=1))
        with _quiet(), tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "model"
            mlflow.lightgbm.save_model(
                booster, str(local), signature=signature, input_example=frame.head(2)
            )
            meta = yaml_load(local / "MLmodel")
            sha = hashlib.sha256(
                (local / meta["flavors"]["lightgbm"]["data"]).read_bytes()
            ).hexdigest()
            card.sha256 = sha
            card.created = datetime.now(UTC).isoformat(timespec="seconds")
            (local / CARD_FILE).write_bytes(
                orjson.dumps(card.as_dict(), option=orjson.OPT_INDENT_2)
            )
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_registry_uri(self.uri)
            with mlflow.start_run(experiment_id=self._experiment_id()) as run:
                mlflow.log_params({k: str(v) for k, v in params.items()})
                mlflow.log_metrics(
                    {k.replace("@", "_at_"): float(v) for k, v in card.metrics.items() if v == v}
                )
                mlflow.log_artifacts(str(local), artifact_path="model")
            self._ensure_model()
            mv = self.client.create_model_version(
                self.name,
                source=f"{run.info.artifact_uri}/model",
                run_id=run.info.run_id,
                tags={
                    SHA_TAG: sha,
                    "tipml.training_set_hash": card.training_set_hash,
                    "tipml.training_window": " → ".join(card.training_window),
                    "tipml.metrics": orjson.dumps(card.metrics).decode(),
                    ROLLOUT_TAG: "[]",
                },
                description=f"LightGBM ranker; training set {card.training_set_hash[:12]}",
            )
        card.version = str(mv.version)
        return str(mv.version)

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                self.name, description="Ranks candidate tips for /score by predicted reward."
            )

    def set_alias(self, alias: str, version: str | None, *, by: str, reason: str) -> RolloutEvent:
        """Point ``alias`` at ``version`` (None: remove it); append to the rollout history of
        the new version (and of the one it left)."""
        if alias not in ALIASES:
            raise NotFound(f"unknown alias {alias!r}; aliases: {', '.join(ALIASES)}")
        if version is not None:
            version = self.resolve(version)
        previous = self.aliases().get(alias)
        event = RolloutEvent(
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            alias=alias,
            version=version,
            previous=previous,
            by=by,
            reason=reason,
        )
        with _quiet():
            if version is None:
                if previous is not None:
                    self.client.delete_registered_model_alias(self.name, alias)
            else:
                self.client.set_registered_model_alias(self.name, alias, version)
            for v in {version, previous} - {None}:
                assert v is not None
                tags = dict(self._version(v).tags or {})
                history = orjson.loads(tags.get(ROLLOUT_TAG, "[]"))
                history.append(event.__dict__)
                self.client.set_model_version_tag(
                    self.name, v, ROLLOUT_TAG, orjson.dumps(history).decode()
                )
        return event


def yaml_load(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}
