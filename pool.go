package upstreamoauth

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"

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

// pooledSource is a token source with the settings it was made from, as
// the admin API shows them (no secrets).
type pooledSource struct {
	*cache.Source
	provider string
	tokenURL string
	grant    string
	clientID string
	scopes   []string
	share    bool
	shared   *cache.Shared // nil unless share
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
	opts := cache.Options{
		Name:            s.Name,
		Fetcher:         client,
		RefreshAhead:    s.RefreshAhead,
		RefreshFraction: s.Fraction,
		Timeout:         s.Timeout,
		// The source outlives the config that made it: its logger must not
		// be one that a config unload closes, so take Caddy's default.
		Logger: caddy.Log().Named("http.handlers.upstream_oauth"),
	}
	var shared *cache.Shared
	if s.Share {
		// Everything that shapes the token, secrets included, keys and
		// encrypts the stored record.
		material, err := json.Marshal(s.Grants)
		if err != nil {
			return nil, err
		}
		if shared, err = cache.NewShared(material); err != nil {
			return nil, fmt.Errorf("share: %v", err)
		}
		shared.SetStorage(ctx.Storage())
		name := s.Name
		shared.OnLookup = func(hit bool) { metricStorage(name, hit) }
		opts.Shared = shared
	}
	if s.LogoutURL != "" {
		logoutURL := s.LogoutURL
		opts.Logout = func(ctx context.Context, tok *grants.Token) error {
			return client.Logout(ctx, logoutURL, tok)
		}
	}
	opts.OnResult = onResult(s) // metrics and events (events.go)
	return &pooledSource{
		Source:   cache.New(opts),
		provider: s.Provider,
		tokenURL: s.Grants.TokenURL,
		grant:    s.Grants.Grant,
		clientID: s.Grants.ClientIdentity(),
		scopes:   s.Grants.Scopes,
		share:    s.Share,
		shared:   shared,
	}, nil
}

// Destruct stops the source once no handler uses it; a token that is not
// shared with other instances is logged out (when a logout_url is set).
func (p *pooledSource) Destruct() error {
	p.Stop(!p.share)
	forgetSourceMetrics(p.Name())
	return nil
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
