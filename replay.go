package upstreamoauth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// serveWatching forwards r with tok and watches the upstream's answer: one
// with a renew_on status retires tok (if it is still current, and no
// retirement happened just before: cache.Source.Retire spaces them), and
// the request is replayed once with the new token when its body was kept.
// The request body streams to the upstream as the client sends it (a
// bodyRecorder keeps what the upstream read, up to 64 KiB); a refusal is
// held back only while its body is at most 64 KiB, and streams through
// beyond.
func (h *Handler) serveWatching(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, src *requestSource, tok *grants.Token, value string) error {
	body := watchBody(r, h.header, true)
	rw := newRefusalWriter(w, h.renewOn, h.layout, body.mayReplay())
	defer rw.release()
	h.setToken(r, value)
	err := next.ServeHTTP(rw, r)
	if rw.status == 0 || !slices.Contains(h.renewOn, rw.status) {
		return err // passed through, or nothing written: not a refusal
	}
	// The upstream refused the token: retire it (once, however many
	// requests saw it refused, and not sooner than the spacing allows).
	if src.cs.Retire(tok) {
		metricUpstreamRenewal(src.p.metric, rw.status)
	}
	if !rw.held || err != nil {
		return err // streamed through already (over 64 KiB, or not replayable)
	}
	tok2, value2, terr := h.token(w, r, src)
	if terr != nil {
		// The 502 goes out with the header as it was before the upstream
		// answered, plus token's Retry-After: none of the refused answer's
		// (its Content-Length would cut the error's body short).
		retryAfter := w.Header().Values("Retry-After")
		rw.restoreHeader()
		if retryAfter != nil {
			w.Header()["Retry-After"] = retryAfter
		}
		return terr
	}
	replay, ok := body.replay()
	if tok2 == tok || !ok {
		// The token stays (its retirement must wait, or it was not ours
		// to retire), or the body cannot be sent again: the upstream's
		// answer passes on unchanged.
		return rw.writeHeld()
	}
	rw.restoreHeader()
	r = withOwnVars(r)
	h.setToken(r, value2)
	r.Body = replay
	return next.ServeHTTP(w, r)
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

// refusalWriter passes the upstream's answer through, except one with a
// renew_on status while hold is set: that one it holds back (status and
// body, up to 64 KiB), so that the request can be replayed instead. A held
// body that grows past 64 KiB is written out, and the rest streams through.
// Informational (1xx) answers pass through and are not taken for the
// status, as Caddy's ResponseRecorder does not take them.
//
// It keeps a copy of the response header as it was before anything
// downstream touched it (taken at the first Header call), to restore
// before a replay. Writers are pooled: net/http forbids using a
// ResponseWriter once ServeHTTP has returned, and reverse_proxy waits for
// its streams before it returns; a writer that was unwrapped (a hijacked
// connection, deadlines) or switched protocols is not reused all the same.
type refusalWriter struct {
	http.ResponseWriter
	renewOn []int
	layout  *headerLayout
	hold    bool // a refusal may be held: the request could be replayed
	held    bool // the answer is held back in buf
	snapped bool // snap holds the header before the upstream answered
	keep    bool // not to be reused (unwrapped, or switched protocols)
	status  int  // the final status written, 0 before

	buf  *bytes.Buffer // the held body
	snap headerSnapshot
}

var refusalPool = sync.Pool{New: func() any { return new(refusalWriter) }}

func newRefusalWriter(w http.ResponseWriter, renewOn []int, layout *headerLayout, hold bool) *refusalWriter {
	rw := refusalPool.Get().(*refusalWriter)
	rw.ResponseWriter, rw.renewOn, rw.layout, rw.hold = w, renewOn, layout, hold
	return rw
}

// Header returns the response header, copying it first the first time.
func (rw *refusalWriter) Header() http.Header {
	h := rw.ResponseWriter.Header()
	if !rw.snapped && rw.hold {
		rw.snapped = true
		rw.snap.take(h, rw.layout)
	}
	return h
}

// restoreHeader makes the response header what it was at the first
// Header call.
func (rw *refusalWriter) restoreHeader() {
	if rw.snapped {
		rw.snap.restore(rw.ResponseWriter.Header())
	}
}

func (rw *refusalWriter) WriteHeader(status int) {
	if rw.status != 0 {
		if !rw.held {
			rw.ResponseWriter.WriteHeader(status) // superfluous: net/http says so
		}
		return
	}
	if status >= 100 && status <= 199 {
		rw.keep = rw.keep || status == http.StatusSwitchingProtocols
		rw.ResponseWriter.WriteHeader(status)
		return
	}
	rw.Header() // the copy predates the upstream's header, if not taken yet
	rw.status = status
	if rw.hold && slices.Contains(rw.renewOn, status) {
		rw.held = true
		rw.buf = heldPool.Get().(*bytes.Buffer)
		rw.buf.Reset()
		return
	}
	rw.ResponseWriter.WriteHeader(status)
}

func (rw *refusalWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	if !rw.held {
		return rw.ResponseWriter.Write(p)
	}
	if rw.buf.Len()+len(p) <= maxReplayBody {
		return rw.buf.Write(p)
	}
	// Over 64 KiB: no longer held back. What was held goes out, then the
	// rest as it comes; the token is still retired.
	if err := rw.writeHeld(); err != nil {
		return 0, err
	}
	return rw.ResponseWriter.Write(p)
}

// writeHeld writes out the held answer and stops holding.
func (rw *refusalWriter) writeHeld() error {
	if !rw.held {
		return nil
	}
	rw.held = false
	rw.ResponseWriter.WriteHeader(rw.status)
	_, err := rw.ResponseWriter.Write(rw.buf.Bytes())
	return err
}

// Flush flushes what passes through; a held answer stays held.
func (rw *refusalWriter) Flush() {
	if !rw.held {
		_ = http.NewResponseController(rw.ResponseWriter).Flush()
	}
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (rw *refusalWriter) Unwrap() http.ResponseWriter {
	rw.keep = true
	return rw.ResponseWriter
}

// release returns the writer, and its held body's buffer, to their pools.
func (rw *refusalWriter) release() {
	if rw.buf != nil && rw.buf.Cap() <= 2*maxReplayBody {
		heldPool.Put(rw.buf)
	}
	if rw.keep {
		return
	}
	snap := rw.snap
	*rw = refusalWriter{snap: snap}
	refusalPool.Put(rw)
}

var heldPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// headerSnapshot is a copy of a response header, to restore it later. It
// is Header.Clone without the allocations: its slices are reused (with the
// writer that holds it), and only restore (on a replay) allocates.
type headerSnapshot struct {
	keys []string
	lens []int // values of each key; -1 for a nil slice (kept, as Clone does)
	vals []string
}

// take copies h. A header at this point of a handler chain has the same
// keys on every request (what the server and the handlers before this one
// set), so layout remembers the last keys seen: when h has just those, it
// is copied by looking each up, which is several times cheaper than ranging
// over the map (whose every range starts at a random place).
func (s *headerSnapshot) take(h http.Header, layout *headerLayout) {
	if keys := layout.keys.Load(); keys != nil && len(*keys) == len(h) && s.takeKeys(h, *keys) {
		return
	}
	s.keys, s.lens, s.vals = s.keys[:0], s.lens[:0], s.vals[:0]
	for k, v := range h {
		s.add(k, v)
	}
	keys := slices.Clone(s.keys)
	layout.keys.Store(&keys)
}

// takeKeys copies h, whose keys are keys (if it has them all).
func (s *headerSnapshot) takeKeys(h http.Header, keys []string) bool {
	s.keys, s.lens, s.vals = s.keys[:0], s.lens[:0], s.vals[:0]
	for _, k := range keys {
		v, ok := h[k]
		if !ok {
			return false
		}
		s.add(k, v)
	}
	return true
}

func (s *headerSnapshot) add(k string, v []string) {
	s.keys = append(s.keys, k)
	if v == nil {
		s.lens = append(s.lens, -1)
		return
	}
	s.lens = append(s.lens, len(v))
	s.vals = append(s.vals, v...)
}

// headerLayout is the keys of the response header a handler last saw
// before calling next (see headerSnapshot.take).
type headerLayout struct {
	keys atomic.Pointer[[]string]
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

// errBodyTaken is what a reader of the first attempt's request body gets
// once the handler has taken the body back for a replay.
var errBodyTaken = errors.New("upstream_oauth: request body taken back for a replay")

// bodyRecorder wraps a request body: it keeps what the upstream reads, as it
// reads it, up to 64 KiB, so that the request can be replayed, and at the
// end of the body it removes the token header (and Authorization) from the
// request's trailers, where a client could otherwise put its own. Nothing
// is read ahead of the upstream: the body streams as the client sends it.
type bodyRecorder struct {
	r      *http.Request
	header string // the token's header, to delete from trailers
	record bool   // keep what is read, for a replay
	mu     sync.Mutex
	src    io.ReadCloser
	kept   []byte
	over   bool // more than 64 KiB was read: no replay
	eof    bool // src has been read to its end
	taken  bool // the first attempt is over: the handler reads now
	noBody bool // the request has no body: replay with none
}

// noBody is the bodyRecorder of every request without a body: it is
// replayed with none.
var noBody = &bodyRecorder{noBody: true}

// watchBody wraps r.Body in a bodyRecorder where the request may be
// replayed (record, and a body that may be 64 KiB or less) or declares
// trailers, and returns it; nil when it wraps nothing. (Trailers that a
// request does not declare are not forwarded: net/http puts them in a map
// of its own, not r.Trailer.)
func watchBody(r *http.Request, header string, record bool) *bodyRecorder {
	scrubTrailer(r, header)
	// A server request with ContentLength 0 has no body (an unknown length
	// is -1), though Caddy wraps its r.Body.
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		if record {
			return noBody
		}
		return nil
	}
	record = record && r.ContentLength <= maxReplayBody
	if !record && r.Trailer == nil {
		return nil
	}
	b := &bodyRecorder{r: r, header: header, src: r.Body, record: record}
	r.Body = b
	return b
}

// mayReplay reports whether the request might be replayed: its body has
// not (yet) grown past 64 KiB.
func (b *bodyRecorder) mayReplay() bool {
	if b == nil {
		return false
	}
	if b.noBody {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.record && !b.over
}

func (b *bodyRecorder) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.taken {
		return 0, errBodyTaken
	}
	return b.readLocked(p)
}

func (b *bodyRecorder) readLocked(p []byte) (int, error) {
	n, err := b.src.Read(p)
	if b.record && !b.over {
		if len(b.kept)+n > maxReplayBody {
			b.over, b.kept = true, nil
		} else {
			b.kept = append(b.kept, p[:n]...)
		}
	}
	if err == io.EOF {
		b.eof = true
		// net/http has just merged the trailers it read into r.Trailer;
		// reverse_proxy copies them when this Read returns.
		scrubTrailer(b.r, b.header)
	}
	return n, err
}

// Close does not close the client's body: the server does, after the
// handler (a replay may still need it).
func (b *bodyRecorder) Close() error { return nil }

// replay returns a body for the replay: what was kept, once the body was
// read to its end (reading the rest, up to 64 KiB in all, when the upstream
// answered before reading it all, as after an Expect: 100-continue). ok is
// false when the body cannot be sent again, or while the first attempt's
// transport is still in a read of it (waiting on the client, who may be
// waiting for the answer): then the refusal passes through.
func (b *bodyRecorder) replay() (io.ReadCloser, bool) {
	if b == nil {
		return nil, false
	}
	if b.noBody {
		return http.NoBody, true
	}
	if !b.mu.TryLock() {
		return nil, false
	}
	defer b.mu.Unlock()
	b.taken = true // any reader of the first attempt gets an error now
	if !b.record {
		return nil, false
	}
	var chunk [4 << 10]byte
	for !b.eof && !b.over {
		if _, err := b.readLocked(chunk[:]); err != nil && err != io.EOF {
			return nil, false
		}
	}
	if b.over {
		return nil, false
	}
	// The replay reads the kept bytes; at their end, the trailers are
	// scrubbed again (reverse_proxy copies them from r.Trailer).
	return &replayBody{Reader: bytes.NewReader(b.kept), r: b.r, header: b.header}, true
}

// replayBody is the body of a replayed request.
type replayBody struct {
	*bytes.Reader
	r      *http.Request
	header string
}

func (rb *replayBody) Read(p []byte) (int, error) {
	n, err := rb.Reader.Read(p)
	if err == io.EOF {
		scrubTrailer(rb.r, rb.header)
	}
	return n, err
}

func (rb *replayBody) Close() error { return nil }

// scrubTrailer deletes the token's header, and Authorization, from r's
// trailers: the gateway's header is the only credential the upstream sees.
func scrubTrailer(r *http.Request, header string) {
	if r == nil || r.Trailer == nil {
		return
	}
	delete(r.Trailer, header)
	delete(r.Trailer, defaultHeader)
}
