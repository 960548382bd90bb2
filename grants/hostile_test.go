package grants

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// echoSecret has characters that each encoding writes differently: space,
// quote, ampersand, angle brackets, slash, non-ASCII.
const echoSecret = `s3cr"et &<ü>/+ x`

// secretForms are the forms a secret goes out in: plain, URL-encoded
// (form bodies), JSON-escaped with and without HTML escaping (JSON bodies).
func secretForms(s string) []string {
	j, _ := json.Marshal(s)
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return []string{s, url.QueryEscape(s), url.PathEscape(s),
		strings.Trim(string(j), `"`), strings.Trim(strings.TrimSpace(b.String()), `"`)}
}

// TestEchoedSecretsRedacted: a provider that echoes the request it got (its
// Authorization header and its body) in the error answer, in every shape
// a provider's error takes, gets none of the client's secrets into the
// error, in any form they were sent in: the contract's "no echo carries a
// secret".
func TestEchoedSecretsRedacted(t *testing.T) {
	echo := func(status int, shape string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			body := string(lastBody(r))
			seen := r.Header.Get("Authorization") + " " + body
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			switch shape {
			case "rfc6749":
				json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client", "error_description": "got " + seen})
			case "1nce":
				json.NewEncoder(w).Encode(map[string]any{"statusCode": 400, "errorCode": "BadCredentials", "message": "request was: " + seen})
			case "code":
				json.NewEncoder(w).Encode(map[string]string{"error": seen})
			case "plain":
				fmt.Fprint(w, seen[:min(len(seen), 110)])
			case "cut":
				// The secret straddles the 200-byte cut of a description.
				pad := strings.Repeat("p", 190)
				json.NewEncoder(w).Encode(map[string]string{"error": "x", "error_description": pad + seen})
			}
		}
	}
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"basic+form", Config{Grant: ClientCredentials, ClientID: "cid", ClientSecret: echoSecret, ClientAuth: AuthBasic, Body: BodyForm}},
		{"body+form", Config{Grant: ClientCredentials, ClientID: "cid", ClientSecret: echoSecret, ClientAuth: AuthBody, Body: BodyForm}},
		{"basic+json (1nce)", Config{Grant: ClientCredentials, Username: "api-user", Password: echoSecret, ClientAuth: AuthBasic, Body: BodyJSON}},
		{"password grant, json", Config{Grant: Password, ClientID: "cid", ClientSecret: "client-" + echoSecret, Username: "owner", Password: "owner-" + echoSecret, ClientAuth: AuthBasic, Body: BodyJSON}},
	} {
		for _, status := range []int{http.StatusBadRequest, http.StatusOK} {
			for _, shape := range []string{"rfc6749", "1nce", "code", "plain", "cut"} {
				if status == http.StatusOK && shape != "rfc6749" && shape != "code" {
					continue // a 200 is an error only with an error field
				}
				t.Run(fmt.Sprintf("%s/%d/%s", c.name, status, shape), func(t *testing.T) {
					s := newServer(t, echo(status, shape))
					cfg := c.cfg
					cfg.TokenURL = s.URL + "/token"
					cl := newClient(t, cfg)
					_, err := cl.Token(context.Background())
					if err == nil {
						t.Fatal("the echo was taken for a token")
					}
					msg := err.Error()
					id, secret := cfg.clientCredentials()
					leaks := append(secretForms(secret), secretForms(cfg.Password)...)
					leaks = append(leaks, base64.StdEncoding.EncodeToString([]byte(id+":"+secret)), "s3cr")
					for _, l := range leaks {
						if l != "" && strings.Contains(msg, l) {
							t.Errorf("error %q carries %q, a form of a secret the client sent", msg, l)
						}
					}
					if shape != "plain" && shape != "cut" && !strings.Contains(msg, Redacted) {
						t.Errorf("error %q does not show where the provider echoed a secret", msg)
					}
				})
			}
		}
	}
}

// lastBody is the body of a request newServer handed on.
func lastBody(r *http.Request) []byte {
	b, _ := io.ReadAll(r.Body)
	return b
}

// TestEchoedRefreshAndLogoutTokensRedacted: the refresh token of a
// refresh_token grant and the bearer token of a logout are redacted from
// the provider's answer too.
func TestEchoedRefreshAndLogoutTokensRedacted(t *testing.T) {
	const refresh, bearer = "refresh-tok-Qw8/e+r", "bearer-tok-Zx7.y_z"
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": "refused " + r.Header.Get("Authorization") + " " + string(lastBody(r))})
	})
	cfg := presetConfig("telenor", s.URL+"/oauth/v2/token")
	c := newClient(t, cfg)
	_, err := c.Refresh(context.Background(), refresh)
	if err == nil || strings.Contains(err.Error(), refresh) || strings.Contains(err.Error(), url.QueryEscape(refresh)) {
		t.Errorf("refresh error %v shows the refresh token", err)
	}
	err = c.Logout(context.Background(), s.URL+"/oauth/v2/logout", &Token{AccessToken: bearer})
	if err == nil || strings.Contains(err.Error(), bearer) {
		t.Errorf("logout error %v shows the bearer token", err)
	}
}

// TestRetryAfter: a 429 or 503 carries the provider's Retry-After, as
// seconds or a date, at most an hour; other statuses do not.
func TestRetryAfter(t *testing.T) {
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	for _, c := range []struct {
		status   int
		header   string
		min, max time.Duration
	}{
		{429, "60", 60 * time.Second, 60 * time.Second},
		{503, "120", 120 * time.Second, 120 * time.Second},
		{429, date, 80 * time.Second, 90 * time.Second},
		{429, "7200", time.Hour, time.Hour},
		{429, "soon", 0, 0},
		{500, "60", 0, 0},
		{400, "60", 0, 0},
	} {
		s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", c.header)
			w.WriteHeader(c.status)
		})
		cl := newClient(t, presetConfig("oneio", s.URL+"/oauth2/token"))
		_, err := cl.Token(context.Background())
		pe, ok := errors.AsType[*ProviderError](err)
		if !ok {
			t.Fatalf("%d: %v is not a *ProviderError", c.status, err)
		}
		if pe.RetryAfter < c.min || pe.RetryAfter > c.max {
			t.Errorf("%d with Retry-After %q: RetryAfter %v, want between %v and %v", c.status, c.header, pe.RetryAfter, c.min, c.max)
		}
	}
}

// TestErrorIn200: a 200 whose body is an RFC 6749 error is the provider's
// error in its own words, and counts as a credential error when its code
// is one (so it backs off as a 401 invalid_client would).
func TestErrorIn200(t *testing.T) {
	for _, c := range []struct {
		body      string
		wantMsg   string
		wantCreds bool
	}{
		{`{"error":"invalid_client","error_description":"Client authentication failed"}`, "token endpoint answered 200 invalid_client: Client authentication failed", true},
		{`{"error":"invalid_grant"}`, "token endpoint answered 200 invalid_grant", true},
		{`{"error":"temporarily_unavailable","error_description":"try later"}`, "token endpoint answered 200 temporarily_unavailable: try later", false},
	} {
		s := newServer(t, respond(200, "application/json", c.body))
		cl := newClient(t, presetConfig("oneio", s.URL+"/oauth2/token"))
		_, err := cl.Token(context.Background())
		pe, ok := errors.AsType[*ProviderError](err)
		if !ok {
			t.Fatalf("%s: %v (%T), want a *ProviderError", c.body, err, err)
		}
		if err.Error() != c.wantMsg || pe.Credentials() != c.wantCreds {
			t.Errorf("%s: %q (credentials %v), want %q (credentials %v)", c.body, err, pe.Credentials(), c.wantMsg, c.wantCreds)
		}
	}
}

// TestMaxInFlightPerEndpoint: however many clients ask one token endpoint
// at once, at most MaxInFlight requests are in flight to it; the others
// wait their turn, each within its own context.
func TestMaxInFlightPerEndpoint(t *testing.T) {
	var inFlight, most atomic.Int64
	release := make(chan struct{})
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		okAnswer(w, r)
	})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		cfg := presetConfig("oneio", s.URL+"/oauth2/token")
		cfg.Username = fmt.Sprintf("tenant-%d", i) // a client (source) of its own
		c := newClient(t, cfg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Token(context.Background())
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for inFlight.Load() < MaxInFlight && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// A request with a short deadline waits in the queue and gives up.
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := newClient(t, presetConfig("oneio", s.URL+"/oauth2/token")).Token(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a request whose deadline passes in the queue: %v, want a deadline error", err)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a queued request failed: %v", err)
		}
	}
	if m := most.Load(); m != MaxInFlight {
		t.Errorf("most token requests in flight at once to one endpoint: %d, want %d", m, MaxInFlight)
	}
}

// Secrets of TestTruncatedEchoWithheld, each with characters that the
// encodings write differently, so that every form is its own text.
const (
	cutClientSecret = `Zr8-very+secret&value"42/ü`
	cutPassword     = `Pw9 owner&pass<word>"x7`
	cutRefresh      = "rt-Qw8/e+r=long-refresh-value"
)

// secretRuns lists every run of n bytes of the forms of the secrets.
func secretRuns(n int, forms ...string) []string {
	var out []string
	for _, f := range forms {
		for i := 0; i+n <= len(f); i++ {
			out = append(out, f[i:i+n])
		}
	}
	return out
}

// TestTruncatedEchoWithheld: a provider that echoes only part of a secret
// (its own cut of the request it got) in its error text, in any field it
// puts its words in and in any form the secret was sent in, gets no run of
// 8 bytes of it into the error: the contract's "a provider that echoes the
// request back never puts a secret into a log line". The text is withheld
// whole; an unrelated text passes unchanged.
func TestTruncatedEchoWithheld(t *testing.T) {
	basic := func(id, secret string) string { return base64.StdEncoding.EncodeToString([]byte(id + ":" + secret)) }
	cfg := Config{Grant: Password, ClientID: "gateway-client", ClientSecret: cutClientSecret, Username: "owner",
		Password: cutPassword, ClientAuth: AuthBasic, Body: BodyForm}
	red := cfg.redactor().plus(cutRefresh)
	secrets := []struct{ name, value, basic string }{
		{"client_secret", cutClientSecret, basic(cfg.ClientID, cutClientSecret)},
		{"password", cutPassword, ""},
		{"refresh token", cutRefresh, ""},
	}
	var all []string
	for _, s := range secrets {
		all = append(append(all, secretForms(s.value)...), s.basic)
	}
	runs := secretRuns(8, all...)
	shapes := map[string]func(echo string) string{
		"error_description": func(e string) string {
			return jsonText(map[string]string{"error": "invalid_request", "error_description": "malformed body: " + e})
		},
		"error": func(e string) string { return jsonText(map[string]string{"error": e}) },
		"1NCE message": func(e string) string {
			return jsonText(map[string]any{"statusCode": 400, "errorCode": "BadCredentials", "message": "request was " + e})
		},
		"1NCE errorCode":  func(e string) string { return jsonText(map[string]any{"statusCode": 400, "errorCode": e}) },
		"Telenor message": func(e string) string { return jsonText(map[string]any{"error_code": 22, "error_message": "bad " + e}) },
		"plain text":      func(e string) string { return "refused: " + e },
	}
	for _, s := range secrets {
		forms := map[string]string{"plain": s.value, "URL-encoded": url.QueryEscape(s.value), "JSON-escaped": secretForms(s.value)[3]}
		if s.basic != "" {
			forms["Basic"] = s.basic
		}
		for formName, form := range forms {
			// The provider's cut: the form less its last 3 bytes, and 8
			// bytes from its middle.
			for _, echo := range []string{form[:len(form)-3], form[3:11]} {
				for shapeName, shape := range shapes {
					err := parseError(http.StatusBadRequest, []byte(shape(echo)), red)
					msg := err.Error()
					for _, r := range runs {
						if strings.Contains(msg, r) {
							t.Errorf("%s, %s form cut to %q, in the %s: the error %q carries %q, 8 bytes of a secret; the contract: no provider text puts a secret into a log line",
								s.name, formName, echo, shapeName, msg, r)
							break
						}
					}
					if !strings.Contains(msg, withheld) && !strings.Contains(msg, "non-JSON body of") { // a body with <> is only measured
						t.Errorf("%s, %s form cut to %q, in the %s: the error %q does not say the provider's text was withheld", s.name, formName, echo, shapeName, msg)
					}
				}
			}
		}
	}

	// A token answer whose token_type or Content-Type echoes part of a
	// secret is refused without it.
	cut := url.QueryEscape(cutPassword)[:12]
	for _, answer := range [][2]string{
		{`{"access_token":"tok-0123456789","token_type":"` + cut + `","expires_in":60}`, "application/json"},
		{`not json`, "text/" + cut},
	} {
		_, err := parseToken([]byte(answer[0]), answer[1], "bearer", time.Minute, time.Now(), red)
		if err == nil {
			t.Fatalf("answer %s was taken for a token", answer[0])
		}
		for _, r := range runs {
			if strings.Contains(err.Error(), r) {
				t.Errorf("the refusal %q carries %q, 8 bytes of a secret", err, r)
				break
			}
		}
	}

	// Unrelated text passes unchanged, with these secrets as with short
	// ones (under 8 bytes), whose runs are too short to tell a secret from
	// a word: only their full forms are redacted.
	short := Config{Grant: Password, ClientID: "c", ClientSecret: "Ab3$x", Username: "o", Password: "pa ss", ClientAuth: AuthBody, Body: BodyForm}
	for _, r := range []redactor{red, short.redactor()} {
		body := `{"error":"invalid_client","error_description":"Client authentication failed: unknown client (Ab3 pa)"}`
		pe := parseError(http.StatusUnauthorized, []byte(body), r)
		if pe.Code != "invalid_client" || pe.Description != "Client authentication failed: unknown client (Ab3 pa)" {
			t.Errorf("an unrelated description became {%q %q}; the contract logs the provider's own words", pe.Code, pe.Description)
		}
	}
	// A secret with a word of the request in it ("password") does not
	// withhold the provider's words where they quote that word in the
	// open: only a run that is the secret's own is a sign of an echo.
	worded := Config{Grant: Password, ClientID: "client-telenor", ClientSecret: "secret-telenor-Zq8", Username: "user-telenor",
		Password: "password-telenor-Xk3", ClientAuth: AuthBasic, Body: BodyForm}
	for body, want := range map[string]string{
		`{"error_code":22,"error_message":"Basic Authentication failed, bad username or password."}`:               "Basic Authentication failed, bad username or password.",
		`{"error":"invalid_request","error_description":"body grant_type=password&password=password-telenor-Xk3"}`: "body grant_type=password&password=" + Redacted,
		`{"error":"invalid_request","error_description":"body grant_type=password&password=password-tel"}`:         withheld,
		`{"error":"invalid_request","error_description":"user user-telenor, password passwor"}`:                    "user user-telenor, password passwor",
	} {
		if pe := parseError(http.StatusBadRequest, []byte(body), worded.redactor()); pe.Description != want {
			t.Errorf("%s: description %q, want %q", body, pe.Description, want)
		}
	}

	pe := parseError(http.StatusUnauthorized, []byte(`{"error":"invalid_client","error_description":"secret Ab3$x, password pa+ss"}`), short.redactor())
	if pe.Description != "secret "+Redacted+", password "+Redacted {
		t.Errorf("short secrets echoed whole: description %q, want each redacted", pe.Description)
	}

	// The same through a client: a refresh_token grant and a logout whose
	// answers echo part of the refresh token and of the bearer token.
	const bearer = "bearer-tok-Zx7.y_z-0123456789"
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		echo := url.QueryEscape(cutRefresh)[:20] + " " + bearer[:15]
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": "refused " + echo})
	})
	c := newClient(t, presetConfig("telenor", s.URL+"/oauth/v2/token"))
	_, err := c.Refresh(context.Background(), cutRefresh)
	errLogout := c.Logout(context.Background(), s.URL+"/oauth/v2/logout", &Token{AccessToken: bearer})
	for _, e := range []error{err, errLogout} {
		if e == nil {
			t.Fatal("an error answer was taken for success")
		}
		for _, r := range secretRuns(8, append(secretForms(cutRefresh), bearer)...) {
			if strings.Contains(e.Error(), r) {
				t.Errorf("the error %q carries %q, 8 bytes of the refresh or bearer token", e, r)
				break
			}
		}
	}
}

// jsonText is v as JSON.
func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
