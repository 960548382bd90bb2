package upstreamoauth

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// sources holds every token source of the process, keyed by a hash of its
// settings. Handlers with the same settings share one, within a config and
// across a reload, so an unchanged reload makes no token request; the last
// handler to let go of a source stops it.
var sources = caddy.NewUsagePool()

// pooledSource is a token source with its description.
type pooledSource struct {
	*cache.Source
	info   sourceInfo
	metric string        // the source label of its metrics: its name, or its handler's for a tenant
	tenant bool          // one of a handler's per-request sources (tenants.go)
	shared *cache.Shared // nil unless share
}

// sourceInfo describes a token source to every view of it (the admin API,
// events, metrics): computed once, when the source is made, and free of
// secrets. TokenURL is as displayURL shows it: empty when the token
// endpoint is discovered from Issuer (which is empty otherwise).
type sourceInfo struct {
	Name     string           `json:"name"`
	Provider string           `json:"provider,omitempty"`
	TokenURL string           `json:"token_url"`
	Issuer   string           `json:"issuer,omitempty"`
	Grant    grants.GrantType `json:"grant"`
	ClientID string           `json:"client_id,omitempty"`
	Scopes   []string         `json:"scopes,omitempty"`
	Share    bool             `json:"share"`
}

// describe is the sourceInfo of the source made from s.
func describe(s settings) sourceInfo {
	info := sourceInfo{
		Name:     s.Name,
		Provider: s.Provider,
		TokenURL: displayURL(s.Grants.TokenURL),
		Grant:    s.Grants.Grant,
		ClientID: s.Grants.ClientIdentity(),
		Scopes:   s.Grants.Scopes,
		Share:    s.Share,
	}
	if s.Grants.TokenURL == "" {
		info.Issuer = displayURL(s.Grants.Issuer)
	}
	return info
}

// newPooledSource builds the token client and source for s.
func newPooledSource(ctx caddy.Context, s settings) (*pooledSource, error) {
	hc, err := tokenHTTPClient(ctx, s.TLS)
	if err != nil {
		return nil, err
	}
	return newSource(s, hc, "")
}

// tokenHTTPClient is the HTTP client of token requests with the tls block.
func tokenHTTPClient(ctx caddy.Context, t *TLS) (*http.Client, error) {
	tlsConfig, err := clientTLS(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("tls: %v", err)
	}
	return grants.NewHTTPClient(tlsConfig), nil
}

// newSource builds the token client and source for s, whose requests go
// through hc. A tenant's source (tenants.go) has its handler's name as
// metric, the label of its metrics ("" is s's own name), and keeps its
// token's header value itself (s.prefix and the token: a tenant's source
// serves one handler).
func newSource(s settings, hc *http.Client, metric string) (*pooledSource, error) {
	client, err := grants.NewClient(s.Grants, hc)
	if err != nil {
		return nil, err
	}
	info := describe(s)
	p := &pooledSource{info: info, metric: metric, tenant: metric != ""}
	if metric == "" {
		p.metric = info.Name
	}
	opts := cache.Options{
		Name:            info.Name,
		Fetcher:         client,
		RefreshAhead:    s.RefreshAhead,
		RefreshFraction: s.Fraction,
		Timeout:         s.Timeout,
		// The source outlives the config that made it: it logs through
		// the logger of whichever config is running.
		Logger:       runningLogger,
		Header:       metric != "",
		HeaderPrefix: s.prefix,
	}
	var shared *cache.Shared
	if s.Share {
		// The token settings name the stored record (without their
		// secrets) and, secrets included, encrypt it. With private_key_jwt
		// and tls_client_auth the client's secret is a key the config names
		// only by its path: its digest stands in.
		var keyDigest string
		switch a := s.Grants.Assertion; {
		case s.Grants.ClientAuth == grants.AuthPrivateKeyJWT && a != nil:
			keyDigest = s.Files[a.Key]
		case s.Grants.ClientAuth == grants.AuthTLSClient && s.TLS != nil:
			keyDigest = s.Files[s.TLS.ClientKey]
		}
		if shared, err = cache.NewShared(s.Grants, keyDigest); err != nil {
			return nil, fmt.Errorf("share: %v", err)
		}
		shared.Storage = runningStorage
		shared.OnLookup = func(r cache.Lookup) { metricStorage(p.metric, r) }
		opts.Shared = shared
	}
	if s.LogoutURL != "" {
		logoutURL := s.LogoutURL
		opts.Logout = func(ctx context.Context, tok *grants.Token) error {
			return client.Logout(ctx, logoutURL, tok)
		}
	}
	opts.OnResult = onResult(info, p.metric) // metrics and events (events.go)
	p.Source, p.shared = cache.New(opts), shared
	return p, nil
}

// Destruct stops the source once no handler uses it; a token that is not
// shared with other instances is logged out (when a logout_url is set), in
// the background: the logouts of all sources a reload or a stop removes run
// side by side, each within its timeout.
func (p *pooledSource) Destruct() error {
	p.stop()
	forgetSourceMetrics(p.metric)
	return nil
}

// stop stops p as a reload stops a source that leaves the config: its
// token is logged out unless it is shared, in the background (see
// pendingLogouts).
func (p *pooledSource) stop() {
	p.Stop(!p.info.Share)
	pendingLogouts.Go(p.WaitLogouts)
}

// pendingLogouts tracks the logouts of stopped sources. A reload does not
// wait for them; Caddy's process exit does (they run side by side, so it
// waits at most the longest timeout, not the sum of them).
var pendingLogouts sync.WaitGroup

func init() {
	caddy.OnExit(func(context.Context) { pendingLogouts.Wait() })
}

// liveSources lists the token sources of the process, the tenants' of
// handlers with per-request credentials included.
func liveSources() []*pooledSource {
	var out []*pooledSource
	sources.Range(func(_, v any) bool {
		switch v := v.(type) {
		case *pooledSource:
			out = append(out, v)
		case *tenantTable:
			out = append(out, v.sources()...)
		}
		return true
	})
	return out
}

// labelInUse reports whether a live source, or a handler with per-request
// credentials, has label as the source label of its metrics.
func labelInUse(label string) bool {
	inUse := false
	sources.Range(func(_, v any) bool {
		switch v := v.(type) {
		case *pooledSource:
			inUse = v.metric == label
		case *tenantTable:
			inUse = v.name == label
		}
		return !inUse
	})
	return inUse
}

// sourcesNamed lists the live sources named name (names need not be unique:
// handlers with different settings may share one).
func sourcesNamed(name string) []*pooledSource {
	var out []*pooledSource
	for _, p := range liveSources() {
		if p.info.Name == name {
			out = append(out, p)
		}
	}
	return out
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

// clientTLS turns the tls block into a client TLS config with Caddy's own
// helper, the one reverse_proxy's transport uses: CA files make a trust
// pool of their own (as reverse_proxy's tls_trust_pool file does), a client
// certificate enables mutual TLS. Nil with no block.
func clientTLS(ctx caddy.Context, t *TLS) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	rt := &reverseproxy.TLSConfig{
		ClientCertificateFile:    t.ClientCert,
		ClientCertificateKeyFile: t.ClientKey,
		ServerName:               t.ServerName,
	}
	if len(t.CA) > 0 {
		raw, err := json.Marshal(map[string]any{"provider": "file", "pem_files": t.CA})
		if err != nil {
			return nil, err
		}
		rt.CARaw = raw
	}
	return rt.MakeTLSClientConfig(ctx)
}
