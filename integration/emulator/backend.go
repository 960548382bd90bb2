package emulator

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
)

// BodyLengthHeader is the response header in which [Backend] tells how many
// request body bytes it received.
const BodyLengthHeader = "X-Body-Length"

// BackendMaxBody is the largest request body [Backend] reads; a larger one is
// answered 413 and counted neither accepted nor rejected.
const BackendMaxBody = 8 << 20

// seenCap is how many Authorization values a Backend keeps.
const seenCap = 1000

// Backend is an API that accepts a request only when its one Authorization
// header is "Bearer <token>" (scheme in any case) and the token is Valid at
// one of its providers: it answers 200 "ok <provider kind>". Otherwise it
// answers 401 with WWW-Authenticate: Bearer error="invalid_token". Either way
// the response carries BodyLengthHeader. Safe for concurrent use.
type Backend struct {
	providers          []TokenIssuer
	accepted, rejected atomic.Int64

	mu   sync.Mutex
	seen []string // ring buffer of Authorization values
	next int      // where the next value goes once seen is full
	srv  *httptest.Server
}

// TokenIssuer is what a Backend trusts: a [Provider] or an [IdP].
type TokenIssuer interface {
	Valid(token string) bool
	Kind() Kind
}

// NewBackend returns a Backend that trusts the tokens of providers.
func NewBackend(providers ...*Provider) *Backend {
	issuers := make([]TokenIssuer, len(providers))
	for i, p := range providers {
		issuers[i] = p
	}
	return NewBackendFor(issuers...)
}

// NewBackendFor returns a Backend that trusts the tokens of issuers.
func NewBackendFor(issuers ...TokenIssuer) *Backend {
	return &Backend{providers: issuers}
}

// Start serves b on a new httptest.Server on 127.0.0.1 and returns it.
func (b *Backend) Start() *httptest.Server {
	srv := httptest.NewServer(b)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		srv.Close()
		panic("emulator: backend already started")
	}
	b.srv = srv
	return srv
}

// Close closes the server that Start made, if any.
func (b *Backend) Close() {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// URL returns the base URL of the started server ("" before Start).
func (b *Backend) URL() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		return ""
	}
	return b.srv.URL
}

// Accepted counts requests answered 200.
func (b *Backend) Accepted() int64 { return b.accepted.Load() }

// Rejected counts requests answered 401 (missing or invalid token).
func (b *Backend) Rejected() int64 { return b.rejected.Load() }

// SeenAuthorization returns the last 1000 Authorization header values
// received (each value of each request that had any), oldest first.
func (b *Backend) SeenAuthorization() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.seen))
	out = append(out, b.seen[b.next:]...)
	return append(out, b.seen[:b.next]...)
}

func (b *Backend) remember(vals []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, v := range vals {
		if len(b.seen) < seenCap {
			b.seen = append(b.seen, v)
			continue
		}
		b.seen[b.next] = v
		b.next = (b.next + 1) % seenCap
	}
}

// ServeHTTP checks the bearer token and answers as the type doc says.
func (b *Backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	vals := r.Header.Values("Authorization")
	b.remember(vals)
	n, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, BackendMaxBody))
	if err != nil {
		if _, big := errors.AsType[*http.MaxBytesError](err); big {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		} else {
			http.Error(w, "request body unreadable", http.StatusBadRequest)
		}
		return
	}
	w.Header().Set(BodyLengthHeader, strconv.FormatInt(n, 10))
	if token, problem := bearer(vals); problem == "" {
		for _, p := range b.providers {
			if p.Valid(token) {
				b.accepted.Add(1)
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				_, _ = io.WriteString(w, "ok "+string(p.Kind()))
				return
			}
		}
	}
	b.rejected.Add(1)
	w.Header().Set("Www-Authenticate", `Bearer error="invalid_token"`)
	http.Error(w, "invalid token", http.StatusUnauthorized)
}
