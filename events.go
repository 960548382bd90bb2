package upstreamoauth

import (
	"errors"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Events emitted through Caddy's events app, from the module
// http.handlers.upstream_oauth, to the events app of the running config
// (configs.go). Their data never holds a token or a secret.
//
//	token_obtained: source, provider, token_url, issuer (when the token
//	  endpoint is discovered), grant, lifetime
//	  (time.Duration), expiry (time.Time), scope, refresh_grant (bool),
//	  shared (bool: taken from shared storage, no token request made),
//	  duration (time.Duration)
//	token_failed: source, provider, token_url, issuer, grant, result (as the
//	  metric's label), error, refresh_grant, duration, and when the provider
//	  answered with an error: status, code, description
const (
	eventTokenObtained = "token_obtained"
	eventTokenFailed   = "token_failed"
)

// onResult returns the OnResult hook of the source that info describes:
// metrics (labelled metric) and events for every token request.
func onResult(info sourceInfo, metric string) func(cache.Result) {
	initSourceMetrics(metric)
	return func(res cache.Result) {
		metricTokenRequest(metric, res)
		emitResult(info, res)
	}
}

// emitResult emits token_obtained or token_failed for res.
func emitResult(info sourceInfo, res cache.Result) {
	cfg := runningConfig()
	if cfg == nil || cfg.events == nil {
		return
	}
	name := eventTokenObtained
	if res.Err != nil {
		name = eventTokenFailed
	}
	if !cfg.events.ShouldEmit(name) {
		return
	}
	cfg.events.Emit(cfg.ctx, name, eventData(info, res))
}

// eventData is the data of the event for res.
func eventData(info sourceInfo, res cache.Result) map[string]any {
	data := map[string]any{
		"source":        info.Name,
		"provider":      info.Provider,
		"token_url":     info.TokenURL,
		"grant":         string(info.Grant),
		"refresh_grant": res.Refresh,
		"duration":      res.Duration,
	}
	if info.Issuer != "" {
		data["issuer"] = info.Issuer
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
	if pe, ok := errors.AsType[*grants.ProviderError](res.Err); ok {
		data["status"] = pe.Status
		data["code"] = pe.Code
		data["description"] = pe.Description
	}
	return data
}
