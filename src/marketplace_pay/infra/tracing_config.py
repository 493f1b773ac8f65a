"""What the environment asks of tracing, checked before anything starts.

**Configuration** — the standard variables:
- `OTEL_TRACES_EXPORTER` — `otlp`, `console`, `none` (comma-separated). Unset: `otlp` when
  `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, else none.
  `MP_TRACE_EXPORT=console` adds the console exporter. `OTEL_SDK_DISABLED=true`: none.
- `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` — `http/protobuf` (default, port 4318) or `grpc` (4317);
  the exporters read their own endpoint, headers, timeout and compression variables.
- `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` — the SDK's samplers; default
  `parentbased_always_on` (every trace, and a caller's sampling decision is kept).
- `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` — default service name `marketplace-pay`.
- `OTEL_BSP_*` — batching of the export (default: every 5 s, 512 spans per request).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

SERVICE_NAME = "marketplace-pay"
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_PROTOCOLS = ("http/protobuf", "grpc")


class TracingConfigError(ValueError):
    """An OTEL_* / MP_TRACE_EXPORT variable has a value that cannot be used."""


class TracingConfig(NamedTuple):
    exporters: tuple[str, ...]  # "otlp", "console"; empty: tracing is off
    protocol: str
    endpoint: str | None  # where OTLP goes (for people: the start-up line)
    sampler: str
    sampler_arg: float | None

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        parts = []
        for name in self.exporters:
            parts.append(f"otlp {self.protocol} {self.endpoint}" if name == "otlp" else name)
        sampler = self.sampler + (f"({self.sampler_arg:g})" if self.sampler_arg is not None else "")
        return f"{', '.join(parts)}; sampler {sampler}"


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def tracing_config(env: Mapping[str, str] | None = None) -> TracingConfig:
    """What the environment asks for; raises TracingConfigError on a value that cannot work."""
    env = os.environ if env is None else env
    protocol = (
        (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
        .strip()
        .lower()
    )
    listed = env.get("OTEL_TRACES_EXPORTER")
    if _flag(env, "OTEL_SDK_DISABLED"):
        names: list[str] = []
    elif listed is not None and listed.strip():
        names = [n.strip().lower() for n in listed.split(",") if n.strip()]
        unknown = [n for n in names if n not in ("otlp", "console", "none")]
        if unknown:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)}; use otlp, console or none"
            )
        names = [n for n in names if n != "none"]
    else:
        names = (
            ["otlp"] if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else []
        )
    export = (env.get("MP_TRACE_EXPORT") or "").strip().lower()
    if export not in ("", "console"):
        raise TracingConfigError(f"MP_TRACE_EXPORT must be console or unset, got {export!r}")
    if export == "console" and "console" not in names and not _flag(env, "OTEL_SDK_DISABLED"):
        names.append("console")
    names = list(dict.fromkeys(names))
    if "otlp" in names and protocol not in _PROTOCOLS:
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got {protocol!r}")
    endpoint = None
    if "otlp" in names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            if protocol == "grpc":
                endpoint = base or "http://localhost:4317"
            else:
                endpoint = (base.rstrip("/") if base else "http://localhost:4318") + "/v1/traces"
    sampler = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(_SAMPLERS)}, got {sampler!r}")
    arg = None
    if sampler.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG") or "1.0"
        try:
            arg = float(raw)
        except ValueError:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG must be a number in [0, 1], got {raw!r}") from None
        if not 0.0 <= arg <= 1.0:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG must be in [0, 1], got {raw!r}")
    return TracingConfig(tuple(names), protocol, endpoint, sampler, arg)
