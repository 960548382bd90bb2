// Package grants requests OAuth 2.0 access tokens from a token endpoint and
// reads the answers. It knows the grants (client_credentials, password,
// refresh_token), the ways a client authenticates (HTTP Basic, body fields,
// none), the body encodings (form, JSON) and the providers' presets. It knows
// nothing of Caddy's HTTP handlers or of caching.
package grants

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Grant types.
const (
	ClientCredentials = "client_credentials"
	Password          = "password"
	RefreshToken      = "refresh_token"
)

// Client authentication methods.
const (
	AuthBasic = "basic"
	AuthBody  = "body"
	AuthNone  = "none"
)

// Body encodings.
const (
	BodyForm = "form"
	BodyJSON = "json"
)

// Config says how to ask one token endpoint for a token. All values are final:
// placeholders have been expanded and presets applied by the caller.
type Config struct {
	TokenURL     string
	Grant        string
	ClientID     string
	ClientSecret string
	Username     string
	Password     string
	ClientAuth   string
	Body         string
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
// It never quotes a secret.
func (c Config) Validate() error {
	if c.TokenURL == "" {
		return fmt.Errorf("token_url is required (or a provider preset)")
	}
	if err := CheckURL("token_url", c.TokenURL, c.AllowHTTP); err != nil {
		return err
	}
	switch c.Grant {
	case ClientCredentials:
		id, secret := c.clientCredentials()
		if id == "" {
			return fmt.Errorf("grant client_credentials needs client_id (or username)")
		}
		if secret == "" && c.ClientAuth != AuthNone {
			return fmt.Errorf("grant client_credentials needs client_secret (or password)")
		}
	case Password:
		if c.Username == "" || c.Password == "" {
			return fmt.Errorf("grant password needs username and password")
		}
		if c.ClientAuth != AuthNone && (c.ClientID == "" || c.ClientSecret == "") {
			return fmt.Errorf("grant password with client_auth %s needs client_id and client_secret", c.ClientAuth)
		}
	case "":
		return fmt.Errorf("grant is required (client_credentials or password)")
	default:
		return fmt.Errorf("unknown grant %q (want client_credentials or password)", c.Grant)
	}
	if !slices.Contains([]string{AuthBasic, AuthBody, AuthNone}, c.ClientAuth) {
		return fmt.Errorf("unknown client_auth %q (want basic, body or none)", c.ClientAuth)
	}
	if !slices.Contains([]string{BodyForm, BodyJSON}, c.Body) {
		return fmt.Errorf("unknown body %q (want form or json)", c.Body)
	}
	for name := range c.Params {
		if reservedParams[name] {
			return fmt.Errorf("param %q is set by the module itself", name)
		}
	}
	for name := range c.Headers {
		if strings.EqualFold(name, "Content-Type") || (strings.EqualFold(name, "Authorization") && c.ClientAuth == AuthBasic) {
			return fmt.Errorf("token_header %q is set by the module itself", name)
		}
	}
	if c.DefaultTTL < 0 {
		return fmt.Errorf("default_ttl must not be negative")
	}
	return nil
}

// reservedParams are the body fields the module writes itself.
var reservedParams = map[string]bool{
	"grant_type": true, "client_id": true, "client_secret": true, "username": true,
	"password": true, "scope": true, "audience": true, "refresh_token": true,
}

// CheckURL checks that raw is an absolute https URL, or http on a loopback
// host or when allowHTTP is set. what names the setting in the error.
func CheckURL(what, raw string, allowHTTP bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		// A *url.Error quotes the whole URL, userinfo and all: keep the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
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
		if !allowHTTP && !IsLoopback(u.Hostname()) {
			return fmt.Errorf("%s: http:// is only allowed for a loopback host; use https:// or set allow_http", what)
		}
	default:
		return fmt.Errorf("%s: scheme %q is not supported (want https)", what, u.Scheme)
	}
	return nil
}

// IsLoopback reports whether host names this machine: localhost or a loopback
// address.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Preset holds the settings a provider's name fills in.
type Preset struct {
	TokenURL   string
	Grant      string
	ClientAuth string
	Body       string
	LogoutURL  string
}

// Presets are the providers this module knows by name.
var Presets = map[string]Preset{
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

// PresetNames lists the presets, sorted, for error messages.
func PresetNames() []string {
	names := make([]string, 0, len(Presets))
	for n := range Presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
