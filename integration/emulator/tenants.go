package emulator

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TenantProvider is a generic client-credentials token endpoint with many
// accounts (tenants): it takes client_id and client_secret as form fields
// (client_secret_post) or in HTTP Basic (client_secret_basic), with a form
// or a JSON body (as 1NCE's: grant_type only, credentials in Basic), checks them
// against its accounts, and issues tokens attributable to the client they
// were issued to (TenantOf). It records violations of the request's shape,
// token requests per client, and the most requests it had in flight at
// once. All methods are safe for concurrent use.
type TenantProvider struct {
	srv *httptest.Server

	inFlight, mostInFlight atomic.Int64
	requests               atomic.Int64

	mu         sync.Mutex
	accounts   map[string]string // client id → secret
	perClient  map[string]int64  // token requests per client id
	tokenOf    map[string]string // access token → client id
	delay      time.Duration
	ttl        time.Duration
	violations []string
	rejected   int64
}

// TenantTokenPrefix starts every token a TenantProvider issues (for leak
// checks that look for any of them).
const TenantTokenPrefix = "tnt-"

// TenantTokenPath is the token endpoint's path.
const TenantTokenPath = "/oauth2/token" //nolint:gosec // G101: a path, not a credential

// NewTenantProvider returns a provider that knows accounts (client id →
// secret) and issues tokens living an hour.
func NewTenantProvider(accounts map[string]string) *TenantProvider {
	p := &TenantProvider{accounts: map[string]string{}, perClient: map[string]int64{}, tokenOf: map[string]string{}, ttl: time.Hour}
	maps.Copy(p.accounts, accounts)
	p.srv = httptest.NewServer(p)
	return p
}

// TokenURL is the token endpoint's URL.
func (p *TenantProvider) TokenURL() string { return p.srv.URL + TenantTokenPath }

// Close stops the server.
func (p *TenantProvider) Close() { p.srv.Close() }

// SetDelay makes each token request take d (before it is answered).
func (p *TenantProvider) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetAccount adds or changes an account.
func (p *TenantProvider) SetAccount(id, secret string) {
	p.mu.Lock()
	p.accounts[id] = secret
	p.mu.Unlock()
}

// Requests is the number of token requests received.
func (p *TenantProvider) Requests() int64 { return p.requests.Load() }

// MostInFlight is the most token requests that were in flight at once.
func (p *TenantProvider) MostInFlight() int64 { return p.mostInFlight.Load() }

// Rejected is the number of token requests refused for bad credentials.
func (p *TenantProvider) Rejected() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rejected
}

// RequestsFor is the number of token requests with client id's credentials
// (good or bad).
func (p *TenantProvider) RequestsFor(id string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.perClient[id]
}

// Clients is the number of distinct client ids that asked for a token.
func (p *TenantProvider) Clients() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.perClient)
}

// TenantOf is the client id a token was issued to ("" for a token this
// provider did not issue).
func (p *TenantProvider) TenantOf(token string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tokenOf[token]
}

// Tokens lists every token issued, for leak checks.
func (p *TenantProvider) Tokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.tokenOf))
	for tok := range p.tokenOf {
		out = append(out, tok)
	}
	return out
}

// Violations lists the malformed requests seen.
func (p *TenantProvider) Violations() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.violations...)
}

func (p *TenantProvider) violation(format string, args ...any) {
	p.mu.Lock()
	p.violations = append(p.violations, fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

// ServeHTTP answers token requests.
func (p *TenantProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	n := p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	raiseMax(&p.mostInFlight, n)
	if r.Method != http.MethodPost || r.URL.Path != TenantTokenPath {
		p.violation("%s %s, want POST %s", clip(r.Method), clip(r.URL.Path), TenantTokenPath)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Header.Get("Accept") != "application/json" {
		p.violation("Accept %q, want application/json", clip(r.Header.Get("Accept")))
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, MaxBodySize))
	form := url.Values{}
	switch mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt {
	case "application/x-www-form-urlencoded":
		var err error
		if form, err = url.ParseQuery(string(body)); err != nil {
			p.violation("body is not a form")
		}
	case "application/json": // as 1NCE takes it
		var fields map[string]string
		if json.Unmarshal(body, &fields) != nil {
			p.violation("body is not a JSON object of strings")
		}
		for k, v := range fields {
			form.Set(k, v)
		}
	default:
		p.violation("Content-Type %q, want a form or JSON", clip(r.Header.Get("Content-Type")))
	}
	if form.Get("grant_type") != "client_credentials" {
		p.violation("grant_type %q, want client_credentials", clip(form.Get("grant_type")))
	}
	id, secret := form.Get("client_id"), form.Get("client_secret")
	if basicID, basicSecret, ok := r.BasicAuth(); ok {
		if id != "" || secret != "" {
			p.violation("credentials both in Basic and in the body")
		}
		id, secret = basicID, basicSecret
	}
	p.mu.Lock()
	p.perClient[id]++
	want, known := p.accounts[id]
	delay := p.delay
	p.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if id == "" || !known || !same(secret, want) {
		p.mu.Lock()
		p.rejected++
		p.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"Client authentication failed"}`)
		return
	}
	raw := make([]byte, 18)
	_, _ = rand.Read(raw)
	tok := TenantTokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	p.mu.Lock()
	p.tokenOf[tok] = id
	ttl := p.ttl
	p.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": int(ttl.Seconds())})
}

// TenantBackend is an upstream that accepts a request only if its bearer
// token was issued, by the provider, to the client of the tenant the
// request names in its TenantHeader; it counts the requests whose token
// belongs to another tenant (CrossTenant).
type TenantBackend struct {
	p        *TenantProvider
	clientOf func(tenant string) string
	srv      *httptest.Server

	accepted, cross, unknown atomic.Int64
}

// TenantHeader names the tenant a request is for.
const TenantHeader = "X-Tenant"

// NewTenantBackend starts a backend that trusts p's tokens; clientOf is the
// client id of a tenant, as the gateway's config maps it.
func NewTenantBackend(p *TenantProvider, clientOf func(tenant string) string) *TenantBackend {
	b := &TenantBackend{p: p, clientOf: clientOf}
	b.srv = httptest.NewServer(b)
	return b
}

// URL is the backend's URL.
func (b *TenantBackend) URL() string { return b.srv.URL }

// Close stops the server.
func (b *TenantBackend) Close() { b.srv.Close() }

// Accepted is the number of requests whose token was the named tenant's.
func (b *TenantBackend) Accepted() int64 { return b.accepted.Load() }

// CrossTenant is the number of requests that carried another tenant's token.
func (b *TenantBackend) CrossTenant() int64 { return b.cross.Load() }

// Unknown is the number of requests with no token, or one the provider did
// not issue.
func (b *TenantBackend) Unknown() int64 { return b.unknown.Load() }

func (b *TenantBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, MaxBodySize))
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	owner := ""
	if ok {
		owner = b.p.TenantOf(tok)
	}
	switch named := r.Header.Get(TenantHeader); {
	case owner == "":
		b.unknown.Add(1)
		http.Error(w, "unknown token", http.StatusUnauthorized)
	case owner != b.clientOf(named):
		b.cross.Add(1)
		http.Error(w, "another tenant's token", http.StatusForbidden)
	default:
		b.accepted.Add(1)
		w.Header().Set("X-Token-Owner", owner)
		_, _ = io.WriteString(w, "ok "+owner)
	}
}
