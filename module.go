// Package upstreamoauth is a Caddy HTTP handler that obtains OAuth 2.0
// access tokens from an upstream provider's token endpoint, keeps them
// fresh, and sets them on every request Caddy forwards, so that the clients
// behind the gateway never hold the provider's credentials.
//
// The request path is in serve.go (and replay.go for renew_on), settings
// resolution in settings.go, the token sources shared across handlers and
// reloads in pool.go; tokens are requested in grants/ and held in cache/.
package upstreamoauth

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler sets an OAuth 2.0 access token, obtained from the provider's token
// endpoint and renewed in the background, on every request that passes
// through it, replacing whatever the client sent in that header. With no
// valid token it answers with a 502 error and forwards nothing.
//
// String values take Caddy's global placeholders ({env.NAME},
// {file./path}, ...), expanded once at provision time: use them for
// secrets, so that the JSON config holds only the placeholder.
type Handler struct {
	// Provider fills in the settings of a known provider: 1nce, oneio,
	// oneio_test or telenor. Any other field overrides what it fills in.
	// Default: none.
	Provider string `json:"provider,omitempty"`

	// Name names this token source in logs, metrics, events and the admin
	// API. Default: the provider (else the token URL's host), then ":" and
	// the client id (for client_credentials without client_id, the
	// username), e.g. "1nce:api-user".
	Name string `json:"name,omitempty"`

	// TokenURL is the provider's token endpoint. Must be https://, or
	// http:// on a loopback host or with AllowHTTP. Default: the preset's.
	TokenURL string `json:"token_url,omitempty"`

	// Grant is client_credentials or password. Default: the preset's, else
	// client_credentials.
	Grant string `json:"grant,omitempty"`

	// ClientID identifies the client. For client_credentials, Username may
	// stand in for it. Default: none.
	ClientID string `json:"client_id,omitempty"`

	// ClientSecret is the client's secret. For client_credentials, Password
	// may stand in for it. Pass it as a placeholder ({env.*}, {file.*}).
	// Default: none.
	ClientSecret string `json:"client_secret,omitempty"`

	// Username is the resource owner's, for the password grant (or the
	// client's id, for client_credentials without ClientID). Default: none.
	Username string `json:"username,omitempty"`

	// Password is the resource owner's, for the password grant (or the
	// client's secret, for client_credentials without ClientSecret). Pass
	// it as a placeholder ({env.*}, {file.*}). Default: none.
	Password string `json:"password,omitempty"`

	// ClientAuth says where the client's credentials go: basic (HTTP Basic
	// header; also named client_secret_basic), body (client_id and
	// client_secret fields; client_secret_post) or none (client_id only).
	// Default: the preset's, else basic.
	ClientAuth string `json:"client_auth,omitempty"`

	// Body is the encoding of the token request body: form or json.
	// Default: the preset's, else form.
	Body string `json:"body,omitempty"`

	// Scope lists the scopes asked for, sent space-separated. Default: none.
	Scope []string `json:"scope,omitempty"`

	// Audience is sent as the audience field when set. Default: none.
	Audience string `json:"audience,omitempty"`

	// Param holds extra fields of the token request body. The module's own
	// fields (grant_type, client_id, ...) cannot be set. Default: none.
	Param map[string]string `json:"param,omitempty"`

	// TokenHeader holds extra headers of the token request. Content-Type
	// (and Authorization, with basic) cannot be set. Default: none.
	TokenHeader map[string]string `json:"token_header,omitempty"`

	// LogoutURL, when set, is called (GET, with the token as bearer) when a
	// token is retired. Default: the preset's (telenor), else none.
	LogoutURL string `json:"logout_url,omitempty"`

	// RefreshAhead is how long before expiry a token is renewed: a duration
	// ("5m") or a percentage of the lifetime ("20%"). Default: 20%.
	RefreshAhead string `json:"refresh_ahead,omitempty"`

	// DefaultTTL is the lifetime of a token whose response has no
	// expires_in, from 1s to a year. Default: 5m.
	DefaultTTL caddy.Duration `json:"default_ttl,omitempty"`

	// Timeout bounds one token request (and one logout). Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// RenewOn lists upstream statuses that retire the token that was used;
	// the request is replayed once with a new token when its body was kept
	// (none, or up to 64 KiB). Retirements are spaced, so that no client
	// can drive token requests. An empty list (Caddyfile: renew_on off)
	// turns watching off: the handler wraps nothing. Default: [401].
	RenewOn []int `json:"renew_on,omitzero"`

	// Header is the request header that carries the token, an HTTP field
	// name. Default: Authorization. Caddy's logs redact Authorization (and
	// its other credential headers) from request headers, but not a header
	// of another name: reverse_proxy's DEBUG "upstream roundtrip" line
	// then shows the token, unless a log filter removes it (the README's
	// security section has one).
	Header string `json:"header,omitempty"`

	// HeaderScheme is the scheme before the token in Header, a token
	// (no spaces or control characters). Default: Bearer for
	// Authorization, none (the bare token) for other headers.
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
	value   *headerValue  // the header value of the current token
	layout  *headerLayout // the response header's keys before next (replay.go)
}

// TLS configures the client side of TLS connections to the token endpoint.
type TLS struct {
	// CA lists PEM files of the certificate authorities to trust, instead
	// of the system's (as reverse_proxy's tls_trust_pool file). Default:
	// the system's roots.
	CA []string `json:"ca,omitempty"`

	// ClientCert is a PEM file of a client certificate, for mutual TLS.
	// Default: none.
	ClientCert string `json:"client_cert,omitempty"`

	// ClientKey is the PEM file of ClientCert's private key. Default: none.
	ClientKey string `json:"client_key,omitempty"`

	// ServerName overrides the name the server's certificate is checked
	// against (and sent as SNI). Default: the token URL's host.
	ServerName string `json:"server_name,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.upstream_oauth",
		New: func() caddy.Module { return new(Handler) },
	}
}

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
	if err := bindConfig(ctx); err != nil {
		return err
	}
	s, err := h.settings(caddy.NewReplacer())
	if err != nil {
		return err
	}
	h.header, h.prefix, h.renewOn = s.header, s.prefix, s.renewOn
	h.value, h.layout = new(headerValue), new(headerLayout)
	h.key = s.key()
	val, _, err := sources.LoadOrNew(h.key, func() (caddy.Destructor, error) {
		return newPooledSource(ctx, s)
	})
	if err != nil {
		h.key = ""
		return err
	}
	h.src = val.(*pooledSource)
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

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
