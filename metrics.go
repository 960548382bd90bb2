package upstreamoauth

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Metrics, in Caddy's registry (the admin /metrics), all labelled by source
// name. The collectors are made once per process and registered on every
// config's registry: token sources outlive configs, and so do their counts.
//
//	caddy_upstream_oauth_token_requests_total{source,result}
//	caddy_upstream_oauth_token_request_duration_seconds{source}
//	caddy_upstream_oauth_token_expiry_timestamp_seconds{source}
//	caddy_upstream_oauth_upstream_renewals_total{source,status}
//	caddy_upstream_oauth_no_token_responses_total{source}
//	caddy_upstream_oauth_storage_lookups_total{source,result}
//	caddy_upstream_oauth_sources{source}                     (per-request credentials)
//	caddy_upstream_oauth_sources_created_total{source}
//	caddy_upstream_oauth_sources_evicted_total{source,reason}
//
// A handler with per-request credentials labels all its sources' series
// with the handler's name, however many tenants it serves.
var metrics = struct {
	tokenRequests   *prometheus.CounterVec
	tokenDuration   *prometheus.HistogramVec
	tokenExpiry     *expiryCollector
	upstreamRenewal *prometheus.CounterVec
	noToken         *prometheus.CounterVec
	storageLookups  *prometheus.CounterVec
	sourcesLive     *prometheus.GaugeVec
	sourcesCreated  *prometheus.CounterVec
	sourcesEvicted  *prometheus.CounterVec
}{
	tokenRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name: "token_requests_total",
		Help: "Token requests to the provider, by source and result: " + resultsHelp + ".",
	}, []string{"source", "result"}),
	tokenDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name:    "token_request_duration_seconds",
		Help:    "Duration of token requests to the provider, whatever their result.",
		Buckets: prometheus.DefBuckets,
	}, []string{"source"}),
	tokenExpiry: &expiryCollector{desc: prometheus.NewDesc(
		prometheus.BuildFQName(metricsNS, metricsSub, "token_expiry_timestamp_seconds"),
		"Unix time at which the source's current token expires; absent while the source holds no valid token.",
		[]string{"source"}, nil)},
	upstreamRenewal: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name: "upstream_renewals_total",
		Help: "Tokens retired because the upstream answered with a renew_on status, by source and that status.",
	}, []string{"source", "status"}),
	noToken: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name: "no_token_responses_total",
		Help: "Requests answered 502 because the source had no valid token.",
	}, []string{"source"}),
	storageLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name: "storage_lookups_total",
		Help: "Lookups of a usable token in shared storage (share), by source and result: hit, miss, or unreadable (a record that does not decrypt or parse, replaced).",
	}, []string{"source", "result"}),
	sourcesLive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name: "sources",
		Help: "Token sources a handler with per-request credentials holds, one per tenant, by the handler's name.",
	}, []string{"source"}),
	sourcesCreated: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name: "sources_created_total",
		Help: "Token sources made for tenants of a handler with per-request credentials, by the handler's name.",
	}, []string{"source"}),
	sourcesEvicted: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNS, Subsystem: metricsSub,
		Name: "sources_evicted_total",
		Help: "Tenants' token sources stopped to keep within max_sources (reason capacity) or after an hour unused (reason idle), by the handler's name.",
	}, []string{"source", "reason"}),
}

// Reasons a tenant's source is evicted, the reason label.
const (
	evictedCapacity = "capacity"
	evictedIdle     = "idle"
)

// tenantMetrics are the series of one handler's tenant sources.
type tenantMetrics struct {
	live    prometheus.Gauge
	created prometheus.Counter
	evicted *prometheus.CounterVec
}

// tenantStats returns the series of the handler named name, made at zero.
func tenantStats(name string) *tenantMetrics {
	m := &tenantMetrics{
		live:    metrics.sourcesLive.WithLabelValues(name),
		created: metrics.sourcesCreated.WithLabelValues(name),
		evicted: metrics.sourcesEvicted.MustCurryWith(prometheus.Labels{"source": name}),
	}
	m.evicted.WithLabelValues(evictedCapacity)
	m.evicted.WithLabelValues(evictedIdle)
	initSourceMetrics(name)
	return m
}

// forgetTenantStats drops the series of the handler named name, once its
// table is gone (a reload that keeps the handler keeps the table).
func forgetTenantStats(name string) {
	if labelInUse(name) {
		return
	}
	labels := prometheus.Labels{"source": name}
	metrics.sourcesLive.DeletePartialMatch(labels)
	metrics.sourcesCreated.DeletePartialMatch(labels)
	metrics.sourcesEvicted.DeletePartialMatch(labels)
	forgetSourceMetrics(name)
}

const (
	metricsNS  = "caddy"
	metricsSub = "upstream_oauth"
)

// Results of a token request, the result label of token_requests_total.
const (
	resultSuccess         = "success"
	resultProviderError   = "provider_error"   // the provider answered with an error
	resultInvalidResponse = "invalid_response" // an answer that is refused as unusable
	resultTimeout         = "timeout"          // no answer within timeout
	resultTransportError  = "transport_error"  // no answer: connection or TLS failure
	resultCanceled        = "canceled"         // abandoned: the source was stopped
	resultError           = "error"            // anything else
)

var results = []string{resultSuccess, resultProviderError, resultInvalidResponse, resultTimeout, resultTransportError, resultCanceled, resultError}

const resultsHelp = "success, provider_error, invalid_response, timeout, transport_error, canceled or error"

// registerMetrics registers the collectors on a config's registry. The same
// collectors go to every config's registry, so a reload neither loses counts
// nor fails: registering one again is not an error.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		metrics.tokenRequests, metrics.tokenDuration, metrics.tokenExpiry,
		metrics.upstreamRenewal, metrics.noToken, metrics.storageLookups,
		metrics.sourcesLive, metrics.sourcesCreated, metrics.sourcesEvicted,
	} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) && are.ExistingCollector == c {
				continue
			}
			return fmt.Errorf("registering metrics: %v", err)
		}
	}
	return nil
}

// initSourceMetrics makes a source's series exist at zero, so that the
// first failure shows as an increase rather than a new series.
func initSourceMetrics(source string) {
	for _, r := range results {
		metrics.tokenRequests.WithLabelValues(source, r)
	}
	metrics.noToken.WithLabelValues(source)
}

// forgetSourceMetrics drops the series of a source name once no source of
// that name is left, so that tenants that come and go do not grow the
// registry without bound. A reload that keeps the name keeps the counts: the
// new source exists before the old one is destroyed.
func forgetSourceMetrics(source string) {
	if labelInUse(source) {
		return
	}
	labels := prometheus.Labels{"source": source}
	metrics.tokenRequests.DeletePartialMatch(labels)
	metrics.tokenDuration.DeletePartialMatch(labels)
	metrics.upstreamRenewal.DeletePartialMatch(labels)
	metrics.noToken.DeletePartialMatch(labels)
	metrics.storageLookups.DeletePartialMatch(labels)
}

// resultOf classifies a token request's outcome for the result label.
func resultOf(err error) string {
	var (
		pe *grants.ProviderError
		re *grants.ResponseError
		te *grants.TransportError
		de *grants.DiscoveryError
	)
	switch {
	case err == nil:
		return resultSuccess
	case errors.Is(err, context.Canceled):
		return resultCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return resultTimeout
	case errors.As(err, &pe):
		return resultProviderError
	case errors.As(err, &re):
		return resultInvalidResponse
	case errors.As(err, &te):
		return resultTransportError
	case errors.As(err, &de): // metadata that answered but was unusable
		return resultInvalidResponse
	}
	return resultError
}

// metricTokenRequest counts a token request and its duration under the
// source label. A token taken from shared storage made no request, and is
// not counted here.
func metricTokenRequest(label string, res cache.Result) {
	if res.Shared && res.Err == nil {
		return
	}
	metrics.tokenRequests.WithLabelValues(label, resultOf(res.Err)).Inc()
	metrics.tokenDuration.WithLabelValues(label).Observe(res.Duration.Seconds())
}

// metricUpstreamRenewal counts a token retired because the upstream
// answered with status, a renew_on status.
func metricUpstreamRenewal(source string, status int) {
	metrics.upstreamRenewal.WithLabelValues(source, strconv.Itoa(status)).Inc()
}

// metricNoToken counts a request answered 502 for lack of a token.
func metricNoToken(source string) {
	metrics.noToken.WithLabelValues(source).Inc()
}

// metricStorage counts a lookup of a usable token in shared storage.
func metricStorage(source string, r cache.Lookup) {
	metrics.storageLookups.WithLabelValues(source, string(r)).Inc()
}

// expiryCollector reports, at scrape time, the expiry of the token each
// live source holds: a source that left the config, or whose token lapsed,
// has no series, so no stale expiry can raise an alert.
type expiryCollector struct {
	desc *prometheus.Desc
}

func (c *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	// Sources with the same name (settings changed across a reload, for a
	// moment both live) make one series: the latest expiry. A handler with
	// per-request credentials makes one series for all its tenants: the
	// soonest expiry, the one an alert should look at.
	expiries := map[string]time.Time{}
	for _, p := range liveSources() {
		st := p.Status()
		if st.Expiry == nil {
			continue
		}
		cur, ok := expiries[p.metric]
		if !ok || (p.tenant && st.Expiry.Before(cur)) || (!p.tenant && st.Expiry.After(cur)) {
			expiries[p.metric] = *st.Expiry
		}
	}
	for name, exp := range expiries {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue,
			float64(exp.UnixNano())/1e9, name)
	}
}
