package upstreamoauth

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// serveWatching forwards r with tok and watches the upstream's answer: one
// with a renew_on status retires tok, and the request is replayed once with
// a new token when its body was kept.
func (h *Handler) serveWatching(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, tok *grants.Token) error {
	body, replayable, err := keepBody(r)
	if err != nil {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
	}
	if !replayable {
		return h.passOnce(w, r, next, tok)
	}
	header := headerPool.Get().(*headerSnapshot)
	header.take(w.Header())
	defer headerPool.Put(header)
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	rec := caddyhttp.NewResponseRecorder(w, buf, h.buffer)
	h.setToken(r, tok)
	r.Body = body()
	if err := next.ServeHTTP(rec, r); err != nil {
		return err
	}
	if !rec.Buffered() || rec.Status() == 0 {
		return nil // passed through, or nothing written: not a refusal
	}
	// The upstream refused the token: retire it (once, however many
	// requests saw it refused), get a new one, replay.
	if h.src.Retire(tok) {
		metricUpstreamRenewal(h.src.info.Name, rec.Status())
	}
	tok2, err := h.token(w, r)
	if err != nil {
		// The 502 goes out with the header as it was before the upstream
		// answered, plus token's Retry-After: none of the refused answer's
		// (its Content-Length would cut the error's body short).
		retryAfter := w.Header().Values("Retry-After")
		header.restore(w.Header())
		if retryAfter != nil {
			w.Header()["Retry-After"] = retryAfter
		}
		return err
	}
	if tok2 == tok {
		return rec.WriteResponse() // the token stays (not ours to retire): pass the answer on
	}
	header.restore(w.Header())
	r = withOwnVars(r)
	h.setToken(r, tok2)
	r.Body = body()
	return next.ServeHTTP(w, r)
}

// isRenewStatus reports whether an upstream answer with status retires the
// token: the recorder's ShouldBufferFunc, made once in Provision.
func (h *Handler) isRenewStatus(status int, _ http.Header) bool {
	return slices.Contains(h.renewOn, status)
}

// withOwnVars gives a replayed request a copy of its Caddy vars: a goroutine
// the first attempt left behind (reverse_proxy's dialer) may still read the
// original map while the replay writes to its own.
func withOwnVars(r *http.Request) *http.Request {
	vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, maps.Clone(vars)))
}

// passOnce forwards a request whose body cannot be kept for a replay: an
// answer with a renew_on status still retires the token, and passes through.
func (h *Handler) passOnce(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, tok *grants.Token) error {
	h.setToken(r, tok)
	sw := &statusWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	err := next.ServeHTTP(sw, r)
	if h.isRenewStatus(sw.status, nil) && h.src.Retire(tok) {
		metricUpstreamRenewal(h.src.info.Name, sw.status)
	}
	return err
}

// keepBody reads a small request body into memory so the request can be
// replayed: body returns a fresh reader each time. replayable is false when
// the body is larger than 64 KiB (r.Body then still yields all of it).
func keepBody(r *http.Request) (body func() io.ReadCloser, replayable bool, err error) {
	// A server request with ContentLength 0 has no body (an unknown length
	// is -1), though Caddy wraps its r.Body: nothing to read or keep.
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return func() io.ReadCloser { return http.NoBody }, true, nil
	}
	if r.ContentLength > maxReplayBody {
		return nil, false, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxReplayBody+1))
	if err != nil {
		return nil, false, err
	}
	if len(data) > maxReplayBody {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), r.Body), r.Body}
		return nil, false, nil
	}
	return func() io.ReadCloser { return io.NopCloser(bytes.NewReader(data)) }, true, nil
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

var headerPool = sync.Pool{New: func() any { return new(headerSnapshot) }}

// headerSnapshot is a copy of a response header as it was before the
// upstream answered, to restore it before a replay. It is Header.Clone
// without the allocations: its slices are reused from the pool, and only
// restore (on a replay) allocates.
type headerSnapshot struct {
	keys []string
	lens []int // values of each key; -1 for a nil slice (kept, as Clone does)
	vals []string
}

func (s *headerSnapshot) take(h http.Header) {
	s.keys, s.lens, s.vals = s.keys[:0], s.lens[:0], s.vals[:0]
	for k, v := range h {
		s.keys = append(s.keys, k)
		if v == nil {
			s.lens = append(s.lens, -1)
			continue
		}
		s.lens = append(s.lens, len(v))
		s.vals = append(s.vals, v...)
	}
}

// restore makes h what it was at take, with slices of its own.
func (s *headerSnapshot) restore(h http.Header) {
	clear(h)
	i := 0
	for j, k := range s.keys {
		n := s.lens[j]
		if n < 0 {
			h[k] = nil
			continue
		}
		h[k] = append(make([]string, 0, n), s.vals[i:i+n]...)
		i += n
	}
}

// statusWriter records the final status written through it. Informational
// (1xx) answers come before the final one and are not recorded, as Caddy's
// ResponseRecorder does not record them.
type statusWriter struct {
	*caddyhttp.ResponseWriterWrapper
	status int
}

func (sw *statusWriter) WriteHeader(status int) {
	if sw.status == 0 && (status < 100 || status > 199) {
		sw.status = status
	}
	sw.ResponseWriterWrapper.WriteHeader(status)
}

func (sw *statusWriter) Write(p []byte) (int, error) {
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	return sw.ResponseWriterWrapper.Write(p)
}
