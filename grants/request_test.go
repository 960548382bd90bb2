package grants

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorded is one request as a test server received it.
type recorded struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
	Body     []byte
}

// server is an httptest server on 127.0.0.1 that records every request
// before handing it to its handler (whose r.Body holds the body again).
type server struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

func (s *server) requests() []recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]recorded(nil), s.reqs...)
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on 127.0.0.1: %v", err)
	}
	return ln
}

func newServer(t *testing.T, h http.HandlerFunc) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.reqs = append(s.reqs, recorded{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), body})
		s.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		if h != nil {
			h(w, r)
		}
	}))
	s.Listener.Close()
	s.Listener = listenLoopback(t)
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// respond answers every request with status, Content-Type and body.
func respond(status int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

const sampleToken = "tok-0123456789abcdefXYZ"

var okAnswer = respond(200, "application/json", `{"access_token":"`+sampleToken+`","token_type":"Bearer","expires_in":3600}`)

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := NewClient(cfg, NewHTTPClient(nil))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c
}

// capture sends one request with call against a recording server at path
// and returns what the server received.
func capture(t *testing.T, cfg Config, path string, call func(context.Context, *Client) (*Token, error)) recorded {
	t.Helper()
	s := newServer(t, okAnswer)
	cfg.TokenURL = s.URL + path
	c := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := call(ctx, c)
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	if tok.AccessToken != sampleToken {
		t.Errorf("AccessToken = %q, want %q", tok.AccessToken, sampleToken)
	}
	reqs := s.requests()
	if len(reqs) != 1 {
		t.Fatalf("server got %d requests, want 1", len(reqs))
	}
	return reqs[0]
}

func grantCall(ctx context.Context, c *Client) (*Token, error) { return c.Token(ctx) }

// basicAuth decodes the request's Basic credentials, checking the header's
// exact form.
func basicAuth(t *testing.T, h http.Header) (id, secret string, ok bool) {
	t.Helper()
	v := h.Values("Authorization")
	if len(v) == 0 {
		return "", "", false
	}
	if len(v) > 1 {
		t.Errorf("%d Authorization headers", len(v))
	}
	enc, found := strings.CutPrefix(v[0], "Basic ")
	if !found {
		t.Fatalf("Authorization = %q, want Basic", v[0])
	}
	raw, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		t.Fatalf("Authorization Basic is not base64: %v", err)
	}
	id, secret, found = strings.Cut(string(raw), ":")
	if !found {
		t.Fatalf("Basic credentials have no colon")
	}
	return id, secret, true
}

// bodyFields decodes a form or JSON body into its fields, checking the
// Content-Type and that every JSON value is a string.
func bodyFields(t *testing.T, r recorded) map[string]string {
	t.Helper()
	fields := map[string]string{}
	switch ct := r.Header.Get("Content-Type"); ct {
	case "application/x-www-form-urlencoded":
		vals, err := url.ParseQuery(string(r.Body))
		if err != nil {
			t.Fatalf("form body %q: %v", r.Body, err)
		}
		for k, v := range vals {
			if len(v) != 1 {
				t.Errorf("form field %q sent %d times", k, len(v))
			}
			fields[k] = v[0]
		}
	case "application/json":
		var obj map[string]any
		if err := json.Unmarshal(r.Body, &obj); err != nil {
			t.Fatalf("JSON body %q: %v", r.Body, err)
		}
		for k, v := range obj {
			s, ok := v.(string)
			if !ok {
				t.Errorf("JSON field %q is %T, want string", k, v)
			}
			fields[k] = s
		}
	default:
		t.Fatalf("Content-Type = %q", ct)
	}
	return fields
}

func assertFields(t *testing.T, got, want map[string]string) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("body field %q missing, want %q", k, w)
		} else if g != w {
			t.Errorf("body field %q = %q, want %q", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected body field %q = %q", k, g)
		}
	}
}

// assertCommon checks what every token request has.
func assertCommon(t *testing.T, r recorded, path string) {
	t.Helper()
	if r.Method != http.MethodPost {
		t.Errorf("method = %s, want POST", r.Method)
	}
	if r.Path != path {
		t.Errorf("path = %q, want %q", r.Path, path)
	}
	if r.RawQuery != "" {
		t.Errorf("query = %q, want none (credentials never go in the URL)", r.RawQuery)
	}
	if got := r.Header.Values("Accept"); len(got) != 1 || got[0] != "application/json" {
		t.Errorf("Accept = %q, want application/json", got)
	}
}

// TestRequestShapePresets checks each preset's request against what its
// provider documents.
func TestRequestShapePresets(t *testing.T) {
	tests := []struct {
		name      string
		preset    string
		mod       func(*Config)
		wantCT    string
		wantBasic []string // id, secret; nil: no Authorization header
		wantBody  string   // exact body, if set
		wantForm  map[string]string
	}{
		{
			name:      "1nce JSON grant_type only, Basic username:password",
			preset:    "1nce",
			wantCT:    "application/json",
			wantBasic: []string{"api-user", secretPassword},
			wantBody:  `{"grant_type":"client_credentials"}`,
			wantForm:  map[string]string{"grant_type": "client_credentials"},
		},
		{
			name:     "oneio form with client_id/client_secret, no Authorization",
			preset:   "oneio",
			wantCT:   "application/x-www-form-urlencoded",
			wantBody: "grant_type=client_credentials&client_id=api-user&client_secret=" + url.QueryEscape(secretPassword),
			wantForm: map[string]string{"grant_type": "client_credentials", "client_id": "api-user", "client_secret": secretPassword},
		},
		{
			name:     "oneio_test same as oneio",
			preset:   "oneio_test",
			wantCT:   "application/x-www-form-urlencoded",
			wantForm: map[string]string{"grant_type": "client_credentials", "client_id": "api-user", "client_secret": secretPassword},
		},
		{
			name:      "telenor password grant, Basic client_id:client_secret",
			preset:    "telenor",
			wantCT:    "application/x-www-form-urlencoded",
			wantBasic: []string{"xhdrs6uleK1xyZBO", secretClient},
			wantForm:  map[string]string{"grant_type": "password", "username": "api7813371375", "password": secretPassword},
		},
		{
			name:      "telenor with optional scope",
			preset:    "telenor",
			mod:       func(c *Config) { c.Scopes = []string{"subscription.read", "order.write"} },
			wantCT:    "application/x-www-form-urlencoded",
			wantBasic: []string{"xhdrs6uleK1xyZBO", secretClient},
			wantForm:  map[string]string{"grant_type": "password", "username": "api7813371375", "password": secretPassword, "scope": "subscription.read order.write"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := presetConfig(tt.preset, "")
			if tt.mod != nil {
				tt.mod(&cfg)
			}
			path := presetPath(t, tt.preset)
			r := capture(t, cfg, path, grantCall)
			assertCommon(t, r, path)
			if ct := r.Header.Get("Content-Type"); ct != tt.wantCT {
				t.Errorf("Content-Type = %q, want %q", ct, tt.wantCT)
			}
			id, secret, ok := basicAuth(t, r.Header)
			switch {
			case tt.wantBasic == nil && ok:
				t.Errorf("Authorization header sent, want none")
			case tt.wantBasic != nil && !ok:
				t.Errorf("no Authorization header, want Basic")
			case tt.wantBasic != nil && (id != tt.wantBasic[0] || secret != tt.wantBasic[1]):
				t.Errorf("Basic = %q:%q, want %q:%q", id, secret, tt.wantBasic[0], tt.wantBasic[1])
			}
			if tt.wantBody != "" && string(r.Body) != tt.wantBody {
				t.Errorf("body = %q, want exactly %q", r.Body, tt.wantBody)
			}
			assertFields(t, bodyFields(t, r), tt.wantForm)
			if tt.wantCT == "application/x-www-form-urlencoded" && !strings.HasPrefix(string(r.Body), "grant_type=") {
				t.Errorf("body %q does not start with grant_type", r.Body)
			}
		})
	}
}

// TestRequestOptions covers the settings beyond the presets.
func TestRequestOptions(t *testing.T) {
	base := func(grant GrantType, auth AuthMethod, body BodyEncoding) Config {
		return Config{Grant: grant, ClientID: "cid", ClientSecret: secretClient, Username: "owner", Password: secretPassword, ClientAuth: auth, Body: body}
	}
	tests := []struct {
		name        string
		cfg         Config
		mod         func(*Config)
		wantFields  map[string]string
		wantBasic   []string
		wantHeaders map[string]string
	}{
		{
			name:       "client_auth none sends client_id only, never the secret",
			cfg:        base(ClientCredentials, AuthNone, BodyForm),
			wantFields: map[string]string{"grant_type": "client_credentials", "client_id": "cid"},
		},
		{
			name:       "client_auth none without secret",
			cfg:        base(ClientCredentials, AuthNone, BodyJSON),
			mod:        func(c *Config) { c.ClientSecret = "" },
			wantFields: map[string]string{"grant_type": "client_credentials", "client_id": "cid"},
		},
		{
			name:       "client_auth none password grant with client_id",
			cfg:        base(Password, AuthNone, BodyForm),
			wantFields: map[string]string{"grant_type": "password", "username": "owner", "password": secretPassword, "client_id": "cid"},
		},
		{
			name:       "client_auth none password grant without client",
			cfg:        base(Password, AuthNone, BodyForm),
			mod:        func(c *Config) { c.ClientID = ""; c.ClientSecret = "" },
			wantFields: map[string]string{"grant_type": "password", "username": "owner", "password": secretPassword},
		},
		{
			name:       "password grant with body auth",
			cfg:        base(Password, AuthBody, BodyForm),
			wantFields: map[string]string{"grant_type": "password", "username": "owner", "password": secretPassword, "client_id": "cid", "client_secret": secretClient},
		},
		{
			name:       "password grant JSON with basic",
			cfg:        base(Password, AuthBasic, BodyJSON),
			wantFields: map[string]string{"grant_type": "password", "username": "owner", "password": secretPassword},
			wantBasic:  []string{"cid", secretClient},
		},
		{
			name:       "client_credentials: client_id wins over username, no username/password fields",
			cfg:        base(ClientCredentials, AuthBasic, BodyForm),
			wantFields: map[string]string{"grant_type": "client_credentials"},
			wantBasic:  []string{"cid", secretClient},
		},
		{
			name:       "client_credentials: username/password stand in, basic",
			cfg:        base(ClientCredentials, AuthBasic, BodyForm),
			mod:        func(c *Config) { c.ClientID = ""; c.ClientSecret = "" },
			wantFields: map[string]string{"grant_type": "client_credentials"},
			wantBasic:  []string{"owner", secretPassword},
		},
		{
			name:       "client_credentials: username/password stand in, body JSON",
			cfg:        base(ClientCredentials, AuthBody, BodyJSON),
			mod:        func(c *Config) { c.ClientID = ""; c.ClientSecret = "" },
			wantFields: map[string]string{"grant_type": "client_credentials", "client_id": "owner", "client_secret": secretPassword},
		},
		{
			name:       "scopes joined by spaces, form",
			cfg:        base(ClientCredentials, AuthBody, BodyForm),
			mod:        func(c *Config) { c.Scopes = []string{"read", "write", "admin:all"} },
			wantFields: map[string]string{"grant_type": "client_credentials", "client_id": "cid", "client_secret": secretClient, "scope": "read write admin:all"},
		},
		{
			name:       "scopes joined by spaces, JSON",
			cfg:        base(ClientCredentials, AuthBasic, BodyJSON),
			mod:        func(c *Config) { c.Scopes = []string{"read", "write"} },
			wantFields: map[string]string{"grant_type": "client_credentials", "scope": "read write"},
			wantBasic:  []string{"cid", secretClient},
		},
		{
			name:       "audience",
			cfg:        base(ClientCredentials, AuthBasic, BodyForm),
			mod:        func(c *Config) { c.Audience = "https://api.example.com/" },
			wantFields: map[string]string{"grant_type": "client_credentials", "audience": "https://api.example.com/"},
			wantBasic:  []string{"cid", secretClient},
		},
		{
			name: "extra params, form",
			cfg:  base(ClientCredentials, AuthBasic, BodyForm),
			mod: func(c *Config) {
				c.Params = map[string]string{"resource": "https://api.example.com/v1?a=b&c=d", "tenant": "t 1"}
			},
			wantFields: map[string]string{"grant_type": "client_credentials", "resource": "https://api.example.com/v1?a=b&c=d", "tenant": "t 1"},
			wantBasic:  []string{"cid", secretClient},
		},
		{
			name: "everything, JSON",
			cfg:  base(Password, AuthBody, BodyJSON),
			mod: func(c *Config) {
				c.Scopes = []string{"a", "b"}
				c.Audience = "aud"
				c.Params = map[string]string{"resource": "r", "x-extra": `quote" & <tag>`}
			},
			wantFields: map[string]string{
				"grant_type": "password", "username": "owner", "password": secretPassword,
				"client_id": "cid", "client_secret": secretClient,
				"scope": "a b", "audience": "aud", "resource": "r", "x-extra": `quote" & <tag>`,
			},
		},
		{
			name:        "token headers",
			cfg:         base(ClientCredentials, AuthBasic, BodyForm),
			mod:         func(c *Config) { c.Headers = map[string]string{"X-Api-Key": "key-1", "x-tenant": "t1"} },
			wantFields:  map[string]string{"grant_type": "client_credentials"},
			wantBasic:   []string{"cid", secretClient},
			wantHeaders: map[string]string{"X-Api-Key": "key-1", "X-Tenant": "t1"},
		},
		{
			name:        "token header Authorization with body auth",
			cfg:         base(ClientCredentials, AuthBody, BodyForm),
			mod:         func(c *Config) { c.Headers = map[string]string{"Authorization": "ApiKey gateway-key"} },
			wantFields:  map[string]string{"grant_type": "client_credentials", "client_id": "cid", "client_secret": secretClient},
			wantHeaders: map[string]string{"Authorization": "ApiKey gateway-key"},
		},
		{
			name:        "token header cannot override Accept",
			cfg:         base(ClientCredentials, AuthBasic, BodyForm),
			mod:         func(c *Config) { c.Headers = map[string]string{"Accept": "text/html"} },
			wantFields:  map[string]string{"grant_type": "client_credentials"},
			wantBasic:   []string{"cid", secretClient},
			wantHeaders: map[string]string{"Accept": "application/json"},
		},
		{
			name:       "special characters in credentials survive encoding, form",
			cfg:        base(ClientCredentials, AuthBody, BodyForm),
			mod:        func(c *Config) { c.ClientID = "id with space+plus"; c.ClientSecret = "s3c:r&t=%20ü/?#" },
			wantFields: map[string]string{"grant_type": "client_credentials", "client_id": "id with space+plus", "client_secret": "s3c:r&t=%20ü/?#"},
		},
		{
			name:       "special characters in credentials survive encoding, JSON",
			cfg:        base(Password, AuthBasic, BodyJSON),
			mod:        func(c *Config) { c.Password = `p"a\ss<>&ü`; c.ClientSecret = "sec:ret ü" },
			wantFields: map[string]string{"grant_type": "password", "username": "owner", "password": `p"a\ss<>&ü`},
			wantBasic:  []string{"cid", "sec:ret ü"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if tt.mod != nil {
				tt.mod(&cfg)
			}
			r := capture(t, cfg, "/oauth/token", grantCall)
			assertCommon(t, r, "/oauth/token")
			wantCT := map[BodyEncoding]string{BodyForm: "application/x-www-form-urlencoded", BodyJSON: "application/json"}[cfg.Body]
			if ct := r.Header.Get("Content-Type"); ct != wantCT {
				t.Errorf("Content-Type = %q, want %q", ct, wantCT)
			}
			assertFields(t, bodyFields(t, r), tt.wantFields)
			if _, custom := tt.wantHeaders["Authorization"]; !custom {
				id, secret, ok := basicAuth(t, r.Header)
				switch {
				case tt.wantBasic == nil && ok:
					t.Errorf("Authorization header sent, want none")
				case tt.wantBasic != nil && !ok:
					t.Errorf("no Authorization header, want Basic")
				case tt.wantBasic != nil && (id != tt.wantBasic[0] || secret != tt.wantBasic[1]):
					t.Errorf("Basic = %q:%q, want %q:%q", id, secret, tt.wantBasic[0], tt.wantBasic[1])
				}
			}
			for name, want := range tt.wantHeaders {
				if got := r.Header.Values(name); len(got) != 1 || got[0] != want {
					t.Errorf("header %s = %q, want %q", name, got, want)
				}
			}
			if cfg.ClientAuth == AuthNone && cfg.ClientSecret != "" && strings.Contains(string(r.Body), url.QueryEscape(cfg.ClientSecret)) {
				t.Errorf("client_auth none sent the client secret")
			}
		})
	}
}

// TestRefreshRequest checks the refresh_token grant's fields under each client
// authentication and body encoding.
func TestRefreshRequest(t *testing.T) {
	for _, auth := range []AuthMethod{AuthBasic, AuthBody, AuthNone} {
		for _, body := range []BodyEncoding{BodyForm, BodyJSON} {
			t.Run(string(auth)+"/"+string(body), func(t *testing.T) {
				cfg := presetConfig("telenor", "")
				cfg.ClientAuth, cfg.Body = auth, body
				cfg.Scopes = []string{"ignored-on-refresh"}
				r := capture(t, cfg, "/oauth/v2/token", func(ctx context.Context, c *Client) (*Token, error) {
					return c.Refresh(ctx, "9XXQ3tOnMY3BRo0QyVFJUiN")
				})
				assertCommon(t, r, "/oauth/v2/token")
				want := map[string]string{"grant_type": "refresh_token", "refresh_token": "9XXQ3tOnMY3BRo0QyVFJUiN"}
				switch auth {
				case AuthBody:
					want["client_id"], want["client_secret"] = cfg.ClientID, cfg.ClientSecret
				case AuthNone:
					want["client_id"] = cfg.ClientID
				}
				assertFields(t, bodyFields(t, r), want)
				id, secret, ok := basicAuth(t, r.Header)
				if auth == AuthBasic {
					if !ok || id != cfg.ClientID || secret != cfg.ClientSecret {
						t.Errorf("Basic = %q:%q (%v), want client_id:client_secret", id, secret, ok)
					}
				} else if ok {
					t.Errorf("Authorization header sent with client_auth %s", auth)
				}
			})
		}
	}
}

// TestGrantRequestWithoutServer checks the request builder on its own.
func TestGrantRequestWithoutServer(t *testing.T) {
	c := newClient(t, presetConfig("1nce", presets["1nce"].TokenURL))
	fields, _ := c.grantFields(c.cfg.TokenURL)
	req, err := c.newRequest(context.Background(), c.cfg.TokenURL, fields)
	if err != nil {
		t.Fatal(err)
	}
	if req.Method != http.MethodPost || req.URL.String() != presets["1nce"].TokenURL {
		t.Errorf("request = %s %s", req.Method, req.URL)
	}
	body, _ := io.ReadAll(req.Body)
	if string(body) != `{"grant_type":"client_credentials"}` {
		t.Errorf("body = %q", body)
	}
	if req.ContentLength != int64(len(body)) {
		t.Errorf("ContentLength = %d, want %d", req.ContentLength, len(body))
	}
	if id, secret, ok := req.BasicAuth(); !ok || id != "api-user" || secret != secretPassword {
		t.Errorf("BasicAuth = %q:%q %v", id, secret, ok)
	}
	if req.Header.Get("Content-Type") != "application/json" || req.Header.Get("Accept") != "application/json" {
		t.Errorf("headers = %v", req.Header)
	}
}

// TestClientToken checks a token obtained over the wire: fields, and that
// Obtained is taken before the request is sent.
func TestClientToken(t *testing.T) {
	s := newServer(t, respond(200, "application/json;charset=UTF-8", telenorSample))
	cfg := presetConfig("telenor", s.URL+"/oauth/v2/token")
	c := newClient(t, cfg)
	before := time.Now()
	tok, err := c.Token(context.Background())
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "Iu25QXBwbGbljYXRpzQHRIuYlbGVub329XXQ3tOnMY3BRo0QyVFJUiN" {
		t.Errorf("AccessToken = %q", tok.AccessToken)
	}
	if tok.RefreshToken != "9XXQ3tOnMY3BRo0QyVFJUiNIu25QXBwbGbRIuYlbGVub32ljYXRpzQH" {
		t.Errorf("RefreshToken = %q", tok.RefreshToken)
	}
	if tok.Lifetime != time.Hour {
		t.Errorf("Lifetime = %v", tok.Lifetime)
	}
	if tok.Obtained.Before(before) || tok.Obtained.After(after) {
		t.Errorf("Obtained %v not within [%v, %v]", tok.Obtained, before, after)
	}
	if !tok.Expiry.Equal(tok.Obtained.Add(tok.Lifetime)) {
		t.Errorf("Expiry %v != Obtained+Lifetime", tok.Expiry)
	}
}

// TestClientProviderErrors checks that error answers come back as
// *ProviderError in the provider's own words.
func TestClientProviderErrors(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		ct, body  string
		wantCode  string
		wantDesc  string
		wantCreds bool
	}{
		{"1nce bad credentials", 400, "application/json", `{"statusCode":400,"errorCode":"BadCredentials","message":"User does not exist."}`, "BadCredentials", "User does not exist.", true},
		{"telenor invalid owner", 401, "application/json", `{"error_code":20,"error_message":"Invalid resource owner credentials"}`, "20", "Invalid resource owner credentials", true},
		{"rfc6749 invalid_client", 401, "application/json", `{"error":"invalid_client","error_description":"Client authentication failed"}`, "invalid_client", "Client authentication failed", true},
		{"rfc6749 invalid_scope", 403, "application/json", `{"error":"invalid_scope"}`, "invalid_scope", "", true},
		{"plain text 500", 500, "text/plain", "Internal Server Error\n", "", "Internal Server Error", false},
		{"rate limited", 429, "application/json", `{"error":"slow_down"}`, "slow_down", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, respond(tt.status, tt.ct, tt.body))
			c := newClient(t, presetConfig("oneio", s.URL+"/oauth2/token"))
			tok, err := c.Token(context.Background())
			if tok != nil {
				t.Fatalf("got a token from a %d answer", tt.status)
			}
			var pe *ProviderError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T) is not a *ProviderError", err, err)
			}
			if pe.Status != tt.status || pe.Code != tt.wantCode || pe.Description != tt.wantDesc {
				t.Errorf("ProviderError = %+v, want status %d code %q description %q", *pe, tt.status, tt.wantCode, tt.wantDesc)
			}
			if pe.Credentials() != tt.wantCreds {
				t.Errorf("Credentials() = %v, want %v", pe.Credentials(), tt.wantCreds)
			}
			assertNoSecret(t, err.Error())
		})
	}
}

// TestClientNon200WithToken: a token in an answer that is not 200 is not
// used, and the error does not show it.
func TestClientNon200WithToken(t *testing.T) {
	for _, status := range []int{201, 202, 203, 206} {
		s := newServer(t, respond(status, "application/json", `{"access_token":"`+sampleToken+`","expires_in":3600}`))
		c := newClient(t, presetConfig("1nce", s.URL+"/oauth/token"))
		tok, err := c.Token(context.Background())
		if err == nil || tok != nil {
			t.Fatalf("status %d: token %v, err %v; want an error", status, tok, err)
		}
		if strings.Contains(err.Error(), sampleToken) {
			t.Errorf("status %d: error shows the token: %v", status, err)
		}
	}
}

// TestClientBodyLimit: an answer over 1 MiB is refused; one of exactly 1 MiB
// is read.
func TestClientBodyLimit(t *testing.T) {
	tokenJSON := `{"access_token":"` + sampleToken + `","token_type":"bearer","expires_in":3600}`
	pad := func(n int) string { return tokenJSON + strings.Repeat(" ", n-len(tokenJSON)) }
	tests := []struct {
		name   string
		status int
		body   string
		ok     bool
	}{
		{"exactly 1 MiB", 200, pad(MaxBody), true},
		{"1 MiB + 1", 200, pad(MaxBody + 1), false},
		{"4 MiB", 200, pad(4 * MaxBody), false},
		{"error answer over 1 MiB", 400, `{"error":"invalid_request"}` + strings.Repeat(" ", MaxBody), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, respond(tt.status, "application/json", tt.body))
			c := newClient(t, presetConfig("oneio", s.URL+"/oauth2/token"))
			tok, err := c.Token(context.Background())
			if tt.ok {
				if err != nil || tok.AccessToken != sampleToken {
					t.Fatalf("Token() = %v, %v; want the token", tok, err)
				}
				return
			}
			var re *ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T) is not a *ResponseError", err, err)
			}
			if re.Status != tt.status || !strings.Contains(re.Error(), "over 1 MiB") {
				t.Errorf("error = %v (status %d), want over 1 MiB with status %d", re, re.Status, tt.status)
			}
			if strings.Contains(err.Error(), sampleToken) {
				t.Errorf("error shows the token: %v", err)
			}
		})
	}
}

// TestClientRedirectNotFollowed: a redirect from the token endpoint is an
// error, and its target never sees a request (nor the credentials).
func TestClientRedirectNotFollowed(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			target := newServer(t, okAnswer)
			redirector := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/oauth/token", status)
			})
			c := newClient(t, presetConfig("telenor", redirector.URL+"/oauth/v2/token"))
			tok, err := c.Token(context.Background())
			if tok != nil || err == nil {
				t.Fatalf("Token() = %v, %v; want an error", tok, err)
			}
			var re *ResponseError
			if !errors.As(err, &re) || re.Status != status || !strings.Contains(err.Error(), "redirect") {
				t.Errorf("error = %v (%T), want a *ResponseError about a redirect with status %d", err, err, status)
			}
			if n := len(redirector.requests()); n != 1 {
				t.Errorf("token endpoint got %d requests, want 1", n)
			}
			// Logout does not follow redirects either: it would carry the token.
			if err := c.Logout(context.Background(), redirector.URL+"/oauth/v2/logout", &Token{AccessToken: sampleToken}); err == nil {
				t.Errorf("Logout followed or accepted a %d redirect", status)
			}
			if n := len(target.requests()); n != 0 {
				t.Errorf("redirect target got %d requests, want 0", n)
			}
		})
	}
}

// TestClientTimeout: a provider that never answers costs no more than the
// context's deadline.
func TestClientTimeout(t *testing.T) {
	release := make(chan struct{})
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		case <-time.After(30 * time.Second):
		}
	})
	t.Cleanup(func() { close(release) }) // runs before s.Close
	c := newClient(t, presetConfig("1nce", s.URL+"/oauth/token"))

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	tok, err := c.Token(ctx)
	elapsed := time.Since(start)
	if tok != nil || err == nil {
		t.Fatalf("Token() = %v, %v; want a timeout", tok, err)
	}
	if elapsed > 2*time.Second {
		t.Errorf("Token() took %v after a 150ms deadline", elapsed)
	}
	var te *TransportError
	if !errors.As(err, &te) {
		t.Errorf("error %v (%T) is not a *TransportError", err, err)
	} else if !te.Sent {
		t.Errorf("error %v: Sent = false after the server read the request: its refresh token may be used up", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
	}

	ctx2, cancel2 := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel2()
	start = time.Now()
	err = c.Logout(ctx2, s.URL+"/logout", &Token{AccessToken: sampleToken})
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("Logout() = %v after %v, want a prompt timeout", err, time.Since(start))
	}
	if err != nil && strings.Contains(err.Error(), sampleToken) {
		t.Errorf("Logout error shows the token: %v", err)
	}
}

// hijackAndClose drops the connection, with a TCP RST where possible. If
// head is set, it is written first.
func hijackAndClose(head string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		if head != "" {
			buf.WriteString(head)
			buf.Flush()
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		conn.Close()
	}
}

// TestClientConnectionErrors: no answer, a reset, a truncated answer and a
// refused connection are all *TransportError, and none shows the URL's query.
func TestClientConnectionErrors(t *testing.T) {
	closed := listenLoopback(t)
	closedURL := "http://" + closed.Addr().String()
	closed.Close()

	tests := []struct {
		name string
		url  func(t *testing.T) string
		sent bool // the request reached the server: Sent
	}{
		{"reset before answer", func(t *testing.T) string { return newServer(t, hijackAndClose("")).URL }, true},
		{"reset mid-body", func(t *testing.T) string {
			return newServer(t, hijackAndClose("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"access_token\":\"abc")).URL
		}, true},
		{"garbage answer", func(t *testing.T) string { return newServer(t, hijackAndClose("SSH-2.0-OpenSSH\r\n\r\n")).URL }, true},
		{"connection refused", func(t *testing.T) string { return closedURL }, false},
		{"TLS to a plain server", func(t *testing.T) string { return strings.Replace(newServer(t, okAnswer).URL, "http:", "https:", 1) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := presetConfig("oneio", tt.url(t)+"/oauth2/token?api_key=QUERYSECRET-8f3k")
			c := newClient(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			tok, err := c.Token(ctx)
			if tok != nil || err == nil {
				t.Fatalf("Token() = %v, %v; want an error", tok, err)
			}
			var te *TransportError
			if !errors.As(err, &te) {
				t.Errorf("error %v (%T) is not a *TransportError", err, err)
			} else if te.Sent != tt.sent {
				t.Errorf("error %v: Sent = %v, want %v: a refresh token is sent again only after a request that cannot have reached the provider", err, te.Sent, tt.sent)
			}
			if strings.Contains(err.Error(), "QUERYSECRET") {
				t.Errorf("error shows the URL's query: %v", err)
			}
			assertNoSecret(t, err.Error())
		})
	}
}

// TestLogout checks Telenor's logout call: GET with the token as bearer.
func TestLogout(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     string
		wantErr  bool
		wantCode string
	}{
		{"200 OK!", 200, "OK!", false, ""},
		{"204", 204, "", false, ""},
		{"401 invalid token", 401, `{"error_code":2,"error_message":"Invalid access token"}`, true, "2"},
		{"500", 500, "Internal Server Error", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, respond(tt.status, "", tt.body))
			c := newClient(t, presetConfig("telenor", s.URL+"/oauth/v2/token"))
			tok := &Token{AccessToken: "OD4P-logout-tok.en==", Lifetime: time.Hour}
			err := c.Logout(context.Background(), s.URL+"/oauth/v2/logout", tok)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Logout() = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				var pe *ProviderError
				if !errors.As(err, &pe) || pe.Status != tt.status || pe.Code != tt.wantCode {
					t.Errorf("error = %v (%T), want *ProviderError status %d code %q", err, err, tt.status, tt.wantCode)
				}
				if strings.Contains(err.Error(), tok.AccessToken) {
					t.Errorf("error shows the token: %v", err)
				}
			}
			reqs := s.requests()
			if len(reqs) != 1 {
				t.Fatalf("server got %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != http.MethodGet || r.Path != "/oauth/v2/logout" {
				t.Errorf("request = %s %s, want GET /oauth/v2/logout", r.Method, r.Path)
			}
			if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+tok.AccessToken {
				t.Errorf("Authorization = %q, want %q", got, "Bearer "+tok.AccessToken)
			}
			if len(r.Body) != 0 {
				t.Errorf("logout sent a body: %q", r.Body)
			}
		})
	}
}

// TestLogoutConnectionReset: a dropped connection is an error that does not
// show the token.
func TestLogoutConnectionReset(t *testing.T) {
	s := newServer(t, hijackAndClose(""))
	c := newClient(t, presetConfig("telenor", s.URL+"/oauth/v2/token"))
	err := c.Logout(context.Background(), s.URL+"/oauth/v2/logout", &Token{AccessToken: sampleToken})
	if err == nil {
		t.Fatal("Logout() = nil on a reset connection")
	}
	if strings.Contains(err.Error(), sampleToken) {
		t.Errorf("error shows the token: %v", err)
	}
}
