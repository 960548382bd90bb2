package grants

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// Distinctive secret values: no error message may ever contain them.
const (
	secretClient   = "CLIENTSECRET-q7Zx9Lw2"
	secretPassword = "OWNERPASSWORD-m4Kp8Rt6"
)

// validConfig is a config that passes Validate; tests change one thing.
func validConfig() Config {
	return Config{
		TokenURL:     "https://auth.example.com/oauth/token",
		Grant:        ClientCredentials,
		ClientID:     "client-id",
		ClientSecret: secretClient,
		Username:     "owner",
		Password:     secretPassword,
		ClientAuth:   AuthBasic,
		Body:         BodyForm,
		DefaultTTL:   5 * time.Minute,
	}
}

// assertNoSecret fails when msg contains a secret value.
func assertNoSecret(t *testing.T, msg string, secrets ...string) {
	t.Helper()
	for _, s := range append([]string{secretClient, secretPassword}, secrets...) {
		if s != "" && strings.Contains(msg, s) {
			t.Errorf("error message contains secret %q: %s", s, msg)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(c *Config)
		wantErr string // "" means valid
	}{
		{"valid basic form", func(c *Config) {}, ""},
		{"valid body json", func(c *Config) { c.ClientAuth = AuthBody; c.Body = BodyJSON }, ""},
		{"missing token_url", func(c *Config) { c.TokenURL = "" }, "token_url is required"},
		{"http non-loopback refused", func(c *Config) { c.TokenURL = "http://auth.example.com/token" }, "http:// is only allowed for a loopback host"},
		{"http non-loopback with allow_http", func(c *Config) { c.TokenURL = "http://auth.example.com/token"; c.AllowHTTP = true }, ""},
		{"http 127.0.0.1", func(c *Config) { c.TokenURL = "http://127.0.0.1:8080/token" }, ""},
		{"http ::1", func(c *Config) { c.TokenURL = "http://[::1]:8080/token" }, ""},
		{"http localhost", func(c *Config) { c.TokenURL = "http://localhost/token" }, ""},
		{"ftp refused", func(c *Config) { c.TokenURL = "ftp://auth.example.com/token" }, `scheme "ftp" is not supported`},
		{"ftp refused even with allow_http", func(c *Config) { c.TokenURL = "ftp://auth.example.com/token"; c.AllowHTTP = true }, `scheme "ftp" is not supported`},
		{"relative URL", func(c *Config) { c.TokenURL = "auth.example.com/token" }, "not an absolute URL with a host"},
		{"userinfo with secret", func(c *Config) { c.TokenURL = "https://client-id:" + secretClient + "@auth.example.com/token" }, "credentials in the URL are not allowed"},
		{"userinfo user only", func(c *Config) { c.TokenURL = "https://client-id@auth.example.com/token" }, "credentials in the URL are not allowed"},
		{"malformed URL carrying secret", func(c *Config) { c.TokenURL = "https://client-id:" + secretClient + "@auth.example.com:bad/token" }, "token_url: malformed URL"},
		{"userinfo with empty host", func(c *Config) { c.TokenURL = "https://user:" + secretClient + "@/token" }, "token_url:"},
		{"opaque URL carrying secret", func(c *Config) { c.TokenURL = "https:user:" + secretPassword + "@auth.example.com" }, "token_url:"},
		{"missing grant", func(c *Config) { c.Grant = "" }, "grant is required"},
		{"unknown grant", func(c *Config) { c.Grant = "authorization_code" }, `unknown grant "authorization_code"`},
		{"refresh_token is not a configurable grant", func(c *Config) { c.Grant = RefreshToken }, `unknown grant "refresh_token"`},
		{"client_credentials without any id", func(c *Config) { c.ClientID = ""; c.ClientSecret = ""; c.Username = "" }, "needs client_id (or username)"},
		{"client_credentials id without secret", func(c *Config) { c.ClientSecret = "" }, "needs client_secret (or password)"},
		{"client_credentials username without password", func(c *Config) { c.ClientID = ""; c.ClientSecret = ""; c.Password = "" }, "needs client_secret (or password)"},
		{"client_credentials username/password stand in", func(c *Config) { c.ClientID = ""; c.ClientSecret = "" }, ""},
		{"client_credentials none without secret", func(c *Config) { c.ClientSecret = ""; c.ClientAuth = AuthNone }, ""},
		{"password grant valid", func(c *Config) { c.Grant = Password }, ""},
		{"password grant without username", func(c *Config) { c.Grant = Password; c.Username = "" }, "grant password needs username and password"},
		{"password grant without password", func(c *Config) { c.Grant = Password; c.Password = "" }, "grant password needs username and password"},
		{"password grant basic without client_secret", func(c *Config) { c.Grant = Password; c.ClientSecret = "" }, "needs client_id and client_secret"},
		{"password grant body without client_id", func(c *Config) { c.Grant = Password; c.ClientAuth = AuthBody; c.ClientID = "" }, "needs client_id and client_secret"},
		{"password grant none without client", func(c *Config) { c.Grant = Password; c.ClientAuth = AuthNone; c.ClientID = ""; c.ClientSecret = "" }, ""},
		{"unknown client_auth", func(c *Config) { c.ClientAuth = "header" }, `unknown client_auth "header"`},
		{"empty client_auth", func(c *Config) { c.ClientAuth = "" }, `unknown client_auth ""`},
		{"unknown body", func(c *Config) { c.Body = "xml" }, `unknown body "xml"`},
		{"empty body", func(c *Config) { c.Body = "" }, `unknown body ""`},
		{"reserved param client_secret", func(c *Config) { c.Params = map[string]string{"client_secret": secretClient} }, `param "client_secret" is set by the module itself`},
		{"reserved param grant_type", func(c *Config) { c.Params = map[string]string{"grant_type": "x"} }, `param "grant_type" is set by the module itself`},
		{"free param", func(c *Config) { c.Params = map[string]string{"resource": "https://api.example.com"} }, ""},
		{"header Content-Type reserved", func(c *Config) { c.Headers = map[string]string{"content-type": "text/plain"} }, `token_header "content-type" is set by the module itself`},
		{"header Authorization reserved with basic", func(c *Config) { c.Headers = map[string]string{"Authorization": "Bearer " + secretClient} }, `token_header "Authorization" is set by the module itself`},
		{"header Authorization free with body auth", func(c *Config) {
			c.ClientAuth = AuthBody
			c.Headers = map[string]string{"Authorization": "Bearer " + secretClient}
		}, ""},
		{"negative default_ttl", func(c *Config) { c.DefaultTTL = -time.Second }, "default_ttl must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %q, want it to contain %q", err, tt.wantErr)
			}
			assertNoSecret(t, err.Error())
		})
	}
}

func TestCheckURL(t *testing.T) {
	tests := []struct {
		raw       string
		allowHTTP bool
		wantErr   string // "" means accepted
	}{
		{"https://api.1nce.com/management-api/oauth/token", false, ""},
		{"https://10.0.0.1:8443/token", false, ""},
		{"http://127.0.0.1/token", false, ""},
		{"http://127.0.0.1:9999/token", false, ""},
		{"http://127.0.0.53/token", false, ""},
		{"http://[::1]/token", false, ""},
		{"http://[::1]:9999/token", false, ""},
		{"http://localhost:9999/token", false, ""},
		{"http://LocalHost/token", false, ""},
		{"HTTP://127.0.0.1/token", false, ""},
		{"http://example.com/token", false, "http:// is only allowed for a loopback host"},
		{"http://10.0.0.1/token", false, "http:// is only allowed for a loopback host"},
		{"http://0.0.0.0/token", false, "http:// is only allowed for a loopback host"},
		{"http://localhost.example.com/token", false, "http:// is only allowed for a loopback host"},
		{"http://127.0.0.1.nip.io/token", false, "http:// is only allowed for a loopback host"},
		{"http://example.com/token", true, ""},
		{"ftp://example.com/token", false, `scheme "ftp" is not supported`},
		{"ws://127.0.0.1/token", true, `scheme "ws" is not supported`},
		{"file:///etc/passwd", false, "not an absolute URL with a host"},
		{"//example.com/token", false, `scheme "" is not supported`},
		{"example.com/token", false, "not an absolute URL with a host"},
		{"/oauth/token", false, "not an absolute URL with a host"},
		{"", false, "not an absolute URL with a host"},
		{"https://", false, "not an absolute URL with a host"},
		{"https://:443/token", false, "not an absolute URL with a host"},
		{"https://user:" + secretClient + "@example.com/token", false, "credentials in the URL are not allowed"},
		{"http://user:" + secretClient + "@127.0.0.1/token", false, "credentials in the URL are not allowed"},
		{"https://user:" + secretClient + "@example.com:port/token", false, "malformed URL"},
		{"https://us er:" + secretClient + "@example.com/token", false, "malformed URL"},
		{"https://user:" + secretClient + "@/token", false, "logout_url:"},
		{"https:user:" + secretClient + "@example.com", false, "logout_url:"},
		{"https://example.com/token\n", false, "malformed URL"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			err := CheckURL("logout_url", tt.raw, tt.allowHTTP)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckURL(%q) = %v, want nil", tt.raw, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckURL(%q) = nil, want error containing %q", tt.raw, tt.wantErr)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "logout_url: ") {
				t.Errorf("error %q does not name the setting", msg)
			}
			if !strings.Contains(msg, tt.wantErr) {
				t.Errorf("CheckURL(%q) = %q, want it to contain %q", tt.raw, msg, tt.wantErr)
			}
			assertNoSecret(t, msg)
		})
	}
}

func TestLoopback(t *testing.T) {
	tests := map[string]bool{
		"localhost":          true,
		"LOCALHOST":          true,
		"api.localhost":      true,
		"127.0.0.1":          true,
		"127.255.0.9":        true,
		"::1":                true,
		"::ffff:127.0.0.1":   true,
		"":                   false,
		"0.0.0.0":            false,
		"::":                 false,
		"10.0.0.1":           false,
		"example.com":        false,
		"localhost.evil.com": false,
		"notlocalhost":       false,
		"127.1":              false,
		"[::1]":              false,
	}
	for host, want := range tests {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", host, got, want)
		}
	}
}

// TestPresets pins each preset to the provider's documentation and the
// product's preset table.
func TestPresets(t *testing.T) {
	want := map[string]Preset{
		"1nce":       {"https://api.1nce.com/management-api/oauth/token", ClientCredentials, AuthBasic, BodyJSON, ""},
		"oneio":      {"https://receiver-authz.service-flow.com/oauth2/token", ClientCredentials, AuthBody, BodyForm, ""},
		"oneio_test": {"https://receiver-authz-test.service-flow.com/oauth2/token", ClientCredentials, AuthBody, BodyForm, ""},
		"telenor":    {"https://api.telenor.no/oauth/v2/token", Password, AuthBasic, BodyForm, "https://api.telenor.no/oauth/v2/logout"},
	}
	if len(presets) != len(want) {
		t.Errorf("presets has %d entries, want %d", len(presets), len(want))
	}
	for name, w := range want {
		p, ok := presets[name]
		if !ok {
			t.Errorf("preset %q missing", name)
			continue
		}
		if p != w {
			t.Errorf("preset %q = %+v, want %+v", name, p, w)
		}
		if err := CheckURL("token_url", p.TokenURL, false); err != nil {
			t.Errorf("preset %q token_url: %v", name, err)
		}
		if p.LogoutURL != "" {
			if err := CheckURL("logout_url", p.LogoutURL, false); err != nil {
				t.Errorf("preset %q logout_url: %v", name, err)
			}
		}
		// A preset with its credentials is a valid config.
		c := presetConfig(name, p.TokenURL)
		if err := c.Validate(); err != nil {
			t.Errorf("preset %q with credentials: Validate() = %v", name, err)
		}
	}
	if got, wantNames := PresetNames(), []string{"1nce", "oneio", "oneio_test", "telenor"}; !slices.Equal(got, wantNames) {
		t.Errorf("PresetNames() = %v, want %v", got, wantNames)
	}
}

// presetConfig is the config a preset gives, with the credentials its
// provider uses, pointed at tokenURL.
func presetConfig(name, tokenURL string) Config {
	p := presets[name]
	c := Config{
		TokenURL:   tokenURL,
		Grant:      p.Grant,
		ClientAuth: p.ClientAuth,
		Body:       p.Body,
		DefaultTTL: 5 * time.Minute,
	}
	switch name {
	case "1nce", "oneio", "oneio_test":
		// The API user's name and password stand in for client_id/secret.
		c.Username = "api-user"
		c.Password = secretPassword
	case "telenor":
		c.ClientID = "xhdrs6uleK1xyZBO"
		c.ClientSecret = secretClient
		c.Username = "api7813371375"
		c.Password = secretPassword
	}
	return c
}

// presetPath is the path of a preset's token URL.
func presetPath(t *testing.T, name string) string {
	t.Helper()
	u, err := url.Parse(presets[name].TokenURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Path
}

func TestNewClientValidates(t *testing.T) {
	c := validConfig()
	c.Grant = "implicit"
	if _, err := NewClient(c, NewHTTPClient(nil)); err == nil {
		t.Fatal("NewClient accepted an invalid config")
	} else {
		assertNoSecret(t, err.Error())
	}
}

// TestNewClientNilHTTPClient: a nil *http.Client takes the default
// transport (it panicked before); the client still talks to the endpoint.
func TestNewClientNilHTTPClient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"nil-client-token","token_type":"bearer","expires_in":60}`)
	}))
	defer srv.Close()
	c := validConfig()
	c.TokenURL = srv.URL + "/token"
	cl, err := NewClient(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cl.Token(context.Background())
	if err != nil || tok.AccessToken != "nil-client-token" {
		t.Fatalf("Token with a nil http.Client: %v, %v", tok, err)
	}
}

func TestTokenRedacted(t *testing.T) {
	tok := &Token{AccessToken: "ACCESS-abcdefghijkl", RefreshToken: "REFRESH-mnopqrstuv", Lifetime: time.Hour}
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		for _, arg := range []any{tok, *tok} {
			got := fmt.Sprintf(format, arg)
			if strings.Contains(got, "abcdefghijkl") || strings.Contains(got, "mnopqrstuv") {
				t.Errorf("Sprintf(%q, %T) = %q shows a token", format, arg, got)
			}
		}
	}
}
