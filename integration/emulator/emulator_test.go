package emulator

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Distinctive credentials, so that a test can tell none leaked into a violation.
const (
	clientID     = "client-4711"
	clientSecret = "cs:Z9q!x s3cret/+="
	ownerName    = "api7813371375"
	ownerPass    = "owner-hquTvfc00l"
)

var secrets = []string{clientSecret, ownerPass}

var tokenShape = regexp.MustCompile(`^[A-Za-z0-9_-]{32,}$`)

func config(kind Kind) Config {
	return Config{Kind: kind, ClientID: clientID, ClientSecret: clientSecret, Username: ownerName, Password: ownerPass}
}

func start(t *testing.T, cfg Config) *Provider {
	t.Helper()
	p := New(cfg)
	p.Start()
	t.Cleanup(p.Close)
	return p
}

// req is a hand-built token request.
type req struct {
	method, path string
	header       http.Header
	body         string
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func form(kv ...string) string {
	v := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v.Encode()
}

// good returns a correctly shaped token request for kind.
func good(kind Kind) req {
	h := http.Header{"Accept": {"application/json"}}
	switch kind {
	case OneNCE:
		h.Set("Authorization", basic(clientID, clientSecret))
		h.Set("Content-Type", "application/json")
		return req{http.MethodPost, OneNCETokenPath, h, `{"grant_type":"client_credentials"}`}
	case ONEiO:
		h.Set("Content-Type", "application/x-www-form-urlencoded")
		return req{http.MethodPost, ONEiOTokenPath, h,
			form("grant_type", "client_credentials", "client_id", clientID, "client_secret", clientSecret)}
	default:
		h.Set("Authorization", basic(clientID, clientSecret))
		h.Set("Content-Type", "application/x-www-form-urlencoded")
		return req{http.MethodPost, TelenorTokenPath, h,
			form("grant_type", "password", "username", ownerName, "password", ownerPass)}
	}
}

type result struct {
	status int
	header http.Header
	raw    string
	json   map[string]any
}

func send(t *testing.T, base string, q req) result {
	t.Helper()
	res, err := do(base, q)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// do is send for goroutines other than the test's own.
func do(base string, q req) (result, error) {
	hr, err := http.NewRequest(q.method, base+q.path, strings.NewReader(q.body))
	if err != nil {
		return result{}, err
	}
	hr.Header = q.header.Clone()
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	res := result{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &res.json); err != nil {
			return res, fmt.Errorf("answer is not JSON: %v: %s", err, b)
		}
	}
	return res, nil
}

// errCode returns the error code of a provider-format error answer, failing
// the test if the answer is not in kind's format.
func errCode(t *testing.T, kind Kind, res result) string {
	t.Helper()
	var keys []string
	switch kind {
	case OneNCE:
		keys = []string{"statusCode", "errorCode", "message"}
	case ONEiO:
		keys = []string{"error", "error_description"}
	default:
		keys = []string{"error_code", "error_message"}
	}
	for _, k := range keys {
		if _, ok := res.json[k]; !ok {
			t.Fatalf("error answer lacks %q (%s format): %d %s", k, kind, res.status, res.raw)
		}
	}
	if kind == OneNCE && res.json["statusCode"] != float64(res.status) {
		t.Errorf("statusCode %v, HTTP status %d", res.json["statusCode"], res.status)
	}
	if kind == OneNCE {
		return fmt.Sprint(res.json["errorCode"])
	}
	return fmt.Sprint(res.json[keys[0]])
}

func noSecrets(t *testing.T, p *Provider) {
	t.Helper()
	for _, v := range p.Violations() {
		for _, s := range secrets {
			if strings.Contains(v, s) {
				t.Errorf("violation carries a secret: %q", v)
			}
		}
	}
}

func TestAcceptsWellFormedRequests(t *testing.T) {
	for _, kind := range []Kind{OneNCE, ONEiO, Telenor} {
		t.Run(string(kind), func(t *testing.T) {
			p := start(t, config(kind))
			res := send(t, p.URL(), good(kind))
			if res.status != http.StatusOK {
				t.Fatalf("status %d: %s (violations %q)", res.status, res.raw, p.Violations())
			}
			if got := res.header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control %q", got)
			}
			var expect map[string]any
			switch kind {
			case OneNCE:
				expect = map[string]any{"status_code": 200.0, "token_type": "bearer", "expires_in": 3600.0, "userId": "user", "scope": "all"}
			case ONEiO:
				expect = map[string]any{"scope": "ROLE_INTEGRATION", "token_type": "Bearer", "expires_in": 3599.0}
			case Telenor:
				expect = map[string]any{"token_type": "Bearer", "expires_in": "3600"}
			}
			for k, v := range expect {
				if res.json[k] != v {
					t.Errorf("%s = %#v, want %#v", k, res.json[k], v)
				}
			}
			if len(res.json) != len(expect)+1 {
				t.Errorf("unexpected fields in %s", res.raw)
			}
			tok, _ := res.json["access_token"].(string)
			if !tokenShape.MatchString(tok) {
				t.Errorf("access_token %q is not 32+ URL-safe characters", tok)
			}
			if !p.Valid(tok) {
				t.Error("issued token is not Valid")
			}
			if got := p.Tokens(); len(got) != 1 || got[0] != tok {
				t.Errorf("Tokens() = %q", got)
			}
			if p.TokenRequests() != 1 || p.Issued() != 1 || len(p.Violations()) != 0 {
				t.Errorf("requests %d, issued %d, violations %q", p.TokenRequests(), p.Issued(), p.Violations())
			}
			if p.TokenURL() != p.URL()+kind.TokenPath() {
				t.Errorf("TokenURL %q", p.TokenURL())
			}
		})
	}
}

func TestTolerableVariants(t *testing.T) {
	for _, kind := range []Kind{OneNCE, ONEiO, Telenor} {
		t.Run(string(kind), func(t *testing.T) {
			p := start(t, config(kind))
			q := good(kind)
			q.header.Set("Content-Type", q.header.Get("Content-Type")+"; charset=UTF-8")
			q.header.Set("Accept", "application/json, text/plain;q=0.5")
			if kind != ONEiO {
				q.header.Set("Authorization", "basic"+strings.TrimPrefix(q.header.Get("Authorization"), "Basic"))
			}
			if kind == Telenor {
				q.body += "&" + form("scope", "subscriptions")
			}
			if res := send(t, p.URL(), q); res.status != http.StatusOK || len(p.Violations()) != 0 {
				t.Fatalf("status %d %s, violations %q", res.status, res.raw, p.Violations())
			}
		})
	}
}

func TestViolations(t *testing.T) {
	setHeader := func(k, v string) func(*req) { return func(q *req) { q.header.Set(k, v) } }
	delHeader := func(k string) func(*req) { return func(q *req) { q.header.Del(k) } }
	setBody := func(b string) func(*req) { return func(q *req) { q.body = b } }
	addBody := func(b string) func(*req) { return func(q *req) { q.body += "&" + b } }
	cases := []struct {
		name   string
		kind   Kind
		mutate func(*req)
		status int
		code   string
		want   string // in the violation
	}{
		{"wrong content type", OneNCE, setHeader("Content-Type", "application/x-www-form-urlencoded"), 400, "UnsupportedContentTypeError", "Content-Type"},
		{"no content type", OneNCE, delHeader("Content-Type"), 400, "UnsupportedContentTypeError", "no Content-Type"},
		{"content type parameter", OneNCE, setHeader("Content-Type", "application/json; charset=latin1"), 400, "UnsupportedContentTypeError", "charset"},
		{"missing accept", OneNCE, delHeader("Accept"), 400, "BadRequest", "no Accept"},
		{"wildcard accept", OneNCE, setHeader("Accept", "*/*"), 400, "BadRequest", "Accept"},
		{"wrong password", OneNCE, setHeader("Authorization", basic(clientID, "nope")), 400, "BadCredentials", "Basic password"},
		{"wrong user", OneNCE, setHeader("Authorization", basic("someone", clientSecret)), 400, "BadCredentials", "Basic username"},
		{"missing password", OneNCE, setHeader("Authorization", basic(clientID, "")), 400, "AuthValidationError", "password is empty"},
		{"no authorization", OneNCE, delHeader("Authorization"), 400, "AuthValidationError", "no Authorization"},
		{"bearer instead of basic", OneNCE, setHeader("Authorization", "Bearer xyz"), 400, "AuthValidationError", "not Basic"},
		{"extra field", OneNCE, setBody(`{"grant_type":"client_credentials","password":"` + clientSecret + `"}`), 400, "BodyValidationError", `unexpected JSON key "password"`},
		{"repeated key", OneNCE, setBody(`{"grant_type":"client_credentials","grant_type":"client_credentials"}`), 400, "BodyValidationError", "repeated"},
		{"missing grant", OneNCE, setBody(`{}`), 400, "BodyValidationError", "no grant_type"},
		{"wrong grant", OneNCE, setBody(`{"grant_type":"password"}`), 400, "BodyValidationError", "grant_type"},
		{"grant not a string", OneNCE, setBody(`{"grant_type":1}`), 400, "BodyValidationError", "grant_type"},
		{"form body", OneNCE, setBody("grant_type=client_credentials"), 400, "BodyValidationError", "not a JSON object"},
		{"trailing data", OneNCE, setBody(`{"grant_type":"client_credentials"} {}`), 400, "BodyValidationError", "after the JSON object"},
		{"query string", OneNCE, func(q *req) { q.path += "?grant_type=client_credentials" }, 400, "BadRequest", "query string"},
		{"wrong path", OneNCE, func(q *req) { q.path = "/oauth/token" }, 404, "NotFound", "no such endpoint"},
		{"wrong method", OneNCE, func(q *req) { q.method = http.MethodGet }, 405, "MethodNotAllowed", "method GET"},

		{"wrong content type", ONEiO, setHeader("Content-Type", "application/json"), 400, "invalid_request", "Content-Type"},
		{"missing accept", ONEiO, delHeader("Accept"), 400, "invalid_request", "no Accept"},
		{"authorization header", ONEiO, setHeader("Authorization", basic(clientID, clientSecret)), 400, "invalid_request", "Authorization"},
		{"wrong secret", ONEiO, setBody(form("grant_type", "client_credentials", "client_id", clientID, "client_secret", "nope")), 401, "invalid_client", "client_secret"},
		{"wrong client", ONEiO, setBody(form("grant_type", "client_credentials", "client_id", "x", "client_secret", clientSecret)), 401, "invalid_client", "client_id"},
		{"missing secret", ONEiO, setBody(form("grant_type", "client_credentials", "client_id", clientID)), 400, "invalid_request", "no client_secret"},
		{"extra field", ONEiO, addBody(form("password", ownerPass)), 400, "invalid_request", `unexpected form field "password"`},
		{"scope not configured", ONEiO, addBody(form("scope", "read")), 400, "invalid_request", `"scope"`},
		{"repeated field", ONEiO, addBody(form("grant_type", "client_credentials")), 400, "invalid_request", "sent 2 times"},
		{"wrong grant", ONEiO, setBody(form("grant_type", "password", "client_id", clientID, "client_secret", clientSecret)), 400, "unsupported_grant_type", "grant_type"},
		{"missing grant", ONEiO, setBody(form("client_id", clientID, "client_secret", clientSecret)), 400, "invalid_request", "no grant_type"},
		{"bad encoding", ONEiO, setBody("grant_type=%zz"), 400, "invalid_request", "not valid x-www-form-urlencoded"},
		{"wrong path", ONEiO, func(q *req) { q.path = "/oauth2/token/" }, 404, "invalid_request", "no such endpoint"},
		{"wrong method", ONEiO, func(q *req) { q.method = http.MethodPut }, 405, "invalid_request", "method PUT"},

		{"wrong content type", Telenor, setHeader("Content-Type", "application/json"), 400, "2", "Content-Type"},
		{"missing accept", Telenor, delHeader("Accept"), 400, "2", "no Accept"},
		{"no authorization", Telenor, delHeader("Authorization"), 401, "6", "no Authorization"},
		{"malformed basic", Telenor, setHeader("Authorization", "Basic %%%"), 401, "6", "base64"},
		{"wrong client secret", Telenor, setHeader("Authorization", basic(clientID, "nope")), 401, "22", "Basic password"},
		{"owner creds as basic", Telenor, setHeader("Authorization", basic(ownerName, ownerPass)), 401, "22", "Basic username"},
		{"wrong owner password", Telenor, setBody(form("grant_type", "password", "username", ownerName, "password", "nope")), 401, "20", "password is wrong"},
		{"missing owner", Telenor, setBody(form("grant_type", "password", "password", ownerPass)), 401, "20", "no username"},
		{"client credentials grant", Telenor, setBody(form("grant_type", "client_credentials")), 401, "21", `"client_credentials"`},
		{"unknown grant", Telenor, setBody(form("grant_type", "magic", "username", ownerName, "password", ownerPass)), 400, "2", `"magic"`},
		{"missing grant", Telenor, setBody(form("username", ownerName, "password", ownerPass)), 400, "2", "no grant_type"},
		{"extra field", Telenor, addBody(form("client_secret", clientSecret)), 400, "2", `unexpected form field "client_secret"`},
		{"empty scope", Telenor, addBody("scope="), 403, "8", "empty scope"},
		{"unknown refresh token", Telenor, setBody(form("grant_type", "refresh_token", "refresh_token", "never-issued")), 401, "7", "not issued"},
		{"refresh with owner creds", Telenor, setBody(form("grant_type", "refresh_token", "refresh_token", "x", "password", ownerPass)), 400, "2", `"password"`},
		{"wrong path", Telenor, func(q *req) { q.path = "/oauth/token" }, 404, "2", "no such endpoint"},
		{"wrong method", Telenor, func(q *req) { q.method = http.MethodGet }, 405, "2", "method GET"},
	}
	for _, tc := range cases {
		t.Run(string(tc.kind)+"/"+tc.name, func(t *testing.T) {
			p := start(t, config(tc.kind))
			q := good(tc.kind)
			tc.mutate(&q)
			res := send(t, p.URL(), q)
			if res.status != tc.status {
				t.Errorf("status %d, want %d: %s", res.status, tc.status, res.raw)
			}
			if code := errCode(t, tc.kind, res); code != tc.code {
				t.Errorf("error code %s, want %s: %s", code, tc.code, res.raw)
			}
			v := p.Violations()
			if len(v) != 1 || !strings.Contains(v[0], tc.want) {
				t.Errorf("violations %q, want one containing %q", v, tc.want)
			}
			noSecrets(t, p)
			if p.Issued() != 0 || len(p.Tokens()) != 0 {
				t.Errorf("issued %d tokens", p.Issued())
			}
			if tc.status == 405 && res.header.Get("Allow") != http.MethodPost {
				t.Errorf("Allow %q", res.header.Get("Allow"))
			}
		})
	}
}

func TestOneViolationPerRequestListsAllDeviations(t *testing.T) {
	p := start(t, config(ONEiO))
	q := good(ONEiO)
	q.header.Del("Accept")
	q.header.Set("Content-Type", "text/plain")
	send(t, p.URL(), q)
	v := p.Violations()
	if len(v) != 1 || !strings.Contains(v[0], "Accept") || !strings.Contains(v[0], "Content-Type") {
		t.Fatalf("violations %q", v)
	}
	if !strings.HasPrefix(v[0], "oneio: POST /oauth2/token: ") {
		t.Errorf("violation %q does not name provider, method and path", v[0])
	}
}

func TestBodyLimit(t *testing.T) {
	p := start(t, config(ONEiO))
	q := good(ONEiO)
	q.body += "&pad=" + strings.Repeat("x", MaxBodySize)
	res := send(t, p.URL(), q)
	if res.status != http.StatusRequestEntityTooLarge || errCode(t, ONEiO, res) != "invalid_request" {
		t.Errorf("status %d: %s", res.status, res.raw)
	}
	if v := p.Violations(); len(v) != 1 || !strings.Contains(v[0], "larger than") {
		t.Errorf("violations %q", v)
	}
}

func TestScope(t *testing.T) {
	for _, kind := range []Kind{ONEiO, Telenor} {
		t.Run(string(kind), func(t *testing.T) {
			cfg := config(kind)
			cfg.Scope = "read write"
			p := start(t, cfg)
			wantCode := map[Kind]string{ONEiO: "invalid_scope", Telenor: "8"}[kind]

			q := good(kind)
			if res := send(t, p.URL(), q); res.status == http.StatusOK || errCode(t, kind, res) != wantCode {
				t.Errorf("without scope: %d %s", res.status, res.raw)
			}
			q.body = good(kind).body + "&" + form("scope", "write read")
			if res := send(t, p.URL(), q); res.status == http.StatusOK || errCode(t, kind, res) != wantCode {
				t.Errorf("wrong scope: %d %s", res.status, res.raw)
			}
			if v := p.Violations(); len(v) != 2 || !strings.Contains(v[1], `scope "write read", want "read write"`) {
				t.Errorf("violations %q", v)
			}
			q.body = good(kind).body + "&" + form("scope", "read write")
			if res := send(t, p.URL(), q); res.status != http.StatusOK {
				t.Errorf("right scope: %d %s", res.status, res.raw)
			}
			if len(p.Violations()) != 2 {
				t.Errorf("violations %q", p.Violations())
			}
		})
	}
}

func token(t *testing.T, res result) (access, refresh string) {
	t.Helper()
	if res.status != http.StatusOK {
		t.Fatalf("status %d: %s", res.status, res.raw)
	}
	access, _ = res.json["access_token"].(string)
	refresh, _ = res.json["refresh_token"].(string)
	return access, refresh
}

func refreshReq(rt string) req {
	q := good(Telenor)
	q.body = form("grant_type", "refresh_token", "refresh_token", rt)
	return q
}

func TestTelenorRefreshRotation(t *testing.T) {
	cfg := config(Telenor)
	cfg.IssueRefreshTokens = true
	p := start(t, cfg)
	a1, r1 := token(t, send(t, p.URL(), good(Telenor)))
	if !tokenShape.MatchString(r1) || r1 == a1 {
		t.Fatalf("refresh token %q (access %q)", r1, a1)
	}
	if p.Valid(r1) {
		t.Error("a refresh token is Valid as an access token")
	}
	a2, r2 := token(t, send(t, p.URL(), refreshReq(r1)))
	if r2 == "" || r2 == r1 || a2 == a1 || !p.Valid(a2) {
		t.Fatalf("refresh gave access %q refresh %q", a2, r2)
	}
	if p.RefreshGrants() != 1 || p.Issued() != 2 || len(p.Violations()) != 0 {
		t.Errorf("refresh grants %d, issued %d, violations %q", p.RefreshGrants(), p.Issued(), p.Violations())
	}

	// Reusing a rotated refresh token is a client bug.
	res := send(t, p.URL(), refreshReq(r1))
	if res.status != 401 || errCode(t, Telenor, res) != "7" {
		t.Errorf("reused refresh token: %d %s", res.status, res.raw)
	}
	if v := p.Violations(); len(v) != 1 || !strings.Contains(v[0], "already used") {
		t.Errorf("violations %q", v)
	}
	_, r3 := token(t, send(t, p.URL(), refreshReq(r2)))

	// A revoked refresh token is refused, but asking is not a violation.
	p.RevokeAll()
	res = send(t, p.URL(), refreshReq(r3))
	if res.status != 401 || errCode(t, Telenor, res) != "7" {
		t.Errorf("revoked refresh token: %d %s", res.status, res.raw)
	}
	if len(p.Violations()) != 1 {
		t.Errorf("violations %q", p.Violations())
	}
	if got := p.RefreshTokens(); len(got) != 3 || got[0] != r1 || got[2] != r3 {
		t.Errorf("RefreshTokens() = %q", got)
	}
}

func TestTelenorRefreshTokenExpiry(t *testing.T) {
	cfg := config(Telenor)
	cfg.IssueRefreshTokens = true
	cfg.RefreshTTL = 50 * time.Millisecond
	p := start(t, cfg)
	_, rt := token(t, send(t, p.URL(), good(Telenor)))
	time.Sleep(80 * time.Millisecond)
	if res := send(t, p.URL(), refreshReq(rt)); res.status != 401 || errCode(t, Telenor, res) != "7" {
		t.Errorf("expired refresh token: %d %s", res.status, res.raw)
	}
	if len(p.Violations()) != 0 {
		t.Errorf("violations %q", p.Violations())
	}
}

func TestTelenorOmitsRefreshTokenByDefault(t *testing.T) {
	p := start(t, config(Telenor))
	res := send(t, p.URL(), good(Telenor))
	if _, ok := res.json["refresh_token"]; ok || res.status != 200 {
		t.Errorf("%d %s", res.status, res.raw)
	}
}

func TestTelenorLogout(t *testing.T) {
	p := start(t, config(Telenor))
	if p.LogoutURL() != p.URL()+TelenorLogoutPath {
		t.Errorf("LogoutURL %q", p.LogoutURL())
	}
	tok, _ := token(t, send(t, p.URL(), good(Telenor)))
	logout := func(auth string) result {
		q := req{http.MethodGet, TelenorLogoutPath, http.Header{}, ""}
		if auth != "" {
			q.header.Set("Authorization", auth)
		}
		return send(t, p.URL(), q)
	}
	if res := logout("Bearer " + tok); res.status != 200 || res.raw != "OK!" {
		t.Fatalf("logout: %d %q", res.status, res.raw)
	}
	if p.Valid(tok) || p.Logouts() != 1 || len(p.Violations()) != 0 {
		t.Fatalf("valid %v, logouts %d, violations %q", p.Valid(tok), p.Logouts(), p.Violations())
	}
	// Retiring a token that is no longer valid is legitimate.
	if res := logout("Bearer " + tok); res.status != 401 || errCode(t, Telenor, res) != "2" {
		t.Errorf("second logout: %d %s", res.status, res.raw)
	}
	if len(p.Violations()) != 0 {
		t.Errorf("violations %q", p.Violations())
	}
	if res := logout("Bearer never-issued"); res.status != 401 || errCode(t, Telenor, res) != "2" {
		t.Errorf("unknown token: %d %s", res.status, res.raw)
	}
	if res := logout(""); res.status != 401 || errCode(t, Telenor, res) != "6" {
		t.Errorf("no header: %d %s", res.status, res.raw)
	}
	if res := logout(basic(clientID, clientSecret)); res.status != 401 || errCode(t, Telenor, res) != "6" {
		t.Errorf("basic header: %d %s", res.status, res.raw)
	}
	if v := p.Violations(); len(v) != 3 || !strings.Contains(v[0], "never issued") ||
		!strings.Contains(v[1], "no Authorization") || !strings.Contains(v[2], "not Bearer") {
		t.Errorf("violations %q", v)
	}
	noSecrets(t, p)
	if p.LogoutRequests() != 5 || p.Logouts() != 1 {
		t.Errorf("logout requests %d, logouts %d", p.LogoutRequests(), p.Logouts())
	}
	other := start(t, config(OneNCE))
	if other.LogoutURL() != "" {
		t.Error("1NCE has a LogoutURL")
	}
}

func TestExpiry(t *testing.T) {
	cfg := config(OneNCE)
	cfg.TTL = 100 * time.Millisecond
	p := start(t, cfg)
	b := NewBackend(p)
	b.Start()
	t.Cleanup(b.Close)

	res := send(t, p.URL(), good(OneNCE))
	if res.json["expires_in"] != 1.0 {
		t.Errorf("expires_in %v for a sub-second TTL, want 1", res.json["expires_in"])
	}
	tok, _ := token(t, res)
	if !p.Valid(tok) || callBackend(t, b, "Bearer "+tok, "").status != 200 {
		t.Fatal("fresh token refused")
	}
	time.Sleep(150 * time.Millisecond)
	if p.Valid(tok) || callBackend(t, b, "Bearer "+tok, "").status != 401 {
		t.Fatal("expired token accepted")
	}

	p.SetTTL(2500 * time.Millisecond)
	if res := send(t, p.URL(), good(OneNCE)); res.json["expires_in"] != 2.0 {
		t.Errorf("expires_in %v for 2.5s, want 2", res.json["expires_in"])
	}
}

func TestModes(t *testing.T) {
	for _, kind := range []Kind{OneNCE, ONEiO, Telenor} {
		t.Run(string(kind), func(t *testing.T) {
			p := start(t, config(kind))
			p.SetMode(Down)
			if res := send(t, p.URL(), good(kind)); res.status != 503 || !strings.HasPrefix(res.header.Get("Content-Type"), "text/plain") {
				t.Errorf("Down: %d %s", res.status, res.raw)
			}
			p.SetMode(Garbage)
			if res := send(t, p.URL(), good(kind)); res.status != 200 || !strings.Contains(res.raw, "<html>") {
				t.Errorf("Garbage: %d %s", res.status, res.raw)
			}
			p.SetMode(RejectCredentials)
			res := send(t, p.URL(), good(kind))
			want := map[Kind]string{OneNCE: "BadCredentials", ONEiO: "invalid_client", Telenor: "20"}[kind]
			if code := errCode(t, kind, res); code != want {
				t.Errorf("RejectCredentials: %d %s", res.status, res.raw)
			}
			p.SetMode(Slow)
			p.SetSlowDelay(100 * time.Millisecond)
			begin := time.Now()
			if res := send(t, p.URL(), good(kind)); res.status != 200 || time.Since(begin) < 100*time.Millisecond {
				t.Errorf("Slow: %d after %v", res.status, time.Since(begin))
			}
			if p.Issued() != 1 || p.TokenRequests() != 4 || len(p.Violations()) != 0 {
				t.Errorf("issued %d, requests %d, violations %q", p.Issued(), p.TokenRequests(), p.Violations())
			}
			// A malformed request is a violation in any mode.
			p.SetMode(Down)
			q := good(kind)
			q.header.Del("Accept")
			send(t, p.URL(), q)
			if len(p.Violations()) != 1 {
				t.Errorf("violations %q", p.Violations())
			}
		})
	}
}

func TestHang(t *testing.T) {
	p := start(t, config(ONEiO))
	p.SetMode(Hang)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	q := good(ONEiO)
	hr, _ := http.NewRequestWithContext(ctx, q.method, p.TokenURL(), strings.NewReader(q.body))
	hr.Header = q.header
	if _, err := http.DefaultClient.Do(hr); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Hang answered: %v", err)
	}

	// Leaving Hang releases a waiting request, answered in the new mode.
	done := make(chan result)
	go func() { res, _ := do(p.URL(), good(ONEiO)); done <- res }()
	for p.TokenRequests() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	p.SetMode(Up)
	select {
	case res := <-done:
		if res.status != 200 {
			t.Errorf("released: %d %s", res.status, res.raw)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not released")
	}

	// Close answers hanging requests, so that it does not block.
	p.SetMode(Hang)
	go func() { res, _ := do(p.URL(), good(ONEiO)); done <- res }()
	for p.TokenRequests() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	p.Close()
	if res := <-done; res.status != 503 {
		t.Errorf("after Close: %d", res.status)
	}
}

// TestLoseAnswer: the exchange is committed (the refresh token is used up,
// tokens are issued) and the client gets no answer; a second use of that
// refresh token is a reuse.
func TestLoseAnswer(t *testing.T) {
	cfg := config(Telenor)
	cfg.IssueRefreshTokens = true
	p := start(t, cfg)
	_, r1 := token(t, send(t, p.URL(), good(Telenor)))
	p.SetMode(LoseAnswer)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	q := refreshReq(r1)
	hr, _ := http.NewRequestWithContext(ctx, q.method, p.TokenURL(), strings.NewReader(q.body))
	hr.Header = q.header
	if resp, err := http.DefaultClient.Do(hr); err == nil {
		resp.Body.Close()
		t.Fatalf("LoseAnswer answered %d", resp.StatusCode)
	}
	if p.RefreshGrants() != 1 || p.Issued() != 2 {
		t.Errorf("refresh grants %d, issued %d: want 1, 2 (committed)", p.RefreshGrants(), p.Issued())
	}

	// Leaving the mode drops a waiting request without an answer.
	done := make(chan error)
	go func() { _, err := do(p.URL(), good(Telenor)); done <- err }()
	for p.TokenRequests() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	p.SetMode(Up)
	select {
	case err := <-done:
		if err == nil {
			t.Error("released request got an answer")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not released")
	}
	if res := send(t, p.URL(), refreshReq(r1)); res.status != 401 {
		t.Errorf("the lost exchange's refresh token again: %d", res.status)
	}
	if v := p.Violations(); len(v) != 1 || !strings.Contains(v[0], "already used") {
		t.Errorf("violations %q, want one reuse", v)
	}
}

// TestMaxInFlight counts token requests served at once.
func TestMaxInFlight(t *testing.T) {
	p := start(t, config(ONEiO))
	p.SetSlowDelay(300 * time.Millisecond)
	p.SetMode(Slow)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if res, err := do(p.URL(), good(ONEiO)); err != nil || res.status != 200 {
				t.Errorf("slow token request: %v %d", err, res.status)
			}
		})
	}
	wg.Wait()
	send(t, p.URL(), good(ONEiO))
	if got := p.MaxInFlight(); got != 3 {
		t.Errorf("MaxInFlight %d, want 3", got)
	}
}

func callBackend(t *testing.T, b *Backend, auth, body string) result {
	t.Helper()
	q := req{http.MethodPost, "/api/v2", http.Header{}, body}
	if auth != "" {
		q.header.Set("Authorization", auth)
	}
	return send(t, b.URL(), q)
}

func TestBackend(t *testing.T) {
	cfg := config(Telenor)
	cfg.IssueRefreshTokens = true
	one, tel := start(t, config(OneNCE)), start(t, cfg)
	b := NewBackend(one, tel)
	b.Start()
	t.Cleanup(b.Close)
	t1, _ := token(t, send(t, one.URL(), good(OneNCE)))
	t2, rt := token(t, send(t, tel.URL(), good(Telenor)))

	for _, tc := range []struct{ auth, want string }{
		{"Bearer " + t1, "ok 1nce"},
		{"bearer " + t2, "ok telenor"},
		{"BEARER " + t1, "ok 1nce"},
	} {
		if res := callBackend(t, b, tc.auth, `{"id":"123456789"}`); res.status != 200 || res.raw != tc.want ||
			res.header.Get(BodyLengthHeader) != "18" {
			t.Errorf("%.10s: %d %q length %s", tc.auth, res.status, res.raw, res.header.Get(BodyLengthHeader))
		}
	}
	one.Revoke(t1)
	for _, auth := range []string{"", "Bearer " + t1, "Bearer " + rt, "Bearer", "Bearer  " + t2, "Basic " + t2, "Bearer nope"} {
		res := callBackend(t, b, auth, "abc")
		if res.status != 401 || res.header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` ||
			res.header.Get(BodyLengthHeader) != "3" {
			t.Errorf("%q: %d %v", auth, res.status, res.header)
		}
	}
	if b.Accepted() != 3 || b.Rejected() != 7 {
		t.Errorf("accepted %d, rejected %d", b.Accepted(), b.Rejected())
	}
	seen := b.SeenAuthorization()
	if len(seen) != 9 || seen[0] != "Bearer "+t1 || seen[8] != "Bearer nope" {
		t.Errorf("SeenAuthorization() = %q", seen)
	}
}

func TestBackendSeenAuthorizationIsBounded(t *testing.T) {
	b := NewBackend()
	for i := range seenCap + 5 {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", fmt.Sprint(i))
		b.ServeHTTP(httptest.NewRecorder(), r)
	}
	seen := b.SeenAuthorization()
	if len(seen) != seenCap || seen[0] != "5" || seen[seenCap-1] != fmt.Sprint(seenCap+4) {
		t.Errorf("len %d, first %q, last %q", len(seen), seen[0], seen[len(seen)-1])
	}
}

func TestConcurrentUse(t *testing.T) {
	cfg := config(Telenor)
	cfg.IssueRefreshTokens = true
	p := start(t, cfg)
	b := NewBackend(p)
	b.Start()
	t.Cleanup(b.Close)
	const n = 20
	var wg sync.WaitGroup
	toks := make(chan string, n)
	for range n {
		wg.Go(func() {
			res, err := do(p.URL(), good(Telenor))
			a, _ := res.json["access_token"].(string)
			toks <- a
			if err != nil || a == "" {
				t.Errorf("token request: %v %d %s", err, res.status, res.raw)
				return
			}
			q := req{http.MethodGet, "/", http.Header{"Authorization": {"Bearer " + a}}, ""}
			if res, err := do(b.URL(), q); err != nil || res.status != 200 {
				t.Errorf("backend: %v %d", err, res.status)
			}
			p.Valid(a)
			_ = p.Violations()
			_ = b.SeenAuthorization()
		})
	}
	wg.Go(func() {
		for range n {
			p.SetTTL(time.Hour)
			p.SetMode(Up)
			_ = p.Tokens()
		}
	})
	wg.Wait()
	close(toks)
	seen := map[string]bool{}
	for a := range toks {
		if seen[a] {
			t.Errorf("token %q issued twice", a)
		}
		seen[a] = true
	}
	for _, r := range p.RefreshTokens() {
		if seen[r] {
			t.Errorf("refresh token %q is also an access token", r)
		}
	}
	if p.Issued() != n || b.Accepted() != n || len(p.Violations()) != 0 {
		t.Errorf("issued %d, accepted %d, violations %q", p.Issued(), b.Accepted(), p.Violations())
	}
}
