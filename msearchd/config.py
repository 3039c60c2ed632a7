"""Settings from flags, environment and a TOML file, in that order of precedence."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msearchd.errors import InvalidArgument
from msearchd.model import PRIORITY_MAX, PRIORITY_MIN

SOCKET_NAME = "msearchd.sock"


def runtime_dir() -> Path:
    """Where the socket lives: $XDG_RUNTIME_DIR/msearch, or a private folder under /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "msearch"
    return Path("/tmp") / f"msearch-{os.getuid()}"


def default_socket_path() -> Path:
    env = os.environ.get("MSEARCH_SOCKET")
    return Path(env) if env else runtime_dir() / SOCKET_NAME


def socket_lock_path(socket_path: Path) -> Path:
    """The lock beside a socket that the daemon listening on it holds."""
    return socket_path.with_name(socket_path.name + ".lock")


def default_state_dir() -> Path:
    env = os.environ.get("MSEARCH_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "msearch"


def default_config_path() -> Path | None:
    env = os.environ.get("MSEARCH_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    path = Path(base) / "msearch" / "msearchd.toml"
    return path if path.exists() else None


def default_store() -> str | None:
    """A PostgreSQL database shared with other daemons, or None: SQLite in the state folder."""
    return os.environ.get("MSEARCH_STORE") or None


@dataclass
class Settings:
    socket_path: Path = field(default_factory=default_socket_path)
    state_dir: Path = field(default_factory=default_state_dir)
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    grace: float = 5.0
    max_attempts: int = 3
    log_level: str = "info"
    priorities: dict[str, int] = field(default_factory=dict)
    handlers: dict[str, str] = field(default_factory=dict)
    type_limits: dict[str, int] = field(default_factory=dict)
    # Limits on the running tasks of a type across every daemon of a shared store; None: this daemon
    # leaves the store's as they are (with a store of its own, limits of this daemon like type_limits).
    cluster_type_limits: dict[str, int] | None = None
    cgroups: bool = True
    idle_timeout: float = 600.0  # seconds; 0 keeps idle connections open
    max_connections: int = 1000
    # Retention: finished tasks older than this many days, or beyond this many, are removed with their
    # history and logs; a running task's log is cut to its last half beyond log_max_mib. 0: no bound.
    keep_days: float = 30.0
    keep_tasks: int = 100_000
    log_max_mib: float = 64.0
    store: str | None = field(default_factory=default_store)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "tasks.db"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgument(message)


def _table(raw: Mapping[str, Any], key: str, kind: type, where: str) -> dict[str, Any]:
    table = raw.get(key, {})
    _expect(isinstance(table, dict), f"{where}: [{key}] must be a table")
    for name, value in table.items():
        _expect(
            isinstance(value, kind) and not isinstance(value, bool),
            f"{where}: {key}.{name} must be {kind.__name__}, got {value!r}",
        )
    return dict(table)


def load(path: Path | None, overrides: Mapping[str, Any]) -> Settings:
    """Build the settings: the TOML file (if any) first, then every non-None override on top."""
    raw: dict[str, Any] = {}
    where = str(path)
    if path is not None:
        import tomllib

        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise InvalidArgument(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None
    known = {
        "socket",
        "state_dir",
        "workers",
        "grace",
        "max_attempts",
        "log_level",
        "priorities",
        "handlers",
        "type_limits",
        "cluster_type_limits",
        "cgroups",
        "idle_timeout",
        "max_connections",
        "keep_days",
        "keep_tasks",
        "log_max_mib",
        "store",
    }
    unknown = set(raw) - known
    _expect(not unknown, f"{where}: unknown setting(s): {', '.join(sorted(unknown))}")

    for key in ("socket", "state_dir", "log_level", "store"):
        _expect(key not in raw or isinstance(raw[key], str), f"{where}: {key} must be a string")
    settings = Settings()
    if "socket" in raw and "MSEARCH_SOCKET" not in os.environ:
        settings.socket_path = Path(raw["socket"]).expanduser()
    if "state_dir" in raw and "MSEARCH_STATE_DIR" not in os.environ:
        settings.state_dir = Path(raw["state_dir"]).expanduser()
    for key in ("workers", "max_attempts", "max_connections", "keep_tasks"):
        if key in raw:
            _expect(
                isinstance(raw[key], int) and not isinstance(raw[key], bool),
                f"{where}: {key} must be an integer",
            )
            setattr(settings, key, raw[key])
    if "grace" in raw:
        _expect(isinstance(raw["grace"], int | float), f"{where}: grace must be a number of seconds")
        settings.grace = float(raw["grace"])
    if "idle_timeout" in raw:
        value = raw["idle_timeout"]
        _expect(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{where}: idle_timeout must be a number of seconds",
        )
        settings.idle_timeout = float(value)
    for key in ("keep_days", "log_max_mib"):
        if key in raw:
            _expect(
                isinstance(raw[key], int | float) and not isinstance(raw[key], bool),
                f"{where}: {key} must be a number",
            )
            setattr(settings, key, float(raw[key]))
    if "store" in raw and "MSEARCH_STORE" not in os.environ:
        settings.store = raw["store"] or None
    if "log_level" in raw:
        settings.log_level = str(raw["log_level"])
    if "cgroups" in raw:
        _expect(isinstance(raw["cgroups"], bool), f"{where}: cgroups must be true or false")
        settings.cgroups = raw["cgroups"]
    settings.priorities = _table(raw, "priorities", int, where)
    settings.handlers = _table(raw, "handlers", str, where)
    settings.type_limits = _table(raw, "type_limits", int, where)
    if "cluster_type_limits" in raw:
        settings.cluster_type_limits = _table(raw, "cluster_type_limits", int, where)

    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    # Workers and the HTTP shim do not run in the folder msearchd was started from.
    settings.socket_path = Path(os.path.normpath(settings.socket_path.absolute()))
    settings.state_dir = Path(os.path.normpath(settings.state_dir.absolute()))
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    _expect(settings.workers >= 1, f"workers must be at least 1, got {settings.workers}")
    _expect(settings.grace >= 0, f"grace must be zero or more seconds, got {settings.grace}")
    _expect(settings.max_attempts >= 1, f"max_attempts must be at least 1, got {settings.max_attempts}")
    _expect(
        settings.idle_timeout >= 0, f"idle_timeout must be zero or more seconds, got {settings.idle_timeout}"
    )
    _expect(
        settings.max_connections >= 1, f"max_connections must be at least 1, got {settings.max_connections}"
    )
    _expect(settings.keep_days >= 0, f"keep_days must be zero or more, got {settings.keep_days}")
    _expect(settings.keep_tasks >= 0, f"keep_tasks must be zero or more, got {settings.keep_tasks}")
    _expect(settings.log_max_mib >= 0, f"log_max_mib must be zero or more, got {settings.log_max_mib}")
    for name, p in settings.priorities.items():
        _expect(
            PRIORITY_MIN <= p <= PRIORITY_MAX,
            f"priorities.{name} must be from {PRIORITY_MIN} to {PRIORITY_MAX}, got {p}",
        )
    for name, limit in settings.type_limits.items():
        _expect(limit >= 1, f"type_limits.{name} must be at least 1, got {limit}")
    for name, limit in (settings.cluster_type_limits or {}).items():
        _expect(limit >= 1, f"cluster_type_limits.{name} must be at least 1, got {limit}")
    for name, target in settings.handlers.items():
        _expect(":" in target, f"handlers.{name} must be 'module:function', got {target!r}")
    _expect(
        settings.store is None or settings.store.startswith(("postgresql://", "postgres://")),
        f"store must be a postgresql:// address, got {settings.store!r}",
    )
    _expect(
        settings.log_level.lower() in {"debug", "info", "warning", "error"},
        f"log level must be debug, info, warning or error, got {settings.log_level!r}",
    )
