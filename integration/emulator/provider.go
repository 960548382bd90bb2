// Package emulator emulates the OAuth 2.0 token endpoints of 1NCE, ONEiO and
// Telenor, and a backend API that accepts only the tokens they issued, for the
// integration tests of upstream_oauth.
//
// The token endpoints are strict: every detail of a token request that differs
// from what the provider documents (method, path, query, Accept,
// Authorization, Content-Type, body fields, credentials, grant, scope) is
// recorded as a violation (see [Provider.Violations]) and answered with an
// error in that provider's own format. A test that drives a correct client
// expects no violations at all. Violation strings name fields and headers but
// never carry credential values.
//
// Tokens are random, URL-safe, at least 32 characters long and unique; the
// emulator enforces their lifetime itself, so an expired or revoked token is
// refused by [Backend] however the client judged it.
package emulator

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Kind names the provider whose token endpoint a [Provider] emulates.
type Kind string

// The emulated providers.
const (
	OneNCE  Kind = "1nce"
	ONEiO   Kind = "oneio"
	Telenor Kind = "telenor"
)

// Endpoint paths, as the providers serve them.
//
//nolint:gosec // G101: paths, not credentials
const (
	OneNCETokenPath   = "/management-api/oauth/token"
	ONEiOTokenPath    = "/oauth2/token"
	TelenorTokenPath  = "/oauth/v2/token"
	TelenorLogoutPath = "/oauth/v2/logout"
)

// TokenPath returns the path of k's token endpoint ("" for an unknown kind).
func (k Kind) TokenPath() string {
	switch k {
	case OneNCE:
		return OneNCETokenPath
	case ONEiO:
		return ONEiOTokenPath
	case Telenor:
		return TelenorTokenPath
	}
	return ""
}

// MaxBodySize is the largest token request body a [Provider] reads; a larger
// one is a violation, answered with 413.
const MaxBodySize = 64 << 10

// Defaults for the zero values of [Config] and for [Provider.SetSlowDelay].
const (
	DefaultTTL        = time.Hour
	DefaultRefreshTTL = 24 * time.Hour
	DefaultSlowDelay  = time.Second
)

// Mode sets how a [Provider] answers requests to its endpoints (token and
// logout; requests to other paths are always 404). Violations are recorded in
// every mode.
type Mode int

const (
	// Up answers normally. It is the default.
	Up Mode = iota
	// Down answers 503 with a short text/plain body.
	Down
	// Slow waits SlowDelay (or until the request is cancelled), then answers as Up.
	Slow
	// Garbage answers 200 with an HTML body.
	Garbage
	// RejectCredentials answers every well-formed token request as the provider
	// answers bad credentials (Telenor: an invalid refresh_token for the
	// refresh_token grant). Such answers are not violations. Logout is served as Up.
	RejectCredentials
	// Hang never answers: the handler returns when the request's context is
	// done, without writing. Leaving Hang with SetMode releases waiting requests,
	// which are then answered in the new mode; Close answers them as Down.
	Hang
	// LoseAnswer grants a well-formed token request as Up does (a refresh
	// token in it is used up, new tokens are issued) but never answers: the
	// handler waits until the request's context is done, the mode changes
	// or Close, then drops the connection. It is a client that died, or a
	// connection that broke, after the provider committed the exchange.
	// Logout is served as Up.
	LoseAnswer
)

// String returns the mode's name.
func (m Mode) String() string {
	switch m {
	case Up:
		return "Up"
	case Down:
		return "Down"
	case Slow:
		return "Slow"
	case Garbage:
		return "Garbage"
	case RejectCredentials:
		return "RejectCredentials"
	case Hang:
		return "Hang"
	case LoseAnswer:
		return "LoseAnswer"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config describes the account a [Provider] accepts.
type Config struct {
	Kind Kind
	// ClientID and ClientSecret are, for 1NCE, the API user's username and
	// password (HTTP Basic); for ONEiO, the client_id and client_secret form
	// fields; for Telenor, the client credentials (HTTP Basic).
	ClientID, ClientSecret string
	// Username and Password are Telenor's resource owner (form fields of the
	// password grant). Unused by the other kinds.
	Username, Password string
	// TTL is the lifetime of an access token (default 1h). expires_in tells it
	// in whole seconds, at least 1 (ONEiO, like the real service, tells one
	// second less: 3599 for an hour); the emulator enforces the exact TTL.
	TTL time.Duration
	// IssueRefreshTokens makes Telenor include a refresh_token in its answers.
	IssueRefreshTokens bool
	// RefreshTTL is the lifetime of a Telenor refresh token (default 24h).
	RefreshTTL time.Duration
	// Scope, if set, must be sent exactly as the "scope" form field (ONEiO,
	// Telenor password grant; optional on Telenor's refresh_token grant, but
	// equal if sent). Unset, ONEiO takes no scope field and Telenor any
	// non-empty one. 1NCE ignores Scope: its body is only grant_type.
	Scope string
}

// Provider emulates one provider's token endpoint (and Telenor's logout). It
// is an [http.Handler]; all methods are safe for concurrent use.
type Provider struct {
	cfg     Config
	closing chan struct{}
	closed  sync.Once

	tokenRequests, issued, refreshGrants atomic.Int64
	logoutRequests, logouts              atomic.Int64
	inFlight, maxInFlight                atomic.Int64

	mu           sync.Mutex
	mode         Mode
	release      chan struct{} // closed when the mode leaves Hang or LoseAnswer
	slowDelay    time.Duration
	ttl          time.Duration
	issueRefresh bool
	srv          *httptest.Server
	tokenStore   // the tokens issued
	violations   []string
}

// tokenStore holds the tokens an emulated server issued, oldest first in
// accessOrder and refreshOrder. Its owner's mutex guards it: the methods
// are called with it held.
type tokenStore struct {
	tokens       map[string]*tokenState
	accessOrder  []string
	refreshOrder []string
}

type tokenState struct {
	refresh bool
	expires time.Time
	revoked bool // by Revoke, RevokeAll or a logout
	used    bool // a refresh token already redeemed (they rotate)
}

// New returns a Provider for cfg, in mode Up. It panics on an unknown Kind.
func New(cfg Config) *Provider {
	if cfg.Kind.TokenPath() == "" {
		panic(fmt.Sprintf("emulator: unknown provider kind %q", cfg.Kind))
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.RefreshTTL <= 0 {
		cfg.RefreshTTL = DefaultRefreshTTL
	}
	return &Provider{
		cfg:          cfg,
		closing:      make(chan struct{}),
		release:      make(chan struct{}),
		slowDelay:    DefaultSlowDelay,
		ttl:          cfg.TTL,
		issueRefresh: cfg.IssueRefreshTokens,
		tokenStore:   tokenStore{tokens: map[string]*tokenState{}},
	}
}

// Kind returns the provider's kind.
func (p *Provider) Kind() Kind { return p.cfg.Kind }

// Start serves p on a new httptest.Server on 127.0.0.1 (plain HTTP) and
// returns it. Stop it with p.Close, which also releases hanging requests.
func (p *Provider) Start() *httptest.Server { return p.start(httptest.NewServer(p)) }

// StartTLS is Start with TLS; the server's Certificate() is the CA to trust.
func (p *Provider) StartTLS() *httptest.Server { return p.start(httptest.NewTLSServer(p)) }

func (p *Provider) start(srv *httptest.Server) *httptest.Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		srv.Close()
		panic("emulator: provider already started")
	}
	p.srv = srv
	return srv
}

// Close releases requests held by Hang (answering them 503) and closes the
// server that Start made, if any. It may be called more than once.
func (p *Provider) Close() {
	p.closed.Do(func() { close(p.closing) })
	p.mu.Lock()
	srv := p.srv
	p.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// URL returns the base URL of the started server ("" before Start).
func (p *Provider) URL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv == nil {
		return ""
	}
	return p.srv.URL
}

// TokenURL returns URL() plus the kind's token path.
func (p *Provider) TokenURL() string { return p.URL() + p.cfg.Kind.TokenPath() }

// LogoutURL returns URL() plus Telenor's logout path, or "" for other kinds.
func (p *Provider) LogoutURL() string {
	if p.cfg.Kind != Telenor {
		return ""
	}
	return p.URL() + TelenorLogoutPath
}

// SetMode changes how later (and hanging) requests are answered.
func (p *Provider) SetMode(m Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if (p.mode == Hang || p.mode == LoseAnswer) && m != p.mode {
		close(p.release)
		p.release = make(chan struct{})
	}
	p.mode = m
}

// SetSlowDelay sets how long mode Slow waits (default 1s).
func (p *Provider) SetSlowDelay(d time.Duration) {
	p.mu.Lock()
	p.slowDelay = d
	p.mu.Unlock()
}

// SetTTL sets the lifetime of access tokens issued from now on (d <= 0: 1h).
func (p *Provider) SetTTL(d time.Duration) {
	if d <= 0 {
		d = DefaultTTL
	}
	p.mu.Lock()
	p.ttl = d
	p.mu.Unlock()
}

// SetIssueRefreshTokens switches Telenor's refresh tokens on or off for
// answers from now on.
func (p *Provider) SetIssueRefreshTokens(on bool) {
	p.mu.Lock()
	p.issueRefresh = on
	p.mu.Unlock()
}

// TokenRequests counts every request to the token path, whatever the outcome.
func (p *Provider) TokenRequests() int64 { return p.tokenRequests.Load() }

// MaxInFlight is the largest number of token requests that were being
// served at once so far.
func (p *Provider) MaxInFlight() int64 { return p.maxInFlight.Load() }

// Issued counts access tokens issued (by any grant, refresh included).
func (p *Provider) Issued() int64 { return p.issued.Load() }

// RefreshGrants counts successful refresh_token grants.
func (p *Provider) RefreshGrants() int64 { return p.refreshGrants.Load() }

// LogoutRequests counts every request to the logout path, whatever the outcome.
func (p *Provider) LogoutRequests() int64 { return p.logoutRequests.Load() }

// Logouts counts successful logouts (a valid token revoked).
func (p *Provider) Logouts() int64 { return p.logouts.Load() }

// Violations returns every violation recorded so far, oldest first: one
// string per offending request, naming all its deviations.
func (p *Provider) Violations() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.violations...)
}

// Valid reports whether token is an access token issued by p that has neither
// expired nor been revoked. Refresh tokens are never Valid.
func (p *Provider) Valid(token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.validLocked(token)
}

// Revoke invalidates token, an access or a refresh token issued by p.
func (p *Provider) Revoke(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.tokens[token]; ok {
		st.revoked = true
	}
}

// RevokeAll invalidates every access and refresh token issued so far.
func (p *Provider) RevokeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, st := range p.tokens {
		st.revoked = true
	}
}

// Tokens returns every access token issued so far, oldest first.
func (p *Provider) Tokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.accessOrder...)
}

// RefreshTokens returns every refresh token issued so far, oldest first.
func (p *Provider) RefreshTokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.refreshOrder...)
}

// ServeHTTP routes the token path (and Telenor's logout path); any other path
// is a violation, answered 404 in the provider's error format.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == p.cfg.Kind.TokenPath():
		p.serveToken(w, r)
	case p.cfg.Kind == Telenor && r.URL.Path == TelenorLogoutPath:
		p.serveLogout(w, r)
	default:
		c := &check{}
		c.violation(p.flavor().errorf(http.StatusNotFound, "Not Found"),
			"no such endpoint (token endpoint is %s %s)", http.MethodPost, p.cfg.Kind.TokenPath())
		p.finish(w, r, c, c.resp)
	}
}

// tokenRequest is what the checks of a kind learned from a token request.
type tokenRequest struct {
	refreshToken string // set for Telenor's refresh_token grant
}

// flavor is what differs between the providers' token endpoints.
type flavor struct {
	// check inspects a token request, recording deviations in c.
	check func(p *Provider, c *check, w http.ResponseWriter, r *http.Request) tokenRequest
	// success answers with newly issued tokens.
	success func(access, refresh string, ttl time.Duration) response
	// badCredentials answers as the provider does to bad credentials.
	badCredentials func(req tokenRequest) response
	// errorf answers a failure without a more specific provider code.
	errorf func(status int, msg string) response
}

func (p *Provider) flavor() flavor {
	switch p.cfg.Kind {
	case OneNCE:
		return oneNCEFlavor
	case ONEiO:
		return oneioFlavor
	case Telenor:
	}
	return telenorFlavor
}

func (p *Provider) serveToken(w http.ResponseWriter, r *http.Request) {
	p.tokenRequests.Add(1)
	n := p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	raiseMax(&p.maxInFlight, n)
	fl := p.flavor()
	c := &check{}
	req := fl.check(p, c, w, r)
	mode, ok := p.await(r.Context())
	var resp response
	switch {
	case !ok:
		// The client gave up; record what was wrong and answer nothing.
	case mode == Down:
		resp = down
	case mode == Garbage:
		resp = garbage
	case c.resp != nil:
		resp = c.resp
	case mode == RejectCredentials:
		resp = fl.badCredentials(req)
	case mode == LoseAnswer:
		p.grant(c, req) // committed, and the answer is lost
		p.finish(w, r, c, nil)
		p.hold(r.Context())
		panic(http.ErrAbortHandler) // the connection drops without an answer
	default:
		resp = p.grant(c, req)
	}
	p.finish(w, r, c, resp)
}

// hold waits until ctx is done, the mode changes from LoseAnswer or p closes.
func (p *Provider) hold(ctx context.Context) {
	p.mu.Lock()
	release, mode := p.release, p.mode
	p.mu.Unlock()
	if mode != LoseAnswer {
		return // it changed since the request arrived
	}
	select {
	case <-ctx.Done():
	case <-release:
	case <-p.closing:
	}
}

// grant issues tokens for a well-formed request, redeeming its refresh token.
func (p *Provider) grant(c *check, req tokenRequest) response {
	fl := p.flavor()
	if req.refreshToken != "" {
		invalid := telenorError(http.StatusUnauthorized, telenorInvalidRefresh, "Invalid refresh_token")
		switch p.redeem(req.refreshToken) {
		case redeemUnknown:
			c.violation(invalid, "refresh_token was not issued by this provider")
		case redeemUsed:
			c.violation(invalid, "refresh_token was already used (refresh tokens rotate)")
		case redeemRevoked, redeemExpired:
			c.reject(invalid)
		case redeemOK:
		}
		if c.resp != nil {
			return c.resp
		}
		p.refreshGrants.Add(1)
	}
	access, refresh, ttl := p.issue()
	return fl.success(access, refresh, ttl)
}

// await applies the modes that delay an answer (Hang, Slow). It returns the
// mode to answer in, or false when the request's context ended first.
func (p *Provider) await(ctx context.Context) (Mode, bool) {
	for {
		p.mu.Lock()
		m, release, delay := p.mode, p.release, p.slowDelay
		p.mu.Unlock()
		switch m {
		case Hang:
			select {
			case <-ctx.Done():
				return m, false
			case <-p.closing:
				return Down, true
			case <-release:
				continue
			}
		case Slow:
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return m, false
			case <-p.closing:
				return Down, true
			case <-t.C:
				return Up, true
			}
		case Up, Down, Garbage, RejectCredentials, LoseAnswer:
		}
		return m, true
	}
}

// finish records c's violations, then writes resp (if any). Recording first
// means a client that has its answer also sees the violation recorded.
func (p *Provider) finish(w http.ResponseWriter, r *http.Request, c *check, resp response) {
	if len(c.problems) > 0 {
		v := fmt.Sprintf("%s: %s %s: %s", p.cfg.Kind, clip(r.Method), clip(r.URL.Path), strings.Join(c.problems, "; "))
		p.mu.Lock()
		p.violations = append(p.violations, v)
		p.mu.Unlock()
	}
	if resp != nil {
		resp(w)
	}
}

// issue makes a new access token and, for Telenor when enabled, a refresh token.
func (p *Provider) issue() (access, refresh string, ttl time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ttl = p.ttl
	var refreshTTL time.Duration
	if p.cfg.Kind == Telenor && p.issueRefresh {
		refreshTTL = p.cfg.RefreshTTL
	}
	access, refresh = p.issueLocked(ttl, refreshTTL)
	p.issued.Add(1)
	return access, refresh, ttl
}

// validLocked reports whether token is an access token of s that has
// neither expired nor been revoked.
func (s *tokenStore) validLocked(token string) bool {
	st, ok := s.tokens[token]
	return ok && !st.refresh && !st.revoked && time.Now().Before(st.expires)
}

// issueLocked makes a new access token living ttl and, when refreshTTL is
// not zero, a refresh token living refreshTTL ("" otherwise).
func (s *tokenStore) issueLocked(ttl, refreshTTL time.Duration) (access, refresh string) {
	now := time.Now()
	access = s.newTokenLocked()
	s.tokens[access] = &tokenState{expires: now.Add(ttl)}
	s.accessOrder = append(s.accessOrder, access)
	if refreshTTL != 0 {
		refresh = s.newTokenLocked()
		s.tokens[refresh] = &tokenState{refresh: true, expires: now.Add(refreshTTL)}
		s.refreshOrder = append(s.refreshOrder, refresh)
	}
	return access, refresh
}

// newTokenLocked returns 43 random base64url characters not used before.
func (s *tokenStore) newTokenLocked() string {
	for {
		var b [32]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
		t := base64.RawURLEncoding.EncodeToString(b[:])
		if _, dup := s.tokens[t]; !dup {
			return t
		}
	}
}

type redeemResult int

const (
	redeemOK redeemResult = iota
	redeemUnknown
	redeemUsed
	redeemRevoked
	redeemExpired
)

// redeem checks a refresh token and, if it is good, uses it up.
func (p *Provider) redeem(token string) redeemResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.redeemLocked(token)
}

// redeemLocked is redeem with the owner's mutex held.
func (s *tokenStore) redeemLocked(token string) redeemResult {
	st, ok := s.tokens[token]
	switch {
	case !ok || !st.refresh:
		return redeemUnknown
	case st.used:
		return redeemUsed
	case st.revoked:
		return redeemRevoked
	case !time.Now().Before(st.expires):
		return redeemExpired
	}
	st.used = true
	return redeemOK
}

// revokeAccess revokes a valid access token, reporting whether it was one;
// known tells whether p ever issued it.
func (p *Provider) revokeAccess(token string) (revoked, known bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.tokens[token]
	if !ok || st.refresh {
		return false, false
	}
	if st.revoked || !time.Now().Before(st.expires) {
		return false, true
	}
	st.revoked = true
	return true, true
}

// expiresIn is the lifetime that a kind tells for ttl, in whole seconds.
func expiresIn(kind Kind, ttl time.Duration) int64 {
	s := int64(ttl / time.Second)
	if kind == ONEiO && s >= 2 {
		s-- // ONEiO answers 3599 for its one-hour tokens
	}
	return max(s, 1)
}

func down(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte("service unavailable\n"))
}

func garbage(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("<!DOCTYPE html>\n<html><head><title>Maintenance</title></head>" +
		"<body><h1>We'll be back soon</h1></body></html>\n"))
}
