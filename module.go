// Package upstreamoauth is a Caddy HTTP handler that obtains OAuth 2.0
// access tokens from an upstream provider's token endpoint, keeps them
// fresh, and sets them on every request Caddy forwards, so that the clients
// behind the gateway never hold the provider's credentials.
package upstreamoauth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler sets an OAuth 2.0 access token, obtained from the provider's token
// endpoint and renewed in the background, on every request that passes
// through it, replacing whatever the client sent in that header. With no
// valid token it answers with a 502 error and forwards nothing.
//
// Every string value takes Caddy placeholders, expanded once at provision
// time; use {env.NAME} or {file./path} for secrets.
type Handler struct {
	// Provider fills in the settings of a known provider: 1nce, oneio,
	// oneio_test or telenor. Any other field overrides what it fills in.
	Provider string `json:"provider,omitempty"`

	// Name names this token source in logs, metrics and the admin API.
	// Default: the provider, or the token URL's host.
	Name string `json:"name,omitempty"`

	// TokenURL is the provider's token endpoint. Must be https://, or
	// http:// on a loopback host or with AllowHTTP. Default: the preset's.
	TokenURL string `json:"token_url,omitempty"`

	// Grant is client_credentials or password. Default: the preset's, else
	// client_credentials.
	Grant string `json:"grant,omitempty"`

	// ClientID and ClientSecret identify the client. For client_credentials,
	// Username and Password may stand in for them.
	ClientID     string `json:"client_id,omitempty"`
	ClientSecret string `json:"client_secret,omitempty"`

	// Username and Password are the resource owner's, for the password
	// grant (or the client's, for client_credentials; see above).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// ClientAuth says where the client's credentials go: basic (HTTP Basic
	// header), body (client_id/client_secret fields) or none. Default: the
	// preset's, else basic.
	ClientAuth string `json:"client_auth,omitempty"`

	// Body is the encoding of the token request body: form or json.
	// Default: the preset's, else form.
	Body string `json:"body,omitempty"`

	// Scope lists the scopes asked for, sent space-separated. Default: none.
	Scope []string `json:"scope,omitempty"`

	// Audience is sent as the audience field when set. Default: none.
	Audience string `json:"audience,omitempty"`

	// Param holds extra fields of the token request body. Default: none.
	Param map[string]string `json:"param,omitempty"`

	// TokenHeader holds extra headers of the token request. Default: none.
	TokenHeader map[string]string `json:"token_header,omitempty"`

	// LogoutURL, when set, is called (GET, with the token as bearer) when a
	// token is retired. Default: the preset's (telenor), else none.
	LogoutURL string `json:"logout_url,omitempty"`

	// RefreshAhead is how long before expiry a token is renewed: a duration
	// ("5m") or a percentage of the lifetime ("20%"). Default: 20%.
	RefreshAhead string `json:"refresh_ahead,omitempty"`

	// DefaultTTL is the lifetime of a token whose response has no
	// expires_in. Default: 5m.
	DefaultTTL caddy.Duration `json:"default_ttl,omitempty"`

	// Timeout bounds one token request. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// RenewOn lists upstream statuses that retire the token that was used;
	// the request is replayed once with a new token when its body was kept
	// (none, or up to 64 KiB). Default: [401].
	RenewOn []int `json:"renew_on,omitempty"`

	// Header is the request header that carries the token. Default:
	// Authorization.
	Header string `json:"header,omitempty"`

	// HeaderScheme is the scheme before the token in Header. Default:
	// Bearer for Authorization, none (the bare token) for other headers.
	HeaderScheme string `json:"header_scheme,omitempty"`

	// Share keeps tokens in Caddy's configured storage, so that instances
	// sharing it share one token. Default: false.
	Share bool `json:"share,omitempty"`

	// AllowHTTP permits an http:// token URL on a host that is not
	// loopback. Default: false.
	AllowHTTP bool `json:"allow_http,omitempty"`

	// TLS configures the connection to the token endpoint. Default: the
	// system's roots, no client certificate.
	TLS *TLS `json:"tls,omitempty"`

	src     *pooledSource
	key     string
	header  string
	prefix  string
	renewOn []int
	logger  *zap.Logger
	value   *headerValue               // the header value of the current token
	buffer  caddyhttp.ShouldBufferFunc // buffer answers with a renew_on status
}

// TLS configures the client side of TLS connections to the token endpoint.
type TLS struct {
	// CA lists PEM files of the certificate authorities to trust, instead
	// of the system's (as reverse_proxy's tls_trust_pool file). Default:
	// the system's roots.
	CA []string `json:"ca,omitempty"`
	// ClientCert and ClientKey are PEM files of a client certificate and
	// its key, for mutual TLS.
	ClientCert string `json:"client_cert,omitempty"`
	ClientKey  string `json:"client_key,omitempty"`
	// ServerName overrides the name the server's certificate is checked
	// against (and sent as SNI).
	ServerName string `json:"server_name,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.upstream_oauth",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Defaults.
const (
	defaultTTL      = 5 * time.Minute
	defaultTimeout  = 10 * time.Second
	defaultHeader   = "Authorization"
	defaultScheme   = "Bearer"
	maxReplayBody   = 64 << 10
	defaultFraction = 0.2
)

// Provision expands placeholders, applies the preset and defaults, and
// attaches the handler to the token source for its settings, creating the
// source if no other handler (in this config or the one before a reload)
// has it. It does no network I/O: the first token is requested when first
// needed.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if err := useEvents(ctx); err != nil {
		return err
	}
	s, err := h.settings(caddy.NewReplacer())
	if err != nil {
		return err
	}
	h.header, h.prefix, h.renewOn = s.header, s.prefix, s.renewOn
	h.value, h.buffer = new(headerValue), h.isRenewStatus
	h.key = s.key()
	val, _, err := sources.LoadOrNew(h.key, func() (caddy.Destructor, error) {
		return newPooledSource(ctx, s)
	})
	if err != nil {
		h.key = ""
		return err
	}
	h.src = val.(*pooledSource)
	if h.src.shared != nil {
		// The source may predate this config: use this config's storage.
		h.src.shared.SetStorage(ctx.Storage())
	}
	return nil
}

// Validate checks what Provision could not: nothing further at present, as
// Provision refuses bad settings with the reason. It has no side effects.
func (h *Handler) Validate() error {
	if h.src == nil {
		return errors.New("upstream_oauth: not provisioned")
	}
	return nil
}

// Cleanup releases the handler's token source; the last handler to release
// it stops it.
func (h *Handler) Cleanup() error {
	if h.key == "" {
		return nil
	}
	_, err := sources.Delete(h.key)
	h.key = ""
	return err
}

// ServeHTTP sets the token on the request and calls next. With renew_on
// statuses configured, an upstream answer with one of them retires the
// token that was used and the request is replayed once with a new token,
// when its body was kept.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	tok, err := h.token(w, r)
	if err != nil {
		return err
	}
	if len(h.renewOn) == 0 {
		h.setToken(r, tok)
		return next.ServeHTTP(w, r)
	}

	body, replayable, err := keepBody(r)
	if err != nil {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
	}
	if !replayable {
		return h.passOnce(w, r, next, tok)
	}
	header := headerPool.Get().(*headerSnapshot)
	header.take(w.Header())
	defer headerPool.Put(header)
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	rec := caddyhttp.NewResponseRecorder(w, buf, h.buffer)
	h.setToken(r, tok)
	r.Body = body()
	if err := next.ServeHTTP(rec, r); err != nil {
		return err
	}
	if !rec.Buffered() || rec.Status() == 0 {
		return nil // passed through, or nothing written: not a refusal
	}
	// The upstream refused the token: retire it (once, however many
	// requests saw it refused), get a new one, replay.
	if h.src.Retire(tok) {
		metricUpstreamRenewal(h.src.Name(), rec.Status())
	}
	tok2, err := h.token(w, r)
	if err != nil {
		// The 502 goes out with the header as it was before the upstream
		// answered, plus token's Retry-After: none of the refused answer's
		// (its Content-Length would cut the error's body short).
		retryAfter := w.Header().Values("Retry-After")
		header.restore(w.Header())
		if retryAfter != nil {
			w.Header()["Retry-After"] = retryAfter
		}
		return err
	}
	if tok2 == tok {
		return rec.WriteResponse() // the token stays (not ours to retire): pass the answer on
	}
	header.restore(w.Header())
	r = withOwnVars(r)
	h.setToken(r, tok2)
	r.Body = body()
	return next.ServeHTTP(w, r)
}

// withOwnVars gives a replayed request a copy of its Caddy vars: a goroutine
// the first attempt left behind (reverse_proxy's dialer) may still read the
// original map while the replay writes to its own.
func withOwnVars(r *http.Request) *http.Request {
	vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, maps.Clone(vars)))
}

// passOnce forwards a request whose body cannot be kept for a replay: an
// answer with a renew_on status still retires the token, and passes through.
func (h *Handler) passOnce(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, tok *grants.Token) error {
	h.setToken(r, tok)
	sw := &statusWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	err := next.ServeHTTP(sw, r)
	if h.isRenewStatus(sw.status, nil) && h.src.Retire(tok) {
		metricUpstreamRenewal(h.src.Name(), sw.status)
	}
	return err
}

// token returns the source's token, or the 502 error to answer with.
func (h *Handler) token(w http.ResponseWriter, r *http.Request) (*grants.Token, error) {
	tok, err := h.src.Get(r.Context())
	if err == nil {
		return tok, nil
	}
	var ue *cache.UnavailableError
	if errors.As(err, &ue) && ue.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ue.RetryAfter.Seconds()))))
	}
	if c := h.logger.Check(zap.DebugLevel, "no token for request"); c != nil {
		c.Write(zap.String("source", h.src.Name()), zap.Error(err))
	}
	metricNoToken(h.src.Name())
	return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("upstream_oauth %s: %w", h.src.Name(), err))
}

// setToken puts tok on r, replacing what the client sent; the client's own
// Authorization never reaches the upstream.
func (h *Handler) setToken(r *http.Request, tok *grants.Token) {
	if h.header != defaultHeader {
		r.Header.Del(defaultHeader)
	}
	r.Header.Set(h.header, h.value.of(h.prefix, tok))
}

// isRenewStatus reports whether an upstream answer with status retires the
// token: the recorder's ShouldBufferFunc, made once in Provision.
func (h *Handler) isRenewStatus(status int, _ http.Header) bool {
	return slices.Contains(h.renewOn, status)
}

// headerValue holds the header value (scheme and token) of the token a
// handler last set, so that it is built once per token rather than once per
// request: a request then allocates nothing for its token but the header's
// own slice.
type headerValue struct {
	last atomic.Pointer[formattedToken]
}

type formattedToken struct {
	tok   *grants.Token
	value string
}

// of returns prefix+tok.AccessToken, built once for each new tok.
func (v *headerValue) of(prefix string, tok *grants.Token) string {
	if v == nil {
		return prefix + tok.AccessToken
	}
	if f := v.last.Load(); f != nil && f.tok == tok {
		return f.value
	}
	f := &formattedToken{tok: tok, value: prefix + tok.AccessToken}
	v.last.Store(f)
	return f.value
}

// keepBody reads a small request body into memory so the request can be
// replayed: body returns a fresh reader each time. replayable is false when
// the body is larger than 64 KiB (r.Body then still yields all of it).
func keepBody(r *http.Request) (body func() io.ReadCloser, replayable bool, err error) {
	// A server request with ContentLength 0 has no body (an unknown length
	// is -1), though Caddy wraps its r.Body: nothing to read or keep.
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return func() io.ReadCloser { return http.NoBody }, true, nil
	}
	if r.ContentLength > maxReplayBody {
		return nil, false, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxReplayBody+1))
	if err != nil {
		return nil, false, err
	}
	if len(data) > maxReplayBody {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), r.Body), r.Body}
		return nil, false, nil
	}
	return func() io.ReadCloser { return io.NopCloser(bytes.NewReader(data)) }, true, nil
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

var headerPool = sync.Pool{New: func() any { return new(headerSnapshot) }}

// headerSnapshot is a copy of a response header as it was before the
// upstream answered, to restore it before a replay. It is Header.Clone
// without the allocations: its slices are reused from the pool, and only
// restore (on a replay) allocates.
type headerSnapshot struct {
	keys []string
	lens []int // values of each key; -1 for a nil slice (kept, as Clone does)
	vals []string
}

func (s *headerSnapshot) take(h http.Header) {
	s.keys, s.lens, s.vals = s.keys[:0], s.lens[:0], s.vals[:0]
	for k, v := range h {
		s.keys = append(s.keys, k)
		if v == nil {
			s.lens = append(s.lens, -1)
			continue
		}
		s.lens = append(s.lens, len(v))
		s.vals = append(s.vals, v...)
	}
}

// restore makes h what it was at take, with slices of its own.
func (s *headerSnapshot) restore(h http.Header) {
	clear(h)
	i := 0
	for j, k := range s.keys {
		n := s.lens[j]
		if n < 0 {
			h[k] = nil
			continue
		}
		h[k] = append(make([]string, 0, n), s.vals[i:i+n]...)
		i += n
	}
}

// statusWriter records the status written through it.
type statusWriter struct {
	*caddyhttp.ResponseWriterWrapper
	status int
}

func (sw *statusWriter) WriteHeader(status int) {
	if sw.status == 0 {
		sw.status = status
	}
	sw.ResponseWriterWrapper.WriteHeader(status)
}

func (sw *statusWriter) Write(p []byte) (int, error) {
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	return sw.ResponseWriterWrapper.Write(p)
}

// settings are a handler's values with placeholders expanded, the preset
// applied and defaults filled in.
type settings struct {
	Name         string        `json:"name"`
	Provider     string        `json:"provider"`
	Grants       grants.Config `json:"grants"`
	LogoutURL    string        `json:"logout_url"`
	RefreshAhead time.Duration `json:"refresh_ahead"`
	Fraction     float64       `json:"fraction"`
	Timeout      time.Duration `json:"timeout"`
	Share        bool          `json:"share"`
	TLS          *TLS          `json:"tls"`

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
	var s settings
	expand := func(v string) string { return repl.ReplaceKnown(v, "") }
	s.Provider = expand(h.Provider)
	var preset grants.Preset
	if s.Provider != "" {
		p, ok := grants.Presets[s.Provider]
		if !ok {
			return s, fmt.Errorf("unknown provider %q (known: %s)", s.Provider, strings.Join(grants.PresetNames(), ", "))
		}
		preset = p
	}
	or := func(v, def string) string {
		if v = expand(v); v != "" {
			return v
		}
		return def
	}
	g := grants.Config{
		TokenURL:     or(h.TokenURL, preset.TokenURL),
		Grant:        or(h.Grant, or(preset.Grant, grants.ClientCredentials)),
		ClientID:     expand(h.ClientID),
		ClientSecret: expand(h.ClientSecret),
		Username:     expand(h.Username),
		Password:     expand(h.Password),
		ClientAuth:   or(h.ClientAuth, or(preset.ClientAuth, grants.AuthBasic)),
		Body:         or(h.Body, or(preset.Body, grants.BodyForm)),
		Audience:     expand(h.Audience),
		DefaultTTL:   time.Duration(h.DefaultTTL),
		AllowHTTP:    h.AllowHTTP,
	}
	for _, sc := range h.Scope {
		g.Scopes = append(g.Scopes, expand(sc))
	}
	if len(h.Param) > 0 {
		g.Params = make(map[string]string, len(h.Param))
		for k, v := range h.Param {
			g.Params[k] = expand(v)
		}
	}
	if len(h.TokenHeader) > 0 {
		g.Headers = make(map[string]string, len(h.TokenHeader))
		for k, v := range h.TokenHeader {
			g.Headers[http.CanonicalHeaderKey(k)] = expand(v)
		}
	}
	if g.DefaultTTL == 0 {
		g.DefaultTTL = defaultTTL
	}

	s.header = http.CanonicalHeaderKey(or(h.Header, defaultHeader))
	scheme := expand(h.HeaderScheme)
	if scheme == "" && s.header == defaultHeader {
		scheme = defaultScheme
	}
	if scheme != "" {
		s.prefix = scheme + " "
		g.TokenType = scheme
	}
	if g.TokenType == "" {
		g.TokenType = "bearer"
	}
	s.Grants = g
	if err := g.Validate(); err != nil {
		return s, err
	}

	s.LogoutURL = or(h.LogoutURL, preset.LogoutURL)
	if s.LogoutURL != "" {
		if err := grants.CheckURL("logout_url", s.LogoutURL, h.AllowHTTP); err != nil {
			return s, err
		}
	}
	var err error
	if s.RefreshAhead, s.Fraction, err = parseRefreshAhead(expand(h.RefreshAhead)); err != nil {
		return s, err
	}
	if s.Timeout = time.Duration(h.Timeout); s.Timeout == 0 {
		s.Timeout = defaultTimeout
	}
	if s.Timeout < 0 {
		return s, fmt.Errorf("timeout must be positive")
	}
	s.renewOn = h.RenewOn
	if s.renewOn == nil {
		s.renewOn = []int{http.StatusUnauthorized}
	}
	for _, st := range s.renewOn {
		if st < 100 || st > 599 {
			return s, fmt.Errorf("renew_on: %d is not an HTTP status", st)
		}
	}
	s.Share = h.Share
	if h.TLS != nil {
		t := *h.TLS
		t.CA = slices.Clone(t.CA)
		for i := range t.CA {
			t.CA[i] = expand(t.CA[i])
		}
		t.ClientCert, t.ClientKey, t.ServerName = expand(t.ClientCert), expand(t.ClientKey), expand(t.ServerName)
		s.TLS = &t
	}
	s.Name = expand(h.Name)
	if s.Name == "" {
		s.Name = defaultName(s.Provider, g.TokenURL, g.ClientIdentity())
	}
	return s, nil
}

// parseRefreshAhead reads "20%" as a fraction of the lifetime or "5m" as a
// duration; empty is the default, 20%.
func parseRefreshAhead(v string) (time.Duration, float64, error) {
	if v == "" {
		return 0, defaultFraction, nil
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

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
