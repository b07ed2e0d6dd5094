"""OpenTelemetry tracing for every service: off by default, on with `EBB_TRACING=1`.

`ebb up --tracing` sets `EBB_TRACING=1` and a per-component `OTEL_SERVICE_NAME`; the rest
is the standard OpenTelemetry environment:

- `OTEL_TRACES_EXPORTER`: `otlp` (default; OTLP over gRPC), `console` or `none`;
- `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` (default
  `http://localhost:4317`), and the exporter's other `OTEL_EXPORTER_OTLP_*` variables,
  which it reads itself; only the gRPC protocol is installed;
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`;
  `parentbased_traceidratio` with `0.01` samples 1 % of new traces and follows the
  caller's decision otherwise);
- `OTEL_SERVICE_NAME` (default `ebb-<component>`), `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_PROPAGATORS` (default W3C tracecontext and baggage).

    tracing = setup("autoscaler", environ)          # Tracing; DISABLED when off
    grpc.aio.server(interceptors=tracing.server_interceptors(), ...)
    grpc.aio.insecure_channel(target, interceptors=tracing.client_interceptors())
    ...
    await tracing.aclose()                          # flush, at the end of shutdown

Tests pass `exporter=` (e.g. an InMemorySpanExporter) to `setup` instead of OTLP, and
`set_global=False` to keep the process-wide provider untouched.

gRPC spans come from `opentelemetry-instrumentation-grpc` (pinned), with fixes for its
asyncio interceptors, all covered by tests/integration/test_observability_tracing.py:

1. Server: the stock interceptor wraps every response-streaming handler in an async
   generator and `async for`s over it, which breaks handlers written in the
   `await context.write()` style (a coroutine, e.g. `grpc.health.v1.Health/Watch`):
   "'async for' requires an object with __aiter__ method, got coroutine"
   (open-telemetry/opentelemetry-python-contrib#3066). Ours wraps such handlers as a
   coroutine instead.
2. Client, stream-unary (`StatsService.StreamStats`): the stock interceptor awaits the
   call's status - the end of the RPC - before handing the call back, so a caller that
   writes through `call.write()` (the queue's stat reporter) waits on itself until its
   write times out.
3. Client, unary-stream and stream-stream (`WatchDecisions`, ADS): the stock interceptor
   hands back a generator instead of the call, so `call.read()` raises
   NotImplementedError, and the span only ends if that generator is iterated to its end;
   a caller that cancels a stream it never read leaks the span.
   For 2 and 3 ours returns the call itself at once and ends the span (with the call's
   status) when the call ends, however it ends. Unary-unary calls use the stock code.

Health checks and reflection are not traced at all (noise from probes and grpcurl).
A long-lived stream (ADS, stats, decisions) is one span for its whole life.

The HTTP data plane (queue, activator) uses the W3C `traceparent` helpers below:
`parse_traceparent` never raises (a malformed header is None, i.e. ignored), and
`Tracing.start_http_span` continues the caller's trace when the header is valid.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ebb.common.settings import SettingsError, env_view

log = logging.getLogger(__name__)

ENV_ENABLED = "EBB_TRACING"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Services whose calls are never traced: probes and tooling, not part of a request.
UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
EXPORTERS = ("otlp", "console", "none")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


# ---------------------------------------------------------------------------------------
# W3C trace context (pure; no OpenTelemetry import)

# version "-" trace-id "-" parent-id "-" flags, lowercase hex. A future version (not 00,
# not ff) may append fields after another "-"; version 00 must end after the flags.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?")
_BYTES = (bytes, bytearray)  # a tuple: `bytes | bytearray` builds a union on every call
# The common case, as the proxies receive it: version 00 exactly (bytes, no whitespace).
_TRACEPARENT_00 = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_B = b"0" * 32
_ZERO_SPAN_B = b"0" * 16
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = 0x01


@dataclass(frozen=True)
class TraceParent:
    """A valid W3C `traceparent`: ids as lowercase hex, flags as an int."""

    trace_id: str
    span_id: str  # the caller's span: our parent
    flags: int = SAMPLED
    version: int = 0

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        """As a header value. We only speak version 00, so that is what we send on."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self, span_id: str | None = None) -> TraceParent:
        """The same trace with a new span (ours) as the parent of the next hop."""
        return TraceParent(self.trace_id, span_id or new_span_id(), self.flags & 0xFF)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """The header's TraceParent, or None when absent or malformed (never raises).

    Malformed: wrong length or separators, upper-case or non-hex digits, version ff,
    all-zero trace or span id, or extra fields after a version 00 header.
    """
    if value is None:
        return None
    if isinstance(value, _BYTES):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version_hex, trace_id, span_id, flags_hex, rest = match.groups()
    version = int(version_hex, 16)
    if version == 0xFF or (version == 0 and rest):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, int(flags_hex, 16), version)


def trace_id_bytes(value: bytes) -> bytes:
    """The trace id of a `traceparent` header as hex bytes, b"" when it is malformed; as
    `parse_traceparent`, with a fast path for version 00 (a log line per request needs it)."""
    match = _TRACEPARENT_00.fullmatch(value)
    if match is not None:
        if match[1] == _ZERO_TRACE_B or match[2] == _ZERO_SPAN_B:
            return b""
        return match[1]
    parent = parse_traceparent(value)
    return b"" if parent is None else parent.trace_id.encode()


def format_traceparent(trace_id: str | int, span_id: str | int, sampled: bool = True) -> str:
    """`00-<trace>-<span>-<flags>` from hex strings or the ints OpenTelemetry uses."""
    trace_hex = f"{trace_id:032x}" if isinstance(trace_id, int) else trace_id
    span_hex = f"{span_id:016x}" if isinstance(span_id, int) else span_id
    return f"00-{trace_hex}-{span_hex}-{SAMPLED if sampled else 0:02x}"


def header_value(headers: Mapping[str, Any] | Sequence[tuple[Any, Any]], name: str) -> Any:
    """The first value of header `name` (case-insensitive) in a mapping or a list of
    pairs (str or bytes names), or None."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    wanted = name.lower()
    for key, value in items:
        key_text = key.decode("latin-1") if isinstance(key, bytes | bytearray) else str(key)
        if key_text.lower() == wanted:
            return value
    return None


# The data plane's sampling (pure). A span that is sampled out still carries the trace to
# the next hop, so it needs ids and flags but nothing of the SDK: deciding here first keeps
# a sampled-out request at ~2 us instead of the SDK's ~15 us (tracer lookup, context,
# sampler objects, NonRecordingSpan).

_TRACE_ID_LOW = (1 << 64) - 1  # what TraceIdRatioBased compares with its bound


def sample(sampler: str, ratio: float, parent: TraceParent | None, trace_id: int) -> bool:
    """Whether a span in trace `trace_id` (the caller's, or a new one when `parent` is None)
    is recorded, as OpenTelemetry's sampler named `sampler` decides it: parent-based ones
    follow a caller's sampled flag; the ratio ones keep a trace when the low 64 bits of its
    id fall below ratio x 2^64 (TraceIdRatioBased, so every hop agrees)."""
    return decider(sampler, ratio)(parent, trace_id)


def decider(sampler: str, ratio: float):
    """`sample` for fixed settings, as a fast `decide(parent, trace_id) -> bool`."""
    root = sampler.removeprefix("parentbased_")
    parent_based = root != sampler
    fixed = {"always_on": True, "always_off": False}.get(root)  # None: traceidratio
    bound = round(ratio * (_TRACE_ID_LOW + 1))

    def decide(parent: TraceParent | None, trace_id: int) -> bool:
        if parent_based and parent is not None:
            return parent.flags & SAMPLED == SAMPLED
        if fixed is not None:
            return fixed
        return trace_id & _TRACE_ID_LOW < bound

    return decide


class UnsampledSpan:
    """A sampled-out data-plane span: just what the next hop's `traceparent` needs (built
    once, as the header line a proxy sends on)."""

    __slots__ = ("trace_id", "span_id", "tracestate", "header_lines")

    def __init__(self, trace_id: str, span_id: str, tracestate: str | None = None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.tracestate = tracestate
        lines = "traceparent: 00-" + trace_id + "-" + span_id + "-00\r\n"
        if tracestate:
            lines += "tracestate: " + tracestate + "\r\n"
        self.header_lines = lines.encode("latin-1")

    def is_recording(self) -> bool:
        return False


# Ids come from `random`, not `secrets`: they must be unique, not secret (the SDK does the
# same), and os.urandom is a system call. One draw of 192 bits, formatted once, gives both
# ids of a new trace (formatting is most of the cost).
_getrandbits = random.getrandbits


def _new_ids() -> tuple[str, str, int]:
    """(trace id, span id) as hex for a new trace, and the trace id's low 64 bits (what
    TraceIdRatioBased compares with its bound)."""
    bits = _getrandbits(192)
    ids = bits.to_bytes(24, "big").hex()  # twice as fast as "%048x"
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # 2^-64 at worst: draw again
        return _new_ids()
    return trace_id, span_id, (bits >> 64) & _TRACE_ID_LOW


def _new_span_id() -> str:
    return (_getrandbits(64) or 1).to_bytes(8, "big").hex()


def _text(value: str | bytes | None) -> str | None:
    if value is None or value.__class__ is str:  # no isinstance(X | Y): that builds a union
        return value
    return bytes(value).decode("latin-1")


# ---------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class TracingSettings:
    enabled: bool = False
    service_name: str = ""
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    exporters: tuple[str, ...] = ("otlp",)
    otlp_endpoint: str | None = None  # None: the exporter's default (or its own env)


def _flag(key: str, value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(f"{key} = {value!r}, must be 1 or 0 (true or false)")


def load_settings(component: str, environ: Mapping[str, str] | None = None) -> TracingSettings:
    """Tracing settings from the environment (os.environ unless one is injected).

    When tracing is off nothing else is read. Errors name the variable and its rule.
    """
    env = env_view(environ)
    if not _flag(ENV_ENABLED, env.get(ENV_ENABLED)):
        return TracingSettings(enabled=False, service_name=f"ebb-{component}")
    service_name = (env.get("OTEL_SERVICE_NAME") or "").strip() or f"ebb-{component}"
    sampler = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        raise SettingsError(
            f"OTEL_TRACES_SAMPLER = {sampler!r}, must be one of {', '.join(SAMPLERS)}"
        )
    sampler_arg = None
    raw_arg = (env.get("OTEL_TRACES_SAMPLER_ARG") or "").strip()
    if sampler.endswith("traceidratio") and raw_arg:
        try:
            sampler_arg = float(raw_arg)
        except ValueError:
            sampler_arg = -1.0
        if not 0.0 <= sampler_arg <= 1.0:
            raise SettingsError(
                f"OTEL_TRACES_SAMPLER_ARG = {raw_arg!r}, must be a ratio from 0 to 1 (0.01 = 1 %)"
            )
    exporters = tuple(
        e.strip().lower()
        for e in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")
        if e.strip()
    ) or ("otlp",)
    for name in exporters:
        if name not in EXPORTERS:
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER = {name!r}, must be one of {', '.join(EXPORTERS)}"
            )
    protocol = (
        (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        )
        .strip()
        .lower()
    )
    if "otlp" in exporters and protocol != "grpc":
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL = {protocol!r}, must be grpc (the exporter installed)"
        )
    endpoint = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or ""
    ).strip() or None
    return TracingSettings(
        enabled=True,
        service_name=service_name,
        sampler=sampler,
        sampler_arg=sampler_arg,
        exporters=tuple(e for e in exporters if e != "none"),
        otlp_endpoint=endpoint,
    )


def make_sampler(settings: TracingSettings):
    from opentelemetry.sdk.trace import sampling

    ratio = 1.0 if settings.sampler_arg is None else settings.sampler_arg
    return {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBasedTraceIdRatio(ratio),
    }[settings.sampler]()


# ---------------------------------------------------------------------------------------
# The process's tracing


def _method_of(details: Any) -> str:
    method = getattr(details, "method", "") or ""
    return method.decode("utf-8", "replace") if isinstance(method, bytes) else str(method)


def traced(details: Any) -> bool:
    """Filter for the interceptors: every method but health checks and reflection."""
    return not _method_of(details).startswith(UNTRACED_PREFIXES)


@functools.cache
def _interceptor_classes() -> tuple[type, type, type, type]:
    """Our fixes of opentelemetry-instrumentation-grpc (see the module docstring): the
    server interceptor, and client interceptors for unary-stream, stream-unary and
    stream-stream calls. Built on first use: the instrumentation takes ~0.1 s to import."""
    import asyncio

    import grpc
    from opentelemetry.instrumentation.grpc import _aio_client, _aio_server
    from opentelemetry.trace.status import Status, StatusCode

    class AioServerInterceptor(_aio_server.OpenTelemetryAioServerInterceptor):
        def _intercept_aio_server_stream(self, behavior, handler_call_details):
            if not inspect.isasyncgenfunction(behavior):
                # `await context.write(...)` style: grpc awaits the handler, so the wrapper
                # must be a coroutine too (the unary wrapper is exactly that).
                return self._intercept_aio_server_unary(behavior, handler_call_details)
            return super()._intercept_aio_server_stream(behavior, handler_call_details)

    pending: set[asyncio.Task] = set()  # keeps the span-ending tasks alive

    async def end_when_done(span, call) -> None:
        try:
            code = await call.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, await call.details()))
        except BaseException as exc:  # cancelled with the loop: still end the span
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            if not isinstance(exc, Exception):
                raise
        finally:
            span.end()

    class StreamingClientInterceptor(_aio_client._BaseAioClientInterceptor):
        """Hands the call back at once (so `write()`, `read()` and `done_writing()` work)
        and ends the span when the call ends, however it ends."""

        async def _intercept(self, continuation, client_call_details, request):
            if self.tracing_skipped(client_call_details):
                return await continuation(client_call_details, request)
            with self._start_interceptor_span(client_call_details.method) as span:
                details = self.propagate_trace_in_details(client_call_details)
                try:
                    call = await continuation(details, request)
                except Exception as exc:
                    self.add_error_details_to_span(span, exc)
                    span.end()
                    raise
            task = asyncio.ensure_future(end_when_done(span, call))
            pending.add(task)
            task.add_done_callback(pending.discard)
            return call

    class UnaryStream(StreamingClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):
            return await self._intercept(continuation, client_call_details, request)

    class StreamUnary(StreamingClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
            return await self._intercept(continuation, client_call_details, request_iterator)

    class StreamStream(StreamingClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(
            self, continuation, client_call_details, request_iterator
        ):
            return await self._intercept(continuation, client_call_details, request_iterator)

    return AioServerInterceptor, UnaryStream, StreamUnary, StreamStream


class Tracing:
    """A process's tracing: its TracerProvider (None when off) and helpers bound to it."""

    def __init__(
        self, provider=None, settings: TracingSettings | None = None, http_provider=None
    ) -> None:
        self.provider = provider
        self._closed = False
        # The data plane decides sampling itself (`sample`) when it knows the settings, and
        # then records through `http_provider` (same span processors, ALWAYS_ON sampler).
        self._decide = None
        self._parent_based = False  # `http_hop` may pass an unsampled caller's header on
        if settings is not None and http_provider is not None:
            ratio = 1.0 if settings.sampler_arg is None else settings.sampler_arg
            self._decide = decider(settings.sampler, ratio)
            self._parent_based = settings.sampler.startswith("parentbased_")
        self._http_tracer = (http_provider or provider).get_tracer("ebb.http") if provider else None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def tracer(self, name: str):
        """An OpenTelemetry tracer (a no-op one when tracing is off)."""
        from opentelemetry import trace

        if self.provider is None:
            return trace.NoOpTracer()
        return self.provider.get_tracer(name)

    def _grpc_tracer(self):
        from opentelemetry.instrumentation.grpc.version import __version__

        return self.provider.get_tracer(
            "opentelemetry.instrumentation.grpc",
            __version__,
            schema_url="https://opentelemetry.io/schemas/1.11.0",
        )

    def server_interceptors(self) -> list:
        """For `grpc.aio.server(interceptors=...)`; [] when tracing is off."""
        if self.provider is None:
            return []
        server_cls = _interceptor_classes()[0]
        return [server_cls(self._grpc_tracer(), filter_=traced)]

    def client_interceptors(self) -> list:
        """For `grpc.aio.insecure_channel(target, interceptors=...)`; [] when off."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import _aio_client

        _, unary_stream, stream_unary, stream_stream = _interceptor_classes()
        tracer = self._grpc_tracer()
        return [
            _aio_client.UnaryUnaryAioClientInterceptor(tracer, filter_=traced),
            unary_stream(tracer, filter_=traced),
            stream_unary(tracer, filter_=traced),
            stream_stream(tracer, filter_=traced),
        ]

    # -- HTTP data plane ---------------------------------------------------------------

    def start_http_span(
        self,
        name: str,
        *,
        traceparent: str | bytes | None = None,
        tracestate: str | bytes | None = None,
        attributes: Mapping[str, Any] | None = None,
        start_time_ns: int | None = None,
    ):
        """Start (not activate) a SERVER span continuing the caller's trace when its
        `traceparent` is valid (a malformed one is ignored: a new trace starts). Returns
        None when tracing is off, an `UnsampledSpan` when sampled out; end it with
        `end_http_span`. Callback-style proxies hold the span on their request object, so
        no context is attached here."""
        if self.provider is None:
            return None
        parent = None if traceparent is None else parse_traceparent(traceparent)
        decide = self._decide
        if decide is not None:
            if parent is None:
                trace_id, span_id, low = _new_ids()
                if not decide(None, low):
                    return UnsampledSpan(trace_id, span_id, _text(tracestate) or None)
            elif not decide(parent, int(parent.trace_id[16:], 16)):
                return UnsampledSpan(parent.trace_id, _new_span_id(), _text(tracestate) or None)
        from opentelemetry.trace import SpanKind

        return self._http_tracer.start_span(
            name,
            context=_context_of(parent, tracestate),
            kind=SpanKind.SERVER,
            attributes=dict(attributes or {}),
            start_time=start_time_ns,
        )

    def http_hop(self, method: bytes, traceparent: bytes | None, tracestate: bytes | None):
        """The data plane's one call per request (tracing on): `(span, header lines)` to
        send on instead of the caller's `traceparent`/`tracestate`, or `(None, None)`:
        send the request on as it came.

        The second case is the common one behind another hop at a low sampling rate: the
        caller sent a valid version-00 `traceparent` that is not sampled, and a
        parent-based sampler follows it. Nothing would be recorded here, so the caller's
        header goes on untouched and carries the same decision in the same trace; making
        a span id that nothing records would only cost time. Otherwise it is
        `start_http_span`."""
        if traceparent is not None and self._parent_based:
            match = _TRACEPARENT_00.fullmatch(traceparent)
            if (
                match is not None
                and not int(match[3], 16) & SAMPLED
                and match[1] != _ZERO_TRACE_B
                and match[2] != _ZERO_SPAN_B
            ):
                return None, None
        span = self.start_http_span(
            method.decode("latin-1"), traceparent=traceparent, tracestate=tracestate
        )
        return span, self.trace_header_lines(span, tracestate)

    @staticmethod
    def end_http_span(span, status_code: int | None = None, error: str | None = None) -> None:
        """Record the response status (5xx or `error` mark the span failed) and end it."""
        if span is None or span.__class__ is UnsampledSpan:
            return
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
        if error or (status_code is not None and status_code >= 500):
            from opentelemetry.trace.status import Status, StatusCode  # failures only

            span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status_code}"))
        span.end()

    @staticmethod
    def trace_headers(span, tracestate: str | bytes | None = None) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) naming `span` as the parent of the next hop;
        [] for no span or an invalid one."""
        if span is None:
            return []
        if span.__class__ is UnsampledSpan:
            headers = [(TRACEPARENT, f"00-{span.trace_id}-{span.span_id}-00")]
            if span.tracestate:
                headers.append((TRACESTATE, span.tracestate))
            return headers
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return []
        headers = [
            (TRACEPARENT, format_traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags.sampled))
        ]
        state = ctx.trace_state.to_header() if ctx.trace_state else ""
        if not state and tracestate:
            state = tracestate.decode("latin-1") if isinstance(tracestate, bytes) else tracestate
        if state:
            headers.append((TRACESTATE, state))
        return headers

    @classmethod
    def trace_header_lines(cls, span, tracestate: str | bytes | None = None) -> bytes:
        """`trace_headers` as HTTP/1.1 header lines (b"Name: value\\r\\n" each), for
        proxies that build heads as bytes."""
        if span.__class__ is UnsampledSpan:
            return span.header_lines
        return b"".join(
            b"%s: %s\r\n" % (name.encode(), value.encode("latin-1"))
            for name, value in cls.trace_headers(span, tracestate)
        )

    @staticmethod
    def trace_id_of(span) -> str:
        """The span's trace id as 32 hex digits ("" for no span), e.g. for a log line."""
        if span is None:
            return ""
        if span.__class__ is UnsampledSpan:
            return span.trace_id
        ctx = span.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else ""

    # -- lifecycle ---------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 2.0) -> bool:
        """Export what is pending and stop the exporters, waiting at most `timeout_s`;
        idempotent. False when it timed out (a collector that is down): the rest is
        dropped rather than holding up the service's exit. The SDK's own flush has no
        deadline (and retries an unreachable collector for 10 s), hence the thread."""
        if self.provider is None or self._closed:
            return True
        self._closed = True
        provider, done = self.provider, threading.Event()

        def run() -> None:
            try:
                provider.shutdown()
            except Exception:  # a collector that went away must not fail the shutdown
                log.warning("tracing shutdown failed", exc_info=True)
            finally:
                done.set()

        threading.Thread(target=run, name="tracing-shutdown", daemon=True).start()
        if not done.wait(timeout_s):
            log.warning(
                "tracing: spans not exported in time, dropped", extra={"timeout_s": timeout_s}
            )
            return False
        return True

    async def aclose(self, timeout_s: float = 2.0) -> bool:
        """shutdown() off the event loop."""
        import asyncio

        return await asyncio.to_thread(self.shutdown, timeout_s)


DISABLED = Tracing(None)


def remote_context(traceparent: str | bytes | None, tracestate: str | bytes | None = None):
    """An OpenTelemetry Context whose parent is the caller's span, or None (no valid
    `traceparent`: the span starts a new trace)."""
    return _context_of(parse_traceparent(traceparent), tracestate)


def _context_of(parent: TraceParent | None, tracestate: str | bytes | None):
    if parent is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    state = None
    if tracestate:
        state = TraceState.from_header([_text(tracestate)])
    span_context = SpanContext(
        trace_id=int(parent.trace_id, 16),
        span_id=int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(parent.flags & 0xFF),
        trace_state=state,
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def setup(
    component: str,
    environ: Mapping[str, str] | None = None,
    *,
    exporter=None,
    set_global: bool = True,
) -> Tracing:
    """The process's Tracing from the environment: DISABLED unless `EBB_TRACING=1`.

    `exporter` (a SpanExporter) replaces the configured exporters and is fed
    synchronously, for tests. With `set_global`, the provider also becomes
    OpenTelemetry's global one (possible once per process). Raises SettingsError.
    """
    settings = load_settings(component, environ)
    if not settings.enabled:
        return DISABLED
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    resource = Resource.create({SERVICE_NAME: settings.service_name})
    processors = SynchronousMultiSpanProcessor()
    provider = TracerProvider(
        sampler=make_sampler(settings),
        resource=resource,
        # Services flush in their shutdown sequence, bounded (Tracing.aclose); the SDK's
        # exit hook has no bound and would hold a dying process on a dead collector.
        shutdown_on_exit=False,
        active_span_processor=processors,
    )
    # HTTP spans: sampled by `sample` before the SDK sees them, recorded through the same
    # processors (never shut down on its own: `provider.shutdown` flushes them).
    http_provider = TracerProvider(
        sampler=ALWAYS_ON, resource=resource, shutdown_on_exit=False, active_span_processor=processors
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for name in settings.exporters:
            if name == "otlp":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )

                kwargs = {"endpoint": settings.otlp_endpoint} if settings.otlp_endpoint else {}
                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(**kwargs)))
            elif name == "console":
                provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if set_global:
        trace.set_tracer_provider(provider)
    log.info(
        "tracing on",
        extra={
            "service_name": settings.service_name,
            "sampler": settings.sampler,
            "sampler_arg": settings.sampler_arg,
            "exporters": list(settings.exporters) if exporter is None else ["injected"],
        },
    )
    return Tracing(provider, settings, http_provider)
