package upstreamoauth

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// ServeHTTP sets the token on the request and calls next. With renew_on
// statuses configured, the upstream's answer is watched (replay.go).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	tok, err := h.token(w, r)
	if err != nil {
		return err
	}
	if len(h.renewOn) > 0 {
		return h.serveWatching(w, r, next, tok)
	}
	if r.Trailer != nil {
		watchBody(r, h.header, false) // trailers are scrubbed at the body's end
	}
	h.setToken(r, tok)
	return next.ServeHTTP(w, r)
}

// token returns the source's token, or the 502 error to answer with.
func (h *Handler) token(w http.ResponseWriter, r *http.Request) (*grants.Token, error) {
	tok, err := h.src.Get(r.Context())
	if err == nil {
		return tok, nil
	}
	var ue *cache.UnavailableError
	if errors.As(err, &ue) && ue.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ue.RetryAfter.Seconds()))))
	}
	name := h.src.info.Name
	if c := h.logger.Check(zap.DebugLevel, "no token for request"); c != nil {
		c.Write(zap.String("source", name), zap.Error(err))
	}
	metricNoToken(name)
	return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("upstream_oauth %s: %w", name, err))
}

// setToken puts tok on r, replacing what the client sent; the client's own
// Authorization never reaches the upstream, neither as a header nor as a
// trailer (watchBody deletes trailers that net/http fills in later).
//
// h.header is canonical (settings made it so): the map is written directly,
// as Header.Set would after canonicalizing the key again.
func (h *Handler) setToken(r *http.Request, tok *grants.Token) {
	if h.header != defaultHeader {
		delete(r.Header, defaultHeader)
	}
	r.Header[h.header] = []string{h.value.of(h.prefix, tok)}
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
