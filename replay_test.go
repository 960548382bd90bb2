package upstreamoauth

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestRenewOnAfterInformational: an upstream that sends 103 Early Hints
// before its 401 refused the token all the same. For a request whose body is
// too large to keep (the pass-through path), the 401 retires the token: the
// next request gets a new one. 1xx answers are not final, and are not taken
// for the status (as Caddy's ResponseRecorder does not take them).
func TestRenewOnAfterInformational(t *testing.T) {
	h := &Handler{Name: t.Name()}
	n := provisionTest(t, h)
	refuse := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	})
	big := bytes.Repeat([]byte("b"), maxReplayBody+1)
	r := httptest.NewRequest(http.MethodPost, "/upload", bytes.NewReader(big))
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, r, refuse); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusUnauthorized && rec.Code != http.StatusEarlyHints {
		t.Fatalf("client got %d", rec.Code)
	}
	ok := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	})
	if err := h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil), ok); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 2 {
		t.Errorf("token requests after a 103 then a 401: %d, want 2 (the 401 retires the token, whatever 1xx came before)", got)
	}
}
