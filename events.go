package upstreamoauth

import (
	"errors"
	"fmt"
	"net/url"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Events emitted through Caddy's events app, from the module
// http.handlers.upstream_oauth. Their data never holds a token or a
// secret.
//
//	token_obtained: source, provider, token_url, grant, lifetime
//	  (time.Duration), expiry (time.Time), scope, refresh_grant (bool),
//	  shared (bool: taken from shared storage, no token request made),
//	  duration (time.Duration)
//	token_failed: source, provider, token_url, grant, result (as the
//	  metric's label), error, refresh_grant, duration, and when the provider
//	  answered with an error: status, code, description
const (
	eventTokenObtained = "token_obtained"
	eventTokenFailed   = "token_failed"
)

// Token sources outlive the config that made them, and emit from their own
// goroutines, so they cannot hold an events app: each config that has an
// upstream_oauth handler leaves its events app here at provision time, and
// an event goes to the one of the running config. A config is known by its
// metrics registry, which Caddy makes anew for every config; caddy.
// ActiveContext names the running one, which stays the old config until the
// new one has started (its subscriptions made), and stays it when a reload
// fails.
var eventApps = struct {
	sync.Mutex
	byConfig map[*prometheus.Registry]*eventApp
	seq      uint64
}{byConfig: map[*prometheus.Registry]*eventApp{}}

type eventApp struct {
	app *caddyevents.App
	ctx caddy.Context // a handler's: its module is the events' origin
	seq uint64        // provision order
}

// useEvents records the events app of the config that ctx belongs to, and
// forgets those of configs that are gone. The http app loads the events app
// before its handlers; a context without one (a bare test context) emits
// no events.
func useEvents(ctx caddy.Context) error {
	v, err := ctx.AppIfConfigured("events")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("getting events app: %v", err)
	}
	app, ok := v.(*caddyevents.App)
	if !ok {
		return fmt.Errorf("events app is %T", v)
	}
	reg := ctx.GetMetricsRegistry()
	eventApps.Lock()
	defer eventApps.Unlock()
	pruneEventAppsLocked()
	if _, ok := eventApps.byConfig[reg]; !ok {
		eventApps.seq++
		eventApps.byConfig[reg] = &eventApp{app: app, ctx: ctx, seq: eventApps.seq}
	}
	return nil
}

// pruneEventAppsLocked forgets the events apps of configs that were stopped
// or failed to load (their contexts are cancelled).
func pruneEventAppsLocked() {
	for reg, e := range eventApps.byConfig {
		if e.ctx.Err() != nil {
			delete(eventApps.byConfig, reg)
		}
	}
}

// currentEventApp is the events app of the running config; failing that (no
// upstream_oauth handler in it), of the newest config that is not gone.
func currentEventApp() *eventApp {
	active := caddy.ActiveContext()
	reg := active.GetMetricsRegistry()
	eventApps.Lock()
	defer eventApps.Unlock()
	pruneEventAppsLocked()
	if e, ok := eventApps.byConfig[reg]; ok && reg != nil {
		return e
	}
	var newest *eventApp
	for _, e := range eventApps.byConfig {
		if newest == nil || e.seq > newest.seq {
			newest = e
		}
	}
	return newest
}

// sourceInfo identifies a source in events and the admin API: no secret.
type sourceInfo struct {
	name, provider, tokenURL, grant string
}

// onResult returns the OnResult hook of the source made from s: metrics and
// events for every token request. It keeps only the fields it reports, none
// of them secret.
func onResult(s settings) func(cache.Result) {
	info := sourceInfo{name: s.Name, provider: s.Provider, tokenURL: displayURL(s.Grants.TokenURL), grant: s.Grants.Grant}
	initSourceMetrics(s.Name)
	return func(res cache.Result) {
		metricTokenRequest(res)
		emitResult(info, res)
	}
}

// emitResult emits token_obtained or token_failed for res.
func emitResult(info sourceInfo, res cache.Result) {
	e := currentEventApp()
	if e == nil {
		return
	}
	name := eventTokenObtained
	if res.Err != nil {
		name = eventTokenFailed
	}
	if !e.app.ShouldEmit(name) {
		return
	}
	e.app.Emit(e.ctx, name, eventData(info, res))
}

// eventData is the data of the event for res.
func eventData(info sourceInfo, res cache.Result) map[string]any {
	data := map[string]any{
		"source":        info.name,
		"provider":      info.provider,
		"token_url":     info.tokenURL,
		"grant":         info.grant,
		"refresh_grant": res.Refresh,
		"duration":      res.Duration,
	}
	if res.Err == nil {
		if res.Token != nil {
			data["lifetime"] = res.Token.Lifetime
			data["expiry"] = res.Token.Expiry
			data["scope"] = res.Token.Scope
		}
		data["shared"] = res.Shared
		return data
	}
	data["result"] = resultOf(res.Err)
	data["error"] = res.Err.Error()
	var pe *grants.ProviderError
	if errors.As(res.Err, &pe) {
		data["status"] = pe.Status
		data["code"] = pe.Code
		data["description"] = pe.Description
	}
	return data
}

// displayURL is u as the admin API and events show it: query values
// (which may carry a key) redacted, no fragment. The token URL never has
// user info: config validation refuses it.
func displayURL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	parsed.User, parsed.Fragment, parsed.RawFragment = nil, "", ""
	if parsed.RawQuery != "" {
		q := parsed.Query()
		for k := range q {
			q[k] = []string{"REDACTED"}
		}
		parsed.RawQuery = q.Encode()
	}
	return parsed.String()
}
