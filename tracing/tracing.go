// Package tracing exports the proxy's spans (one per request, one per
// token fetch or session creation) with the OpenTelemetry SDK over
// OTLP/HTTP, and reads and writes W3C trace context. A nil *Tracer is
// tracing off: every method does nothing, and no header is added.
//
// A span carries what names the work (listener, route, injector, the
// outcome and status) and never a value taken from a request or a
// credential: no host, path, query, header or token.
package tracing

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/authproxy/authproxy/config"
)

// Tracer makes and exports the proxy's spans.
type Tracer struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
}

var traceContext = propagation.TraceContext{}

// New starts an exporter to cfg's collector. It connects lazily: an
// unreachable collector loses spans (the SDK logs nothing of their
// content), never requests.
func New(cfg *config.Tracing, version string) (*Tracer, error) {
	if cfg == nil {
		return nil, nil
	}
	u, err := url.Parse(cfg.OTLPEndpoint)
	if err != nil {
		return nil, fmt.Errorf("tracing.otlp_endpoint: %w", err)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(u.String()))
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = *cfg.SampleRatio
	}
	name := cfg.ServiceName
	if name == "" {
		name = "authproxy"
	}
	res := resource.NewSchemaless(attribute.String("service.name", name), attribute.String("service.version", version))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(2*time.Second)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithResource(res),
	)
	return &Tracer{tp: tp, tracer: tp.Tracer("github.com/authproxy/authproxy")}, nil
}

// Shutdown sends the spans still buffered, within ctx.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// Span is one request's span (nil: none).
type Span struct {
	span trace.Span
}

// StartRequest starts the span of a request whose upstream head is h: its
// parent is the client's traceparent, if any, and h's traceparent
// (and tracestate) is replaced with the span's, so that the upstream's
// spans are its children.
func (t *Tracer) StartRequest(h http.Header) *Span {
	if t == nil {
		return nil
	}
	ctx := traceContext.Extract(context.Background(), propagation.HeaderCarrier(h))
	ctx, span := t.tracer.Start(ctx, "authproxy request", trace.WithSpanKind(trace.SpanKindServer))
	h.Del("Traceparent")
	h.Del("Tracestate")
	traceContext.Inject(ctx, propagation.HeaderCarrier(h))
	return &Span{span: span}
}

// TraceID is the span's trace id, in hex ("" for none).
func (s *Span) TraceID() string {
	if s == nil {
		return ""
	}
	return s.span.SpanContext().TraceID().String()
}

// End ends a request's span: the listener and protocol (http1, h2) it
// came by, the route and injector that served it ("" when no route
// matched), the status the client got (0: an HTTP/2 stream reset before
// an answer) and why the proxy answered itself ("" when the upstream did).
func (s *Span) End(listener, protocol, route, injector string, status int, reason string) {
	if s == nil {
		return
	}
	attrs := []attribute.KeyValue{attribute.String("authproxy.listener", listener), attribute.String("network.protocol.name", protocol),
		attribute.String("authproxy.route", route), attribute.String("authproxy.injector", injector),
		attribute.Int("http.response.status_code", status), attribute.String("authproxy.outcome", outcome(status, reason))}
	if reason != "" {
		attrs = append(attrs, attribute.String("authproxy.reason", reason))
	}
	s.span.SetAttributes(attrs...)
	if status == 0 || status >= 500 || reason != "" {
		s.span.SetStatus(codes.Error, outcome(status, reason))
	}
	s.span.End()
}

func outcome(status int, reason string) string {
	switch {
	case reason != "":
		return "refused"
	case status == 0:
		return "reset"
	case status >= 500:
		return "upstream_error"
	}
	return "ok"
}

// Fetched records a token fetch (or a session's creation) that took d and
// has just ended, as a span of its own: fetches serve every request that
// waits for them, and background refreshes none.
func (t *Tracer) Fetched(injector string, d time.Duration, refresh bool, err error) {
	if t == nil {
		return
	}
	end := time.Now()
	kind := "fetch"
	if refresh {
		kind = "refresh"
	}
	_, span := t.tracer.Start(context.Background(), "authproxy token "+kind, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithTimestamp(end.Add(-d)), trace.WithAttributes(attribute.String("authproxy.injector", injector),
			attribute.Bool("authproxy.refresh", refresh), attribute.String("authproxy.outcome", fetchOutcome(err))))
	if err != nil {
		span.SetStatus(codes.Error, fetchOutcome(err))
	}
	span.End(trace.WithTimestamp(end))
}

// fetchOutcome names a fetch's outcome without its error's text, which
// may quote an issuer's answer.
func fetchOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "error"
}

// RequestID is what names a request in the access log and in the
// X-Request-Id of the proxy's own answers: the trace id of its valid
// traceparent, else a random id of the same shape.
func RequestID(h http.Header) string {
	if sc := trace.SpanContextFromContext(traceContext.Extract(context.Background(), propagation.HeaderCarrier(h))); sc.IsValid() {
		return sc.TraceID().String()
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Valid reports whether id looks like a RequestID (32 lowercase hex).
func Valid(id string) bool {
	return len(id) == 32 && strings.Trim(id, "0123456789abcdef") == ""
}
