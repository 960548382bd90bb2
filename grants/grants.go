// Package grants requests OAuth 2.0 access tokens from a token endpoint and
// reads the answers. It knows the grants (client_credentials, password,
// refresh_token), the ways a client authenticates (HTTP Basic, body fields,
// none, signed client assertions, a TLS client certificate), the body
// encodings (form, JSON), issuer discovery and the providers' presets. It
// knows nothing of Caddy's HTTP handlers or of caching.
package grants

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// GrantType is the grant a token request uses.
type GrantType string

// Grant types.
const (
	ClientCredentials GrantType = "client_credentials"
	Password          GrantType = "password"
	RefreshToken      GrantType = "refresh_token"
)

// AuthMethod is how the client authenticates to the token endpoint.
type AuthMethod string

// Client authentication methods.
const (
	AuthBasic AuthMethod = "basic" // HTTP Basic header (client_secret_basic)
	AuthBody  AuthMethod = "body"  // client_id and client_secret body fields (client_secret_post)
	AuthNone  AuthMethod = "none"  // client_id in the body, no secret
	// AuthPrivateKeyJWT signs a client assertion (RFC 7523) with the
	// assertion's private key.
	AuthPrivateKeyJWT AuthMethod = "private_key_jwt"
	// AuthClientSecretJWT signs a client assertion with HMAC over the
	// client secret.
	AuthClientSecretJWT AuthMethod = "client_secret_jwt"
	// AuthTLSClient proves the client with the TLS client certificate of
	// the connection (RFC 8705 section 2): client_id in the body, no secret.
	AuthTLSClient AuthMethod = "tls_client_auth"
)

// BodyEncoding is the encoding of a token request's body.
type BodyEncoding string

// Body encodings.
const (
	BodyForm BodyEncoding = "form"
	BodyJSON BodyEncoding = "json"
)

// Grants, AuthMethods and BodyEncodings list the values a config may name,
// in the order error messages give them.
var (
	Grants        = []GrantType{ClientCredentials, Password}
	AuthMethods   = []AuthMethod{AuthBasic, AuthBody, AuthNone, AuthPrivateKeyJWT, AuthClientSecretJWT, AuthTLSClient}
	BodyEncodings = []BodyEncoding{BodyForm, BodyJSON}
)

// authAliases are the RFC 7591 names of the methods that have a short one.
var authAliases = map[string]AuthMethod{
	"client_secret_basic": AuthBasic,
	"client_secret_post":  AuthBody,
}

// AuthMethodNames lists every name ParseAuthMethod accepts: the short
// ones, then the RFC 7591 names.
func AuthMethodNames() []AuthMethod {
	names := slices.Clone(AuthMethods)
	for _, alias := range slices.Sorted(maps.Keys(authAliases)) {
		names = append(names, AuthMethod(alias))
	}
	return names
}

// secret reports whether m sends the client secret, in some form: as it
// is (basic, body) or as the key of an HMAC (client_secret_jwt).
func (m AuthMethod) secret() bool {
	switch m {
	case AuthBasic, AuthBody, AuthClientSecretJWT:
		return true
	case AuthNone, AuthPrivateKeyJWT, AuthTLSClient:
	}
	return false
}

// keyed reports whether m proves the client with a key that is not the
// client secret (private_key_jwt, tls_client_auth): no secret is sent.
func (m AuthMethod) keyed() bool {
	switch m {
	case AuthPrivateKeyJWT, AuthTLSClient:
		return true
	case AuthBasic, AuthBody, AuthNone, AuthClientSecretJWT:
	}
	return false
}

// signs reports whether m sends a client assertion.
func (m AuthMethod) signs() bool {
	switch m {
	case AuthPrivateKeyJWT, AuthClientSecretJWT:
		return true
	case AuthBasic, AuthBody, AuthNone, AuthTLSClient:
	}
	return false
}

// ParseGrant reads a grant's name.
func ParseGrant(s string) (GrantType, error) { return parseName("grant", s, Grants) }

// ParseAuthMethod reads a client authentication method's name, short or
// as RFC 7591 names it (client_secret_basic, client_secret_post).
func ParseAuthMethod(s string) (AuthMethod, error) {
	if m, ok := authAliases[s]; ok {
		return m, nil
	}
	return parseName("client_auth", s, AuthMethods)
}

// ParseBodyEncoding reads a body encoding's name.
func ParseBodyEncoding(s string) (BodyEncoding, error) { return parseName("body", s, BodyEncodings) }

// parseName returns the one of values named s; what names the setting in
// the error.
func parseName[T ~string](what, s string, values []T) (T, error) {
	for _, v := range values {
		if s == string(v) {
			return v, nil
		}
	}
	return "", fmt.Errorf("unknown %s %q (want %s)", what, s, oneOf(values))
}

// oneOf lists values as "a, b or c".
func oneOf[T ~string](values []T) string {
	var b strings.Builder
	for i, v := range values {
		switch {
		case i == 0:
		case i == len(values)-1:
			b.WriteString(" or ")
		default:
			b.WriteString(", ")
		}
		b.WriteString(string(v))
	}
	return b.String()
}

// Config says how to ask one token endpoint for a token. All values are final:
// placeholders have been expanded and presets applied by the caller.
type Config struct {
	// TokenURL is the token endpoint. When empty, it is read from the
	// metadata of Issuer when the first token is needed.
	TokenURL string
	// Issuer is the authorization server whose metadata names the token
	// endpoint (RFC 8414, OpenID Connect Discovery); unused when TokenURL
	// is set.
	Issuer       string `json:",omitempty"`
	Grant        GrantType
	ClientID     string
	ClientSecret string
	Username     string
	Password     string
	ClientAuth   AuthMethod
	Body         BodyEncoding
	Scopes       []string
	Audience     string
	Params       map[string]string
	Headers      map[string]string
	// TokenType is the token_type a response must carry (case-insensitive)
	// when it carries one at all. Default: bearer.
	TokenType string
	// DefaultTTL is the lifetime of a token whose response has no expires_in.
	DefaultTTL time.Duration
	// AllowHTTP permits an http:// token URL on a host that is not loopback.
	AllowHTTP bool
	// Assertion configures the client assertion of private_key_jwt and
	// client_secret_jwt; nil with other methods.
	Assertion *Assertion `json:",omitempty"`
}

// clientCredentials returns the client's id and secret: for the
// client_credentials grant, username and password stand in for them when
// client_id is not set (1NCE and ONEiO call their API credentials that).
func (c Config) clientCredentials() (id, secret string) {
	if c.Grant == ClientCredentials && c.ClientID == "" && c.ClientSecret == "" {
		return c.Username, c.Password
	}
	return c.ClientID, c.ClientSecret
}

// ClientIdentity is the client id the token requests carry (username under
// client_credentials when no client_id is set): not a secret, for names and
// the admin API.
func (c Config) ClientIdentity() string {
	id, _ := c.clientCredentials()
	return id
}

// Validate reports the first problem with c, in words fit for a config error.
// It never quotes a secret, and reads no file: the assertion's key and
// certificate are read by NewClient.
func (c Config) Validate() error {
	switch {
	case c.TokenURL != "":
		if err := CheckURL("token_url", c.TokenURL, c.AllowHTTP); err != nil {
			return err
		}
	case c.Issuer == "":
		return fmt.Errorf("token_url is required (or issuer, or a provider preset)")
	}
	if c.Issuer != "" {
		if err := CheckIssuer(c.Issuer, c.AllowHTTP); err != nil {
			return err
		}
	}
	if c.Grant == "" {
		return fmt.Errorf("grant is required (%s)", oneOf(Grants))
	}
	if _, err := ParseGrant(string(c.Grant)); err != nil {
		return err
	}
	if _, err := ParseAuthMethod(string(c.ClientAuth)); err != nil {
		return err
	}
	if err := c.validateCredentials(); err != nil {
		return err
	}
	if err := c.validateAssertion(); err != nil {
		return err
	}
	if _, err := ParseBodyEncoding(string(c.Body)); err != nil {
		return err
	}
	for name := range c.Params {
		if reservedParams[name] {
			return fmt.Errorf("param %q is set by the module itself", name)
		}
	}
	for name := range c.Headers {
		// One way of authenticating the client per request (RFC 6749
		// section 2.3): an Authorization header is for the module to set
		// where the method has one, and out of place where it has another.
		authHeader := c.ClientAuth == AuthBasic || c.ClientAuth.signs() || c.ClientAuth == AuthTLSClient
		if strings.EqualFold(name, "Content-Type") || (strings.EqualFold(name, "Authorization") && authHeader) {
			return fmt.Errorf("token_header %q is set by the module itself", name)
		}
	}
	if c.DefaultTTL < 0 {
		return fmt.Errorf("default_ttl must not be negative")
	}
	return nil
}

// validateCredentials checks that the grant has its credentials, and that
// no secret is configured that the client authentication would not send.
func (c Config) validateCredentials() error {
	m := c.ClientAuth
	switch c.Grant {
	case ClientCredentials:
		id, secret := c.clientCredentials()
		if id == "" {
			return fmt.Errorf("grant client_credentials needs client_id (or username)")
		}
		if secret == "" && m.secret() {
			return fmt.Errorf("grant client_credentials needs client_secret (or password)")
		}
		if secret != "" && m.keyed() {
			return fmt.Errorf("client_auth %s sends no secret: remove client_secret (or password)", m)
		}
	case Password:
		if c.Username == "" || c.Password == "" {
			return fmt.Errorf("grant password needs username and password")
		}
		if m.secret() && (c.ClientID == "" || c.ClientSecret == "") {
			return fmt.Errorf("grant password with client_auth %s needs client_id and client_secret", m)
		}
		if m.keyed() {
			if c.ClientID == "" {
				return fmt.Errorf("grant password with client_auth %s needs client_id", m)
			}
			if c.ClientSecret != "" {
				return fmt.Errorf("client_auth %s sends no secret: remove client_secret", m)
			}
		}
	case RefreshToken: // renewals only: ParseGrant refused it
	}
	return nil
}

// reservedParams are the body fields the module writes itself.
var reservedParams = map[string]bool{
	"grant_type": true, "client_id": true, "client_secret": true, "username": true,
	"password": true, "scope": true, "audience": true, "refresh_token": true,
	"client_assertion": true, "client_assertion_type": true,
}

// CheckURL checks that raw is an absolute https URL, or http on a loopback
// host or when allowHTTP is set. what names the setting in the error.
func CheckURL(what, raw string, allowHTTP bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		// A *url.Error quotes the whole URL, userinfo and all: keep the cause.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return fmt.Errorf("%s: malformed URL: %v", what, err)
	}
	if u.User != nil || strings.Contains(u.Opaque, "@") {
		return fmt.Errorf("%s: credentials in the URL are not allowed; use client_id/client_secret", what)
	}
	if u.Host == "" || u.Hostname() == "" {
		if strings.Contains(raw, "@") { // may be user:secret@ in a path
			return fmt.Errorf("%s: not an absolute URL with a host", what)
		}
		return fmt.Errorf("%s: %q is not an absolute URL with a host", what, raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowHTTP && !isLoopback(u.Hostname()) {
			return fmt.Errorf("%s: http:// is only allowed for a loopback host; use https:// or set allow_http", what)
		}
	default:
		return fmt.Errorf("%s: scheme %q is not supported (want https)", what, u.Scheme)
	}
	return nil
}

// isLoopback reports whether host names this machine: localhost or a
// loopback address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Preset holds the settings a provider's name fills in.
type Preset struct {
	TokenURL   string
	Grant      GrantType
	ClientAuth AuthMethod
	Body       BodyEncoding
	LogoutURL  string
}

// presets are the providers this module knows by name.
//
//nolint:gosec // G101: token endpoint URLs, not credentials
var presets = map[string]Preset{
	"1nce": {
		TokenURL:   "https://api.1nce.com/management-api/oauth/token",
		Grant:      ClientCredentials,
		ClientAuth: AuthBasic,
		Body:       BodyJSON,
	},
	"oneio": {
		TokenURL:   "https://receiver-authz.service-flow.com/oauth2/token",
		Grant:      ClientCredentials,
		ClientAuth: AuthBody,
		Body:       BodyForm,
	},
	"oneio_test": {
		TokenURL:   "https://receiver-authz-test.service-flow.com/oauth2/token",
		Grant:      ClientCredentials,
		ClientAuth: AuthBody,
		Body:       BodyForm,
	},
	"telenor": {
		TokenURL:   "https://api.telenor.no/oauth/v2/token",
		Grant:      Password,
		ClientAuth: AuthBasic,
		Body:       BodyForm,
		LogoutURL:  "https://api.telenor.no/oauth/v2/logout",
	},
}

// LookupPreset returns the settings of the provider named name.
func LookupPreset(name string) (Preset, bool) {
	p, ok := presets[name]
	return p, ok
}

// PresetNames lists the presets, sorted, for error messages.
func PresetNames() []string {
	return slices.Sorted(maps.Keys(presets))
}
