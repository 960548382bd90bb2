package upstreamoauth

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/url"

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
	shared *cache.Shared // nil unless share
}

// sourceInfo describes a token source to every view of it (the admin API,
// events, metrics): computed once, when the source is made, and free of
// secrets. TokenURL is as displayURL shows it.
type sourceInfo struct {
	Name     string           `json:"name"`
	Provider string           `json:"provider,omitempty"`
	TokenURL string           `json:"token_url"`
	Grant    grants.GrantType `json:"grant"`
	ClientID string           `json:"client_id,omitempty"`
	Scopes   []string         `json:"scopes,omitempty"`
	Share    bool             `json:"share"`
}

// describe is the sourceInfo of the source made from s.
func describe(s settings) sourceInfo {
	return sourceInfo{
		Name:     s.Name,
		Provider: s.Provider,
		TokenURL: displayURL(s.Grants.TokenURL),
		Grant:    s.Grants.Grant,
		ClientID: s.Grants.ClientIdentity(),
		Scopes:   s.Grants.Scopes,
		Share:    s.Share,
	}
}

// newPooledSource builds the token client and source for s.
func newPooledSource(ctx caddy.Context, s settings) (*pooledSource, error) {
	tlsConfig, err := clientTLS(ctx, s.TLS)
	if err != nil {
		return nil, fmt.Errorf("tls: %v", err)
	}
	client, err := grants.NewClient(s.Grants, grants.NewHTTPClient(tlsConfig))
	if err != nil {
		return nil, err
	}
	info := describe(s)
	opts := cache.Options{
		Name:            info.Name,
		Fetcher:         client,
		RefreshAhead:    s.RefreshAhead,
		RefreshFraction: s.Fraction,
		Timeout:         s.Timeout,
		// The source outlives the config that made it: it logs through
		// the logger of whichever config is running.
		Logger: runningLogger,
	}
	var shared *cache.Shared
	if s.Share {
		// The token settings name the stored record (without their
		// secrets) and, secrets included, encrypt it.
		if shared, err = cache.NewShared(s.Grants); err != nil {
			return nil, fmt.Errorf("share: %v", err)
		}
		shared.Storage = runningStorage
		shared.OnLookup = func(r cache.Lookup) { metricStorage(info.Name, r) }
		opts.Shared = shared
	}
	if s.LogoutURL != "" {
		logoutURL := s.LogoutURL
		opts.Logout = func(ctx context.Context, tok *grants.Token) error {
			return client.Logout(ctx, logoutURL, tok)
		}
	}
	opts.OnResult = onResult(info) // metrics and events (events.go)
	return &pooledSource{Source: cache.New(opts), info: info, shared: shared}, nil
}

// Destruct stops the source once no handler uses it; a token that is not
// shared with other instances is logged out (when a logout_url is set).
func (p *pooledSource) Destruct() error {
	p.Stop(!p.info.Share)
	forgetSourceMetrics(p.info.Name)
	return nil
}

// liveSources lists the token sources of the process.
func liveSources() []*pooledSource {
	var out []*pooledSource
	sources.Range(func(_, v any) bool {
		if p, ok := v.(*pooledSource); ok {
			out = append(out, p)
		}
		return true
	})
	return out
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
