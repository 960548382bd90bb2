package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// refreshing is a source that holds a token with a refresh token, as a
// renewal finds it: f issues refresh tokens, and the first token is in.
func refreshing(t *testing.T, opts Options) (*Source, *fakeFetcher, *grants.Token) {
	t.Helper()
	f := newFake(time.Hour)
	f.setIssueRefresh(true)
	opts.Fetcher = f
	s := newSource(t, opts)
	tok, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" {
		t.Fatal("test setup: the first token has no refresh token")
	}
	return s, f, tok
}

// retryAfterOver ends the provider's Retry-After that s keeps to, as time
// passing would.
func retryAfterOver(s *Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := *s.snap.Load()
	st.waitUntil = time.Time{}
	s.snap.Store(&st)
}

// callsSince is f's calls since the n-th.
func callsSince(f *fakeFetcher, n int) []fetchCall { return f.history()[n:] }

// TestRefreshRetryAfterHonoured: a 429 with Retry-After to the
// refresh_token grant holds back every token request, of either grant,
// until the Retry-After: the contract's "no token request goes out before
// it". The configured grant is not tried at once, the 502s (the
// UnavailableError) say when to come back, and requests do not speed the
// next attempt up; that attempt tries the refresh token again.
func TestRefreshRetryAfterHonoured(t *testing.T) {
	for _, held := range []bool{true, false} {
		t.Run(fmt.Sprintf("token held %v", held), func(t *testing.T) {
			s, f, tok := refreshing(t, Options{Name: "ra"})
			f.setRefreshErr(&grants.ProviderError{Status: http.StatusTooManyRequests, Code: "slow_down", RetryAfter: time.Minute})
			n := len(f.history())
			if held {
				if err := s.Renew(context.Background()); err == nil {
					t.Fatal("Renew succeeded against a 429")
				}
			} else if !s.Retire(tok) { // the token is gone: requests wait for the renewal
				t.Fatal("Retire(current) = false")
			}
			for range 50 {
				_, err := s.Get(context.Background())
				if !held {
					ue, ok := errors.AsType[*UnavailableError](err)
					if !ok || ue.RetryAfter < 59*time.Second || ue.RetryAfter > time.Minute {
						t.Fatalf("Get during the provider's Retry-After: %v; want an *UnavailableError that says to come back in about 60 s", err)
					}
				} else if err != nil {
					t.Fatalf("Get with a valid token during the backoff: %v", err)
				}
			}
			calls := callsSince(f, n)
			if len(calls) != 1 || calls[0].kind != "refresh" {
				t.Fatalf("token requests after the provider's 429 with Retry-After 60 s: %v; want only the refresh_token grant that got it: the contract sends none before the Retry-After", kinds(calls))
			}
			st := s.Status()
			if st.RetryAt == nil || st.RetryAt.Sub(calls[0].end) < time.Minute {
				t.Fatalf("status %+v: the next attempt is due before the provider's Retry-After (60 s after %v)", st, calls[0].end)
			}
			// Even a forced renewal (the admin API's) keeps to the
			// provider's Retry-After.
			if err := s.Renew(context.Background()); !errors.As(err, new(*UnavailableError)) || len(callsSince(f, n)) != 1 {
				t.Fatalf("Renew during the provider's Retry-After: %v, %d token requests; want an *UnavailableError and none", err, len(callsSince(f, n))-1)
			}
			// The next attempt, once due (Renew, once the Retry-After is
			// over, stands in for the timer), tries the refresh token again.
			f.setRefreshErr(nil)
			retryAfterOver(s)
			if err := s.Renew(context.Background()); err != nil {
				t.Fatal(err)
			}
			if calls := callsSince(f, n+1); len(calls) != 1 || calls[0].kind != "refresh" || calls[0].refreshToken != tok.RefreshToken {
				t.Fatalf("the attempt after the Retry-After made %v; want the refresh_token grant with the same refresh token", kinds(calls))
			}
		})
	}
}

// TestRefreshTransientFailureKeepsRefreshToken: when the refresh_token
// grant fails for a reason of the provider's or the network's (5xx, 429,
// 408, temporarily_unavailable, no connection), the attempt ends with that
// error and backs off: no configured-grant request follows at once, which
// would double the load on a struggling provider. The refresh token is
// kept, and the next attempt uses it.
func TestRefreshTransientFailureKeepsRefreshToken(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
	}{
		{"503", &grants.ProviderError{Status: http.StatusServiceUnavailable, Description: "down for maintenance"}},
		{"500", &grants.ProviderError{Status: http.StatusInternalServerError, Code: "16"}},
		{"502 wrapped", fmt.Errorf("refresh: %w", &grants.ProviderError{Status: http.StatusBadGateway})},
		{"408", &grants.ProviderError{Status: http.StatusRequestTimeout}},
		{"429 without Retry-After", &grants.ProviderError{Status: http.StatusTooManyRequests}},
		{"503 with Retry-After", &grants.ProviderError{Status: http.StatusServiceUnavailable, RetryAfter: 30 * time.Second}},
		{"200 temporarily_unavailable", &grants.ProviderError{Status: http.StatusOK, Code: "temporarily_unavailable"}},
		{"400 with Retry-After", &grants.ProviderError{Status: http.StatusBadRequest, Code: "slow_down", RetryAfter: time.Minute}},
		{"no connection", &grants.TransportError{Err: errors.New("dial tcp 127.0.0.1:9: connect: connection refused")}},
		{"discovery", &grants.DiscoveryError{Issuer: "https://idp.example", Reasons: []string{"status 500"}}},
		{"503 over 1 MiB", &grants.ResponseError{Status: http.StatusServiceUnavailable, Reason: "response body over 1 MiB"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, f, tok := refreshing(t, Options{Name: "tr"})
			f.setRefreshErr(c.err)
			n := len(f.history())
			err := s.Renew(context.Background())
			if err == nil || err.Error() != c.err.Error() {
				t.Errorf("Renew: %v; want the refresh_token grant's own error %v", err, c.err)
			}
			if calls := callsSince(f, n); len(calls) != 1 || calls[0].kind != "refresh" {
				t.Fatalf("after the refresh_token grant failed with %v: token requests %v; want none of the configured grant until the backoff ends", c.err, kinds(calls))
			}
			if st := s.Status(); st.State != "backoff" || st.Failures != 1 {
				t.Errorf("status %+v; want backoff after 1 failure", st)
			}
			f.setRefreshErr(nil)
			retryAfterOver(s)
			if err := s.Renew(context.Background()); err != nil {
				t.Fatal(err)
			}
			if calls := callsSince(f, n+1); len(calls) != 1 || calls[0].kind != "refresh" || calls[0].refreshToken != tok.RefreshToken {
				t.Fatalf("the attempt after %v made %v; want the refresh_token grant with the refresh token kept", c.err, kinds(calls))
			}
		})
	}
}

// TestRefreshRefusedFallsBack: when the provider refuses the refresh token
// itself (RFC 6749 section 5.2: invalid_grant and the other 4xx answers,
// also in a 200; Telenor's 401 code 7; an answer that is no usable
// token), the configured grant is used at once, as the contract's "fall
// back to the configured grant" says, and the refresh token is dropped.
func TestRefreshRefusedFallsBack(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
	}{
		{"400 invalid_grant", &grants.ProviderError{Status: http.StatusBadRequest, Code: "invalid_grant"}},
		{"400 invalid_request", &grants.ProviderError{Status: http.StatusBadRequest, Code: "invalid_request"}},
		{"400 unauthorized_client", &grants.ProviderError{Status: http.StatusBadRequest, Code: "unauthorized_client"}},
		{"401 Telenor code 7", &grants.ProviderError{Status: http.StatusUnauthorized, Code: "7", Description: "Invalid refresh_token"}},
		{"403", &grants.ProviderError{Status: http.StatusForbidden, Code: "8"}},
		{"404", &grants.ProviderError{Status: http.StatusNotFound}},
		{"200 invalid_grant", &grants.ProviderError{Status: http.StatusOK, Code: "invalid_grant"}},
		{"200 unknown code", &grants.ProviderError{Status: http.StatusOK, Code: "expired_token"}},
		{"no usable token", &grants.ResponseError{Status: http.StatusOK, Reason: "no access_token"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, f, _ := refreshing(t, Options{Name: "rf"})
			f.setRefreshErr(c.err)
			n := len(f.history())
			if err := s.Renew(context.Background()); err != nil {
				t.Fatalf("Renew: %v; want the configured grant's token", err)
			}
			if calls := callsSince(f, n); len(calls) != 2 || calls[0].kind != "refresh" || calls[1].kind != "token" {
				t.Fatalf("after the provider refused the refresh token (%v): token requests %v; want the configured grant at once", c.err, kinds(calls))
			}
		})
	}
}

// TestRefreshTokenGivenUp: a refresh token that keeps failing without
// being refused (a provider that answers 500 to a refresh token it no
// longer knows) is tried on refreshTries attempts in a row, then dropped:
// the next attempt uses the configured grant, so the source does not stay
// without a token for as long as the provider answers so.
func TestRefreshTokenGivenUp(t *testing.T) {
	s, f, _ := refreshing(t, Options{Name: "gu"})
	f.setRefreshErr(&grants.ProviderError{Status: http.StatusInternalServerError})
	n := len(f.history())
	for i := range refreshTries {
		if err := s.Renew(context.Background()); err == nil {
			t.Fatalf("attempt %d succeeded against a 500", i+1)
		}
	}
	if calls := callsSince(f, n); len(calls) != refreshTries || f.tokens.Load() != 1 {
		t.Fatalf("%d attempts against a 500: token requests %v; want %d of the refresh_token grant alone", refreshTries, kinds(calls), refreshTries)
	}
	if err := s.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls := callsSince(f, n+refreshTries); len(calls) != 1 || calls[0].kind != "token" {
		t.Fatalf("the attempt after %d failures of the refresh token made %v; want the configured grant", refreshTries, kinds(calls))
	}
}

// TestSharedRefreshTransientFailure: an instance that claimed the fleet's
// refresh token and got a 503 with it makes no configured-grant request at
// once, and keeps the claimed refresh token for its next attempt (the
// record no longer holds it); no other instance uses it.
func TestSharedRefreshTransientFailure(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	f := newFake(time.Hour)
	f.setIssueRefresh(true)
	a := newSource(t, Options{Name: "a", Fetcher: f, Shared: newShared(t, testConfig(), st)})
	tok, err := a.Get(ctx) // secret-refresh-1, stored
	if err != nil {
		t.Fatal(err)
	}
	b := newSource(t, Options{Name: "b", Fetcher: f, Shared: newShared(t, testConfig(), st)})
	if _, err := b.Get(ctx); err != nil {
		t.Fatal(err)
	}
	f.setRefreshErr(&grants.ProviderError{Status: http.StatusServiceUnavailable})
	if err := b.Renew(ctx); err == nil {
		t.Fatal("Renew succeeded against a 503")
	}
	if got := kinds(f.history()); len(got) != 2 || got[1] != "refresh" {
		t.Fatalf("token requests %v; want the first token and b's refresh_token grant, no configured grant after the 503", got)
	}
	f.setRefreshErr(nil)
	if err := b.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	h := f.history()
	if last := h[len(h)-1]; last.kind != "refresh" || last.refreshToken != tok.RefreshToken {
		t.Fatalf("b's attempt after the 503 made %s(%q); want the refresh_token grant with the refresh token it claimed", last.kind, last.refreshToken)
	}
	used := map[string]int{}
	for _, call := range h {
		if call.kind == "refresh" && call.err == nil {
			used[call.refreshToken]++
		}
	}
	if used[tok.RefreshToken] != 1 {
		t.Errorf("refresh tokens redeemed %v; want %s once", used, tok.RefreshToken)
	}
}

// TestRefreshLostAnswerNotReplayed: a refresh_token grant that went out and
// got no answer (a timeout, a connection lost) is the attempt's error: no
// configured-grant request follows at once, so one attempt never takes
// twice the timeout. The provider may have redeemed the refresh token,
// though, so it is not sent again (a provider that rotates refresh tokens
// takes a second use for a stolen one): the next attempt uses the
// configured grant.
func TestRefreshLostAnswerNotReplayed(t *testing.T) {
	for _, c := range []struct {
		name  string
		err   error
		delay time.Duration // the fake answers after this; the source's Timeout is 50ms
	}{
		{"connection lost", &grants.TransportError{Err: errors.New("read: connection reset by peer"), Sent: true}, 0},
		{"timeout", nil, time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, f, _ := refreshing(t, Options{Name: "la", Timeout: 50 * time.Millisecond})
			f.setRefreshErr(c.err)
			f.setDelay(c.delay)
			n := len(f.history())
			if err := s.Renew(context.Background()); err == nil {
				t.Fatal("Renew succeeded without an answer")
			}
			if calls := callsSince(f, n); len(calls) != 1 || calls[0].kind != "refresh" {
				t.Fatalf("after the refresh_token grant got no answer: token requests %v; want no configured grant until the backoff ends", kinds(calls))
			}
			f.setRefreshErr(nil)
			f.setDelay(0)
			if err := s.Renew(context.Background()); err != nil {
				t.Fatal(err)
			}
			if calls := callsSince(f, n+1); len(calls) != 1 || calls[0].kind != "token" {
				t.Fatalf("the attempt after a refresh_token grant without an answer made %v; want the configured grant: the refresh token may be used up", kinds(calls))
			}
		})
	}
}
