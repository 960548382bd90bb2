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
	"fmt"

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
	// http:// on a loopback host or with AllowHTTP. When set, it wins over
	// Issuer. Default: the preset's, else (with Issuer) the token_endpoint
	// of the issuer's metadata.
	TokenURL string `json:"token_url,omitempty"`

	// Issuer is the authorization server whose metadata names the token
	// endpoint: /.well-known/oauth-authorization-server (RFC 8414, inserted
	// before the issuer's path), else <issuer>/.well-known/openid-configuration.
	// The metadata's issuer must equal it exactly, and its token_endpoint
	// obeys TokenURL's rules. Read when the first token is needed (never at
	// adapt, validate or provision), kept, and read again after a token
	// request gets no answer or a 404. Unused when TokenURL is set.
	// Default: none.
	Issuer string `json:"issuer,omitempty"`

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

	// ClientAuth says how the client proves itself: basic (HTTP Basic
	// header; also named client_secret_basic), body (client_id and
	// client_secret fields; client_secret_post), none (client_id only),
	// private_key_jwt (a JWT signed with Assertion's key, RFC 7523),
	// client_secret_jwt (a JWT signed with HMAC over ClientSecret) or
	// tls_client_auth (client_id only, and the TLS client certificate of
	// TLS on the connection, RFC 8705). Default: the preset's, else basic.
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

	// TLS configures the connection to the token endpoint (and to the
	// issuer's metadata). Default: the system's roots, no client
	// certificate.
	TLS *TLS `json:"tls,omitempty"`

	// Assertion configures the signed JWT that private_key_jwt and
	// client_secret_jwt send as client_assertion. Default: none (required,
	// with its key, for private_key_jwt).
	Assertion *Assertion `json:"assertion,omitempty"`

	// MaxSources bounds the token sources of a handler with per-request
	// credentials (client_id, client_secret, username, password, scope,
	// audience, name, or param and token_header values with request
	// placeholders, such as {http.*} or the variables of map): one per
	// tenant, made on first use; beyond it, the least recently used is
	// stopped (as is one unused for an hour). Default: 10000.
	MaxSources int `json:"max_sources,omitempty"`

	src     *pooledSource
	static  requestSource // src, as the request path takes it
	tenants *tenantTable  // per-request credentials: a source per tenant, instead of src
	key     string
	header  string
	prefix  string
	renewOn []int
	logger  *zap.Logger
	value   *headerValue // the header value of the current token
	layout  *layouts     // the keys of the headers and vars before next (replay.go)
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

// Assertion configures the client assertion of private_key_jwt and
// client_secret_jwt (RFC 7523 section 2.2): a JWT made fresh for every
// token request, with iss and sub the client id, aud, iat, exp and a random
// jti. The key file is read once, when the token source is made; a key that
// cannot be read or does not fit Alg fails provisioning.
type Assertion struct {
	// Key is the PEM file of the private key that signs, for
	// private_key_jwt: RSA (2048 bits or more), ECDSA P-256 or P-384, or
	// Ed25519, in PKCS#8, PKCS#1 or SEC 1, not encrypted. The config holds
	// its path, never its content. Default: none.
	Key string `json:"key,omitempty"`

	// Alg is the JWS algorithm: RS256, RS384, RS512, PS256, PS384, PS512,
	// ES256, ES384 or EdDSA with a key; HS256, HS384 or HS512 with
	// client_secret_jwt. none is refused. Default: from the key (RSA RS256,
	// P-256 ES256, P-384 ES384, Ed25519 EdDSA); HS256 for client_secret_jwt.
	Alg string `json:"alg,omitempty"`

	// Kid is the JOSE header kid, naming the key to the provider.
	// Default: none (no kid header).
	Kid string `json:"kid,omitempty"`

	// X5T is the PEM file of the key's certificate; the JOSE headers x5t
	// and x5t#S256 carry its SHA-1 and SHA-256 thumbprints (Entra ID names
	// a key so). Its public key must be Key's. Default: none.
	X5T string `json:"x5t,omitempty"`

	// Audience is the aud claim. Default: the token URL (with Issuer, the
	// discovered one).
	Audience string `json:"audience,omitempty"`

	// Lifetime is exp - iat, between 1s and 1h. Default: 60s.
	Lifetime caddy.Duration `json:"lifetime,omitempty"`

	// Claim holds extra string claims. The registered ones (iss, sub, aud,
	// exp, iat, nbf, jti) cannot be set. Default: none.
	Claim map[string]string `json:"claim,omitempty"`
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
	if err := h.checkSteering(); err != nil {
		return err
	}
	if h.MaxSources < 0 {
		return fmt.Errorf("max_sources must be positive")
	}
	global := caddy.NewReplacer()
	s, err := h.settings(global)
	if err != nil {
		return err
	}
	h.header, h.prefix, h.renewOn = s.header, s.prefix, s.renewOn
	h.layout = new(layouts)
	if dyn := h.dynamicFields(global); dyn != nil {
		return h.provisionTenants(ctx, global, dyn)
	}
	s.digestFiles()
	h.value = new(headerValue)
	key := s.key()
	val, _, err := sources.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newPooledSource(ctx, s)
	})
	if err != nil {
		return err
	}
	h.key = key // Cleanup lets go of the reference only once it is taken
	h.src = val.(*pooledSource)
	h.static = requestSource{h.src.Source, h.src, h.value}
	return nil
}

// Validate checks what Provision could not: nothing further at present, as
// Provision refuses bad settings with the reason. It has no side effects.
func (h *Handler) Validate() error {
	if h.src == nil && h.tenants == nil {
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
