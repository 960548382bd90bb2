package integration

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// refreshFront fronts a Telenor emulator that issues refresh tokens,
// counting the token requests of each grant, and answers the
// refresh_token grant itself while fail is set: 429 with Retry-After 60,
// or 503.
type refreshFront struct {
	password, refresh atomic.Int64
	fail              atomic.Int64 // 0: pass; else the status to answer refresh_token grants with
}

func startRefreshFront(t *testing.T, p *emulator.Provider) (*refreshFront, string) {
	t.Helper()
	f := &refreshFront{}
	u := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, emulator.MaxBodySize))
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		switch form.Get("grant_type") {
		case "password":
			f.password.Add(1)
		case "refresh_token":
			f.refresh.Add(1)
			switch status := int(f.fail.Load()); status {
			case 0:
			case http.StatusTooManyRequests:
				w.Header().Set("Retry-After", "3")
				fallthrough
			default:
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				io.WriteString(w, `{"error_code":2,"error_message":"Internal Server Error"}`)
				return
			}
		}
		p.ServeHTTP(w, r)
	}))
	return f, u + p.Kind().TokenPath()
}

// counts is the token requests of each grant so far.
func (f *refreshFront) counts() [2]int64 { return [2]int64{f.password.Load(), f.refresh.Load()} }

// TestTelenorRefreshFailures: a Telenor source that holds a refresh token
// renews with it; what follows a failed refresh_token grant depends on why
// it failed. A 429 with Retry-After: no token request of either grant
// before the Retry-After (the contract's "no token request goes out before
// it"; an admin renew is answered 429 meanwhile), the valid token still
// served, and the attempt after it redeems the refresh token kept. A 503: no password grant at once,
// and the next attempt redeems the same refresh token (the emulator would
// record a second use of one as a violation). Telenor's 401 code 7 (the
// refresh token refused): the password grant at once, as the contract's
// "fall back to the configured grant" says.
func TestTelenorRefreshFailures(t *testing.T) {
	for _, c := range []struct {
		name string
		fail int
	}{
		{"429 Retry-After", http.StatusTooManyRequests},
		{"503", http.StatusServiceUnavailable},
		{"refused", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := startProvider(t, emulator.Telenor)
			p.SetIssueRefreshTokens(true)
			b := startBackend(t, p)
			front, tokenURL := startRefreshFront(t, p)
			name := opsName("refresh")
			g := startGateway(t, "\tupstream_oauth telenor {\n\t\tname "+name+"\n\t\ttoken_url "+tokenURL+
				"\n\t\tlogout_url "+p.LogoutURL()+
				"\n\t\tclient_id client-telenor\n\t\tclient_secret secret-telenor-Zq8\n\t\tusername user-telenor\n\t\tpassword password-telenor-Xk3\n\t}\n"+
				"\treverse_proxy "+b.URL()+"\n")
			if status, body, _ := g.get("/warm-up"); status != http.StatusOK {
				t.Fatalf("warm-up: %d %q", status, body)
			}
			if got := front.counts(); got != [2]int64{1, 0} {
				t.Fatalf("warm-up token requests (password, refresh_token) %v, want [1 0]", got)
			}
			renew := func() int {
				t.Helper()
				code, _ := admin(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew")
				return code
			}

			if c.fail == 0 {
				rts := p.RefreshTokens()
				p.Revoke(rts[len(rts)-1]) // Telenor now answers 401 code 7 to it
				if code := renew(); code != http.StatusOK {
					t.Fatalf("renewal with a revoked refresh token: %d; want 200 with the password grant's token", code)
				}
				if got := front.counts(); got != [2]int64{2, 1} {
					t.Errorf("token requests (password, refresh_token) %v after Telenor refused the refresh token, want [2 1]: the password grant at once", got)
				}
				return
			}

			front.fail.Store(int64(c.fail))
			if code := renew(); code != http.StatusBadGateway {
				t.Fatalf("renewal against a %d: %d, want 502 with the provider's reason", c.fail, code)
			}
			for i := range 10 {
				if status, _, _ := g.get("/during"); status != http.StatusOK {
					t.Fatalf("request %d during the backoff: %d; want 200 with the token still valid", i, status)
				}
			}
			if got := front.counts(); got != [2]int64{1, 1} {
				t.Fatalf("token requests (password, refresh_token) %v after a %d to the refresh_token grant, want [1 1]: no password grant at once, nothing before the backoff ends", got, c.fail)
			}
			_, body := admin(t, http.MethodGet, "/upstream_oauth/sources")
			st := sourcesAnswer(t, body, name)
			if st.State != "backoff" || st.RetryAt == nil {
				t.Fatalf("source %+v, want backoff with a retry_at", st)
			}
			if c.fail == http.StatusTooManyRequests {
				if time.Until(*st.RetryAt) < 2*time.Second {
					t.Errorf("next attempt at %v, before the provider's Retry-After of 3 s", st.RetryAt)
				}
				front.fail.Store(0)
				if code := renew(); code != http.StatusTooManyRequests {
					t.Errorf("admin renew during the provider's Retry-After: %d, want 429: no token request goes out before it", code)
				}
				if got := front.counts(); got != [2]int64{1, 1} {
					t.Fatalf("token requests (password, refresh_token) %v after an admin renew during the Retry-After, want [1 1]", got)
				}
				// The source's own attempt once the Retry-After is over
				// redeems the refresh token kept (bounded wait: 3 s, and
				// the backoff's jitter).
				eventually(15*time.Second, func() bool { return front.counts()[1] >= 2 })
				if got := front.counts(); got != [2]int64{1, 2} || p.RefreshGrants() != 1 {
					t.Errorf("token requests (password, refresh_token) %v, refresh grants %d after the Retry-After; want [1 2] and 1: the next attempt redeems the refresh token kept", got, p.RefreshGrants())
				}
				return
			}

			// The next attempt (forced here) redeems the refresh token kept.
			front.fail.Store(0)
			if code := renew(); code != http.StatusOK {
				t.Fatalf("renewal once the provider is back: %d, want 200", code)
			}
			if got := front.counts(); got != [2]int64{1, 2} || p.RefreshGrants() != 1 {
				t.Errorf("token requests (password, refresh_token) %v, refresh grants %d; want [1 2] and 1: the next attempt redeems the refresh token kept", got, p.RefreshGrants())
			}
		})
	}
}
