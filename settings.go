package upstreamoauth

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/net/http/httpguts"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Defaults of the handler's own settings. Those of the token source
// (timeout, refresh_ahead) are cache's and the token_type a response must
// carry grants'; settings fills them in from there, so that a default and
// the same value written out make one source.
const (
	defaultTTL    = 5 * time.Minute
	defaultHeader = "Authorization"
	defaultScheme = "Bearer"
	maxReplayBody = 64 << 10
)

// settings are a handler's values with placeholders expanded, the preset
// applied and defaults filled in. The exported fields shape the token and
// so identify its source (key); the others are the handler's own.
type settings struct {
	Name         string        `json:"name"`
	Provider     string        `json:"provider"`
	Grants       grants.Config `json:"grants"`
	LogoutURL    string        `json:"logout_url"`
	RefreshAhead time.Duration `json:"refresh_ahead"`
	Fraction     float64       `json:"fraction"` // of the lifetime, when RefreshAhead is 0
	Timeout      time.Duration `json:"timeout"`
	Share        bool          `json:"share"`
	TLS          *TLS          `json:"tls"`
	// Files holds the SHA-256 of each file the source reads (assertion
	// key and certificate, tls files), by path, so that a reload after a
	// key or certificate was replaced makes a new source that reads the
	// new one. Filled in by Provision (digestFiles), never at adapt time.
	Files map[string]string `json:"files,omitempty"`

	header  string
	prefix  string
	renewOn []int
}

// key identifies the token source of s: a hash of every setting that shapes
// the token, so it reveals none of them.
func (s settings) key() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// settings resolves h into settings, or says what is wrong with it.
func (h *Handler) settings(repl *caddy.Replacer) (settings, error) {
	return h.resolve(repl, nil)
}

// resolve resolves h into settings: each field's placeholders expanded with
// repl, except the credential fields that creds has a value for (by field
// id, see credFields): that value is taken as it is, never read for
// placeholders again (a tenant's secret may have braces in it).
func (h *Handler) resolve(repl *caddy.Replacer, creds map[string]string) (settings, error) {
	r := resolver{h: h, repl: repl, creds: creds}
	var s settings
	s.Provider = r.expand(h.Provider)
	if s.Provider != "" {
		p, ok := grants.LookupPreset(s.Provider)
		if !ok {
			return s, fmt.Errorf("unknown provider %q (known: %s)", s.Provider, strings.Join(grants.PresetNames(), ", "))
		}
		r.preset = p
	}
	g, err := r.grants()
	if err != nil {
		return s, err
	}
	if err := r.header(&s, &g); err != nil {
		return s, err
	}
	s.Grants = g
	if err := g.Validate(); err != nil {
		return s, err
	}
	if err := r.source(&s); err != nil {
		return s, err
	}
	if g.ClientAuth == grants.AuthTLSClient && (s.TLS == nil || s.TLS.ClientCert == "") {
		return s, fmt.Errorf("client_auth %s needs tls { client_cert <cert file> <key file> }: the certificate is the client's credential", g.ClientAuth)
	}
	s.Name = r.cred(fieldName, h.Name)
	if s.Name == "" {
		where := g.TokenURL
		if where == "" {
			where = g.Issuer
		}
		s.Name = defaultName(s.Provider, where, g.ClientIdentity())
	}
	return s, nil
}

// resolver resolves one handler's fields (see resolve).
type resolver struct {
	h      *Handler
	repl   *caddy.Replacer
	creds  map[string]string
	preset grants.Preset
}

func (r resolver) expand(v string) string { return r.repl.ReplaceKnown(v, "") }

// cred is the credential field id: its value in creds, else v expanded.
func (r resolver) cred(id, v string) string {
	if c, ok := r.creds[id]; ok {
		return c
	}
	return r.expand(v)
}

// or is v expanded, else def.
func (r resolver) or(v, def string) string {
	if v = r.expand(v); v != "" {
		return v
	}
	return def
}

// grants resolves what the token request is made of.
func (r resolver) grants() (grants.Config, error) {
	h, preset := r.h, r.preset
	// A token_url in the block wins over issuer, and issuer over the
	// preset's token_url.
	tokenURL, issuer := r.expand(h.TokenURL), r.expand(h.Issuer)
	if tokenURL == "" && issuer == "" {
		tokenURL = preset.TokenURL
	}
	g := grants.Config{
		TokenURL:     tokenURL,
		Issuer:       issuer,
		Grant:        grants.GrantType(r.or(h.Grant, r.or(string(preset.Grant), string(grants.ClientCredentials)))),
		ClientID:     r.cred(fieldClientID, h.ClientID),
		ClientSecret: r.cred(fieldClientSecret, h.ClientSecret),
		Username:     r.cred(fieldUsername, h.Username),
		Password:     r.cred(fieldPassword, h.Password),
		ClientAuth:   grants.AuthMethod(r.or(h.ClientAuth, r.or(string(preset.ClientAuth), string(grants.AuthBasic)))),
		Body:         grants.BodyEncoding(r.or(h.Body, r.or(string(preset.Body), string(grants.BodyForm)))),
		Audience:     r.cred(fieldAudience, h.Audience),
		DefaultTTL:   time.Duration(h.DefaultTTL),
		AllowHTTP:    h.AllowHTTP,
	}
	// The RFC 7591 names of basic and body are the same methods.
	if m, err := grants.ParseAuthMethod(string(g.ClientAuth)); err == nil {
		g.ClientAuth = m
	}
	for i, sc := range h.Scope {
		g.Scopes = append(g.Scopes, r.cred(fieldScope+strconv.Itoa(i), sc))
	}
	if len(h.Param) > 0 {
		g.Params = make(map[string]string, len(h.Param))
		for k, v := range h.Param {
			g.Params[k] = r.cred(fieldParam+k, v)
		}
	}
	if len(h.TokenHeader) > 0 {
		g.Headers = make(map[string]string, len(h.TokenHeader))
		for k, v := range h.TokenHeader {
			g.Headers[http.CanonicalHeaderKey(k)] = r.cred(fieldTokenHeader+k, v)
		}
	}
	if g.DefaultTTL == 0 {
		g.DefaultTTL = defaultTTL
	}
	if err := checkDefaultTTL(g.DefaultTTL); err != nil {
		return g, err
	}
	for name, v := range g.Headers {
		if err := checkField("token_header", name, v); err != nil {
			return g, err
		}
	}
	g.Assertion = h.Assertion.resolve(r.expand)
	return g, nil
}

// header resolves the header the token goes in, its scheme, and the
// token_type a response must carry.
func (r resolver) header(s *settings, g *grants.Config) error {
	s.header = http.CanonicalHeaderKey(r.or(r.h.Header, defaultHeader))
	if err := checkField("header", s.header, ""); err != nil {
		return err
	}
	scheme := r.expand(r.h.HeaderScheme)
	if err := checkScheme(scheme); err != nil {
		return err
	}
	if scheme == "" && s.header == defaultHeader {
		scheme = defaultScheme
	}
	if scheme != "" {
		s.prefix = scheme + " "
		// In one case, as responses are compared: the same scheme in
		// another case is the same source.
		g.TokenType = strings.ToLower(scheme)
	} else {
		g.TokenType = grants.DefaultTokenType
	}
	return nil
}

// source resolves how the source keeps its token: logout, renewal,
// timeout, renew_on, share, the tls block.
func (r resolver) source(s *settings) error {
	h := r.h
	s.LogoutURL = r.or(h.LogoutURL, r.preset.LogoutURL)
	if s.LogoutURL != "" {
		if err := grants.CheckURL("logout_url", s.LogoutURL, h.AllowHTTP); err != nil {
			return err
		}
	}
	var err error
	if s.RefreshAhead, s.Fraction, err = parseRefreshAhead(r.expand(h.RefreshAhead)); err != nil {
		return err
	}
	if s.RefreshAhead == 0 && s.Fraction == 0 {
		s.Fraction = cache.DefaultRefreshFraction
	}
	if s.Timeout = time.Duration(h.Timeout); s.Timeout == 0 {
		s.Timeout = cache.DefaultTimeout
	}
	if s.Timeout < 0 {
		return fmt.Errorf("timeout must be positive")
	}
	s.renewOn = h.RenewOn
	if s.renewOn == nil {
		s.renewOn = []int{http.StatusUnauthorized}
	}
	for _, st := range s.renewOn {
		if st < 100 || st > 599 {
			return fmt.Errorf("renew_on: %d is not an HTTP status", st)
		}
	}
	s.Share = h.Share
	if h.TLS != nil {
		t := *h.TLS
		t.CA = slices.Clone(t.CA)
		for i := range t.CA {
			t.CA[i] = r.expand(t.CA[i])
		}
		t.ClientCert, t.ClientKey, t.ServerName = r.expand(t.ClientCert), r.expand(t.ClientKey), r.expand(t.ServerName)
		s.TLS = &t
	}
	return nil
}

// checkField checks a header's name (an RFC 9110 token) and value (no CR,
// LF or other controls): what would otherwise fail on every request, or
// split it. The value is never quoted: it may be a secret.
func checkField(what, name, value string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("%s: %q is not a valid HTTP field name", what, name)
	}
	if !httpguts.ValidHeaderFieldValue(value) {
		return fmt.Errorf("%s %s: the value has control characters (CR, LF, ...)", what, name)
	}
	return nil
}

// checkScheme checks the header's scheme: a token, as RFC 9110 has
// auth-schemes, so no spaces or control characters.
func checkScheme(scheme string) error {
	if scheme != "" && !httpguts.ValidHeaderFieldName(scheme) {
		return fmt.Errorf("header: scheme %q has spaces, control or other characters not allowed in a scheme", scheme)
	}
	return nil
}

// checkDefaultTTL checks default_ttl: under a second, every request would
// need a token request; over a year is past what expires_in may say.
func checkDefaultTTL(d time.Duration) error {
	if d < time.Second || d > grants.MaxLifetime {
		return fmt.Errorf("default_ttl %v: want 1s to a year", d)
	}
	return nil
}

// resolve is the assertion block with placeholders expanded, as grants
// takes it (nil without a block). Its files are not read here: the token
// client reads them once, when the source is made.
func (a *Assertion) resolve(expand func(string) string) *grants.Assertion {
	if a == nil {
		return nil
	}
	out := &grants.Assertion{
		Key:      expand(a.Key),
		Alg:      grants.Alg(expand(a.Alg)),
		KeyID:    expand(a.Kid),
		X5T:      expand(a.X5T),
		Audience: expand(a.Audience),
		Lifetime: time.Duration(a.Lifetime),
	}
	if len(a.Claim) > 0 {
		out.Claims = make(map[string]string, len(a.Claim))
		for k, v := range a.Claim {
			out.Claims[k] = expand(v)
		}
	}
	return out
}

// digestFiles fills in s.Files: the SHA-256 of every file the source will
// read. A file that cannot be read gets no digest; making the source then
// fails with the reason.
func (s *settings) digestFiles() {
	var paths []string
	if a := s.Grants.Assertion; a != nil {
		paths = append(paths, a.Key, a.X5T)
	}
	if t := s.TLS; t != nil {
		paths = append(append(paths, t.CA...), t.ClientCert, t.ClientKey)
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if d, ok := fileDigest(p); ok {
			if s.Files == nil {
				s.Files = map[string]string{}
			}
			s.Files[p] = d
		}
	}
}

// fileDigest is the hex SHA-256 of the regular file at path, read up to
// 1 MiB (a key or certificate is far smaller).
func fileDigest(path string) (string, bool) {
	f, err := os.Open(path) //nolint:gosec // G304: a configured key, certificate or CA file
	if err != nil {
		return "", false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "", false
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, 1<<20)); err != nil {
		return "", false
	}
	return hex.EncodeToString(h.Sum(nil)), true
}

// parseRefreshAhead reads "20%" as a fraction of the lifetime or "5m" as a
// duration; empty gives zero for both (the default).
func parseRefreshAhead(v string) (time.Duration, float64, error) {
	if v == "" {
		return 0, 0, nil
	}
	if p, ok := strings.CutSuffix(v, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f <= 0 || f >= 100 {
			return 0, 0, fmt.Errorf("refresh_ahead %q: want a percentage between 0%% and 100%%", v)
		}
		return 0, f / 100, nil
	}
	d, err := caddy.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, 0, fmt.Errorf("refresh_ahead %q: want a positive duration or a percentage", v)
	}
	return d, 0, nil
}

// defaultName names a source after its provider (or its token URL's host)
// and its client (client_id, not a secret), so that two accounts at one
// provider get two names: "1nce:api-user".
func defaultName(provider, tokenURL, client string) string {
	name := provider
	if name == "" {
		name = tokenURL
		if _, rest, ok := strings.Cut(name, "://"); ok {
			name = rest
		}
		name, _, _ = strings.Cut(name, "/")
	}
	if client != "" {
		name += ":" + client
	}
	return name
}
