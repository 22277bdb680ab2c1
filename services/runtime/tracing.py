"""Spans for the live worker loop: W3C trace context from NATS headers, OTLP when configured.

Every event carries a ``traceparent`` header (``contracts/envelope.py``): the trace id is
derived from the event's correlation id (what ``keel tap --trace`` accepts) and the span id
from the event's own id. A worker handling an event opens one ``process`` span whose parent
is that span id; each output it publishes gets a ``publish`` span, child of the handler span,
whose span id is the one the output's own ``traceparent`` announces. So the next worker's
handler span hangs under the publish span that produced its input, and one trace follows a
bar through signal, order, fill and position with no shared state.

Without an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``) there is no tracer at all and the
worker loop builds no spans.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from contracts.envelope import TRACEPARENT, Envelope
from services.runtime.metrics_export import otlp_enabled, resource
from services.runtime.telemetry import subject_kind

_FORCED_SPAN_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "keel_forced_span_id", default=None
)
_PROPAGATOR = TraceContextTextMapPropagator()


class EnvelopeIdGenerator(RandomIdGenerator):
    """Random ids, except for publish spans: their span id is the one the published
    event's ``traceparent`` header already names."""

    def generate_span_id(self) -> int:
        forced = _FORCED_SPAN_ID.get()
        return forced if forced is not None else super().generate_span_id()


def make_tracer_provider(
    service: str, exporter: SpanExporter, batch: bool = True
) -> TracerProvider:
    """A provider that exports to ``exporter`` (batched, or span by span for tests)."""
    provider = TracerProvider(resource=resource(service), id_generator=EnvelopeIdGenerator())
    processor: SpanProcessor = (
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    provider.add_span_processor(processor)
    return provider


def tracer_provider_from_env(service: str) -> TracerProvider | None:
    """OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces endpoint) is set;
    None otherwise, and the worker then builds no spans."""
    if not otlp_enabled("traces"):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return make_tracer_provider(service, OTLPSpanExporter())


def _parse(traceparent: str) -> SpanContext | None:
    ctx = trace.get_current_span(_PROPAGATOR.extract({TRACEPARENT: traceparent}))
    span_context = ctx.get_span_context()
    return span_context if span_context.is_valid else None


def parent_context(headers: Mapping[str, str] | None, envelope: Envelope) -> SpanContext:
    """The causing event's span: the ``traceparent`` header, or derived from the envelope
    when a publisher left it out."""
    header = (headers or {}).get(TRACEPARENT)
    found = _parse(header) if header else None
    return found or _parse(envelope.traceparent) or SpanContext(0, 0, False)


class Tracing:
    """The spans of one worker."""

    def __init__(self, worker: str, provider: TracerProvider, owned: bool) -> None:
        self.worker = worker
        self.provider = provider
        self.owned = owned
        self.tracer = provider.get_tracer("keel.worker")

    def handler_span(
        self,
        headers: Mapping[str, str] | None,
        envelope: Envelope,
        subject: str,
        stream: str,
        seq: int,
        event_type: str,
        start_time: int,
    ) -> Span:
        parent = trace.set_span_in_context(
            trace.NonRecordingSpan(parent_context(headers, envelope))
        )
        return self.tracer.start_span(
            f"process {event_type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=start_time,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": subject,
                "keel.worker": self.worker,
                "keel.stream": stream,
                "keel.stream_seq": seq,
                "keel.subject_kind": subject_kind(subject),
                "keel.event_type": event_type,
                "keel.event_id": envelope.event_id,
                "keel.correlation_id": envelope.correlation_id,
            },
        )

    def publish_span(
        self, handler: Span, subject: str, event_type: str, envelope: Envelope
    ) -> Span:
        """A span whose id is the one the published event's ``traceparent`` names, child of
        the handler span that decided the event (same trace: same correlation id)."""
        announced = _parse(envelope.traceparent)
        context = trace.set_span_in_context(handler)
        token = _FORCED_SPAN_ID.set(announced.span_id if announced else None)
        try:
            return self.tracer.start_span(
                f"publish {event_type}",
                context=context,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.type": "publish",
                    "messaging.destination.name": subject,
                    "keel.worker": self.worker,
                    "keel.subject_kind": subject_kind(subject),
                    "keel.event_type": event_type,
                    "keel.event_id": envelope.event_id,
                    "keel.correlation_id": envelope.correlation_id,
                },
            )
        finally:
            _FORCED_SPAN_ID.reset(token)

    def close(self) -> None:
        if self.owned:
            self.provider.shutdown()
        else:
            self.provider.force_flush()
