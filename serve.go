package upstreamoauth

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// ServeHTTP sets the token on the request and calls next. With renew_on
// statuses configured, the upstream's answer is watched (replay.go).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	src := &h.static
	if h.tenants != nil {
		tn, err := h.tenantSource(r)
		if err != nil {
			return err
		}
		defer tn.release()
		src = &tn.rs
	}
	tok, value, err := h.token(w, r, src)
	if err != nil {
		return err
	}
	if len(h.renewOn) > 0 {
		return h.serveWatching(w, r, next, src, tok, value)
	}
	if r.Trailer != nil {
		watchBody(r, h.header, false) // trailers are scrubbed at the body's end
	}
	h.setToken(r, value)
	return next.ServeHTTP(w, r)
}

// requestSource is the token source of a request. cs is p's cache.Source,
// for the request path to reach in one step; p's description is read only
// when something goes wrong. value builds the header value of a static
// source's tokens; a tenant's source keeps it itself (value nil).
type requestSource struct {
	cs    *cache.Source
	p     *pooledSource
	value *headerValue
}

// tenantSource is the token source of the request's tenant, with
// per-request credentials (a 403 error when the credentials resolve
// incomplete: nothing is forwarded, and no token requested).
func (h *Handler) tenantSource(r *http.Request) (*tenant, error) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewEmptyReplacer()
	}
	tn, err := h.tenants.source(repl)
	if err != nil {
		if c := h.logger.Check(zap.DebugLevel, "no token source for the request's credentials"); c != nil {
			c.Write(zap.String("source", h.tenants.name), zap.Error(err))
		}
		status := http.StatusForbidden
		if errors.Is(err, errTableClosed) {
			status = http.StatusBadGateway
		}
		return nil, caddyhttp.Error(status, fmt.Errorf("upstream_oauth %s: %w", h.tenants.name, err))
	}
	return tn, nil
}

// token returns the source's token and its header value, or the 502 error
// to answer with.
func (h *Handler) token(w http.ResponseWriter, r *http.Request, src *requestSource) (*grants.Token, string, error) {
	if src.value != nil {
		tok, err := src.cs.Get(r.Context())
		if err != nil {
			return nil, "", h.noToken(w, src, err)
		}
		return tok, src.value.of(h.prefix, tok), nil
	}
	tok, value, err := src.cs.GetHeader(r.Context())
	if err != nil {
		return nil, "", h.noToken(w, src, err)
	}
	return tok, value, nil
}

// noToken is the 502 error of a request that src has no token for, with
// a Retry-After while src backs off.
func (h *Handler) noToken(w http.ResponseWriter, src *requestSource, err error) error {
	setRetryAfter(w.Header(), err)
	name := src.p.info.Name
	if c := h.logger.Check(zap.DebugLevel, "no token for request"); c != nil {
		c.Write(zap.String("source", name), zap.Error(err))
	}
	metricNoToken(src.p.metric)
	return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("upstream_oauth %s: %w", name, err))
}

// setRetryAfter sets the Retry-After of err, an error of token, when it
// has one (its source backs off).
func setRetryAfter(h http.Header, err error) {
	if ue, ok := errors.AsType[*cache.UnavailableError](err); ok && ue.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(ue.RetryAfter.Seconds()))))
	}
}

// setToken puts the token's header value on r, replacing what the client sent; the client's own
// Authorization never reaches the upstream, neither as a header nor as a
// trailer (watchBody deletes trailers that net/http fills in later).
//
// h.header is canonical (settings made it so): the map is written directly,
// as Header.Set would after canonicalizing the key again.
func (h *Handler) setToken(r *http.Request, value string) {
	if h.header != defaultHeader {
		delete(r.Header, defaultHeader)
	}
	r.Header[h.header] = []string{value}
	scrubTrailer(r, h.header)
}

// headerValue holds the header value (scheme and token) of the token a
// handler last set, so that it is built once per token rather than once per
// request: a request then allocates nothing for its token but the header's
// own slice.
type headerValue struct {
	last atomic.Pointer[formattedToken]
}

type formattedToken struct {
	tok   *grants.Token
	value string
}

// of returns prefix+tok.AccessToken, built once for each new tok.
func (v *headerValue) of(prefix string, tok *grants.Token) string {
	if v == nil {
		return prefix + tok.AccessToken
	}
	if f := v.last.Load(); f != nil && f.tok == tok {
		return f.value
	}
	f := &formattedToken{tok: tok, value: prefix + tok.AccessToken}
	v.last.Store(f)
	return f.value
}
