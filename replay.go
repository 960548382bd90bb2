package upstreamoauth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// serveWatching forwards r with tok and watches the upstream's answer: one
// with a renew_on status retires tok (if it is still current, and no
// retirement happened just before: cache.Source.Retire spaces them), and
// the request is replayed once with the new token when its body can be sent
// again. The request body streams to the upstream as the client sends it (a
// bodyRecorder keeps what the upstream read, up to 64 KiB); a refusal is
// held back only while its body is at most 64 KiB, and streams through
// beyond.
//
// The replay is the request as it reached this handler: what the handlers
// after it changed in place in the first attempt (requestSnapshot) is
// undone first, so that they do it again rather than twice.
func (h *Handler) serveWatching(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, src *requestSource, tok *grants.Token, value string) error {
	body := watchBody(r, h.header, true)
	rw := newRefusalWriter(w, h.renewOn, h.layout, body.mayReplay())
	defer rw.release()
	h.setToken(r, value)
	if rw.hold {
		rw.req.take(r, h.layout)
	}
	err := next.ServeHTTP(rw, r)
	if rw.status == 0 || !slices.Contains(h.renewOn, rw.status) {
		return err // passed through, or nothing written: not a refusal
	}
	// The upstream refused the token: retire it (once, however many
	// requests saw it refused, and not sooner than the spacing allows).
	if src.cs.Retire(tok) {
		metricUpstreamRenewal(src.p.metric, rw.status)
	}
	if !rw.held {
		return err // streamed through already (over 64 KiB, or not replayable)
	}
	if err != nil {
		// The refusal was held, then its attempt failed (its body broke
		// off): Caddy's error answer goes out with the header as it was
		// before the upstream answered, none of the refusal's (its
		// Content-Length would cut the error's body short).
		rw.restoreHeader()
		return err
	}
	tok2, value2, terr := h.token(w, r, src)
	if terr != nil {
		// The 502 goes out with the header as it was before the upstream
		// answered, plus token's Retry-After: none of the refused answer's
		// (its Content-Length would cut the error's body short, and its
		// Retry-After is not the source's).
		rw.restoreHeader()
		setRetryAfter(w.Header(), terr)
		return terr
	}
	if tok2 == tok {
		// The token stays (its retirement must wait, or it was not ours
		// to retire): no replay, so nothing touches the body, and the
		// upstream's answer passes on unchanged.
		return rw.writeHeld()
	}
	replay, ok := body.replay()
	if !ok {
		return rw.writeHeld() // the body cannot be sent again
	}
	rw.restoreHeader()
	rw.req.restore(r)
	h.setToken(r, value2)
	r.Body = replay
	return next.ServeHTTP(w, r)
}

// routeGroupsKey is where Caddy keeps, in a request's context, the route
// groups (handle blocks) that a route of theirs already matched, as a
// map[string]struct{} (caddyhttp's routeGroupCtxKey, unexported).
const routeGroupsKey = caddy.CtxKey("route_group")

// requestSnapshot is what the handlers after this one may change on a
// request in place (Caddy v2.11: rewrite, uri and handle_path change the
// URL, method and RequestURI; request_header the header, its values too,
// and Host; request_body the length; handle marks its route group as
// used; vars, map outputs and reverse_proxy set vars), as it was before the
// first attempt, to restore before the replay. It is taken on every request
// that may be replayed, so it allocates nothing (but when a handler first
// sees other keys: see headerSnapshot.take): its slices are reused with the
// writer that holds it, and only restore allocates. Like the response
// header's copy, it keeps what it copied until the writer's next request
// (or until the pool drops the writer).
type requestSnapshot struct {
	url                      url.URL
	method, host, requestURI string
	length                   int64
	header                   headerSnapshot
	groups                   []string // the route groups already used (a layout's keys: read only)
	varKeys                  []string // the vars' keys (a layout's: read only)
	varValues                []any
}

// take copies what r's handlers may change.
func (s *requestSnapshot) take(r *http.Request, layout *layouts) {
	if r.URL != nil {
		s.url = *r.URL
	}
	s.method, s.host, s.requestURI, s.length = r.Method, r.Host, r.RequestURI, r.ContentLength
	s.header.take(r.Header, &layout.request)
	ctx := r.Context()
	s.groups = nil
	if groups, ok := ctx.Value(routeGroupsKey).(map[string]struct{}); ok && len(groups) > 0 {
		s.groups = keysOf(groups, &layout.groups)
	}
	s.varKeys, s.varValues = nil, s.varValues[:0]
	if vars, ok := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		s.takeVars(vars, &layout.vars)
	}
}

// takeVars copies vars, looking their values up by the keys of the last
// vars seen when vars has just those (see headerSnapshot.take).
func (s *requestSnapshot) takeVars(vars map[string]any, layout *keyLayout) {
	if keys := layout.keys.Load(); keys != nil && len(*keys) == len(vars) {
		for _, k := range *keys {
			v, ok := vars[k]
			if !ok {
				break
			}
			s.varValues = append(s.varValues, v)
		}
		if len(s.varValues) == len(vars) {
			s.varKeys = *keys
			return
		}
		s.varValues = s.varValues[:0]
	}
	keys := make([]string, 0, len(vars))
	for k, v := range vars {
		keys = append(keys, k)
		s.varValues = append(s.varValues, v)
	}
	layout.keys.Store(&keys)
	s.varKeys = keys
}

// keysOf returns m's keys: layout's, when m has just those (each looked
// up: see headerSnapshot.take), else m's own, which layout remembers.
func keysOf(m map[string]struct{}, layout *keyLayout) []string {
	if keys := layout.keys.Load(); keys != nil && len(*keys) == len(m) {
		all := true
		for _, k := range *keys {
			if _, ok := m[k]; !ok {
				all = false
				break
			}
		}
		if all {
			return *keys
		}
	}
	keys := slices.Collect(maps.Keys(m))
	layout.keys.Store(&keys)
	return keys
}

// restore makes r what it was at take, in place: Caddy's replacer (its
// placeholders) and its server (the access log) hold the pointer r. The URL,
// header and route groups are restored into the objects r has; the vars go
// into a map of their own, in r's context, because a goroutine of the first
// attempt (reverse_proxy's dialer) may still read the first map. The
// request's ID ({http.request.uuid}), should the first attempt have made
// one, stays: it names the client's request, replayed or not.
func (s *requestSnapshot) restore(r *http.Request) {
	if r.URL != nil {
		*r.URL = s.url
	}
	r.Method, r.Host, r.RequestURI, r.ContentLength = s.method, s.host, s.requestURI, s.length
	s.header.restore(r.Header)
	ctx := r.Context()
	if groups, ok := ctx.Value(routeGroupsKey).(map[string]struct{}); ok {
		clear(groups)
		for _, g := range s.groups {
			groups[g] = struct{}{}
		}
	}
	if first, ok := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		vars := make(map[string]any, len(s.varKeys)+1)
		for i, k := range s.varKeys {
			vars[k] = s.varValues[i]
		}
		if _, had := vars[requestIDVar]; !had && first[requestIDVar] != nil {
			vars[requestIDVar] = first[requestIDVar]
		}
		*r = *r.WithContext(context.WithValue(ctx, caddyhttp.VarsCtxKey, vars))
	}
}

// requestIDVar is the var in which Caddy keeps the request's ID, made at
// the first use of {http.request.uuid}.
const requestIDVar = "uuid"

// refusalWriter passes the upstream's answer through, except one with a
// renew_on status while hold is set: that one it holds back (status and
// body, up to 64 KiB), so that the request can be replayed instead. A held
// body that grows past 64 KiB is written out, and the rest streams through.
// Informational (1xx) answers pass through and are not taken for the
// status, as Caddy's ResponseRecorder does not take them.
//
// It keeps a copy of the response header as it was before anything
// downstream touched it (taken at the first Header call), to restore
// before a replay; serveWatching keeps the request's state in req, for the
// same. Writers are pooled: net/http forbids using a ResponseWriter once
// ServeHTTP has returned, and reverse_proxy waits for its streams before it
// returns; a writer that was unwrapped (a hijacked connection, deadlines)
// or switched protocols is not reused all the same.
type refusalWriter struct {
	http.ResponseWriter
	renewOn []int
	layout  *layouts
	hold    bool // a refusal may be held: the request could be replayed
	held    bool // the answer is held back in buf
	snapped bool // snap holds the header before the upstream answered
	keep    bool // not to be reused (unwrapped, or switched protocols)
	status  int  // the final status written, 0 before

	buf  *bytes.Buffer // the held body
	snap headerSnapshot
	req  requestSnapshot
}

var refusalPool = sync.Pool{New: func() any { return new(refusalWriter) }}

func newRefusalWriter(w http.ResponseWriter, renewOn []int, layout *layouts, hold bool) *refusalWriter {
	rw := refusalPool.Get().(*refusalWriter)
	rw.ResponseWriter, rw.renewOn, rw.layout, rw.hold = w, renewOn, layout, hold
	return rw
}

// Header returns the response header, copying it first the first time.
func (rw *refusalWriter) Header() http.Header {
	h := rw.ResponseWriter.Header()
	if !rw.snapped && rw.hold {
		rw.snapped = true
		rw.snap.take(h, &rw.layout.response)
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
	// Field by field: the snapshots' slices stay, for the next request.
	rw.ResponseWriter, rw.renewOn, rw.layout, rw.buf = nil, nil, nil, nil
	rw.hold, rw.held, rw.snapped, rw.status = false, false, false, 0
	refusalPool.Put(rw)
}

var heldPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// headerSnapshot is a copy of a header, to restore it later. It is
// Header.Clone without the allocations: its slices are reused (with the
// writer that holds it), and only restore (on a replay) allocates. Values
// are copied one by one: request_header's replace edits them in place.
type headerSnapshot struct {
	keys []string // a layout's keys: read only
	lens []int    // values of each key; -1 for a nil slice (kept, as Clone does)
	vals []string
}

// take copies h. A header at this point of a handler chain has the same
// keys on most requests (what the server and the handlers before this one
// set; for a request's, what its clients send), so layout remembers the
// last keys seen: when h has just those, it is copied by looking each up,
// which is cheaper than ranging over the map (whose every range starts at a
// random place). Other keys are ranged over, and remembered (an
// allocation, for the next request with them).
func (s *headerSnapshot) take(h http.Header, layout *keyLayout) {
	if keys := layout.keys.Load(); keys != nil && len(*keys) == len(h) && s.takeKeys(h, *keys) {
		s.keys = *keys
		return
	}
	s.lens, s.vals = s.lens[:0], s.vals[:0]
	keys := make([]string, 0, len(h))
	for k, v := range h {
		keys = append(keys, k)
		s.add(v)
	}
	layout.keys.Store(&keys)
	s.keys = keys
}

// takeKeys copies h, whose keys are keys (if it has them all).
func (s *headerSnapshot) takeKeys(h http.Header, keys []string) bool {
	s.lens, s.vals = s.lens[:0], s.vals[:0]
	for _, k := range keys {
		v, ok := h[k]
		if !ok {
			return false
		}
		s.add(v)
	}
	return true
}

// add copies the values of the next key.
func (s *headerSnapshot) add(v []string) {
	switch len(v) {
	case 0:
		if v == nil {
			s.lens = append(s.lens, -1)
			return
		}
		s.lens = append(s.lens, 0)
	case 1:
		s.lens = append(s.lens, 1)
		s.vals = append(s.vals, v[0])
	default:
		s.lens = append(s.lens, len(v))
		s.vals = append(s.vals, v...)
	}
}

// keyLayout is the keys of a map (a header, the vars) that a handler last
// saw before calling next (see headerSnapshot.take).
type keyLayout struct {
	keys atomic.Pointer[[]string]
}

// layouts are a handler's keyLayouts: of the response header, and of the
// request's header, vars and route groups.
type layouts struct {
	response, request, vars, groups keyLayout
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
// is read ahead of the upstream, nor by the handler itself: the body streams
// as the client sends it, to the first attempt and to the replay.
type bodyRecorder struct {
	r       *http.Request
	header  string // the token's header, to delete from trailers
	record  bool   // keep what is read, for a replay
	length  int64  // the request's ContentLength: -1 unknown
	connect bool   // a CONNECT: the body is a stream (a tunnel, a WebSocket over HTTP/2)
	mu      sync.Mutex
	src     io.ReadCloser
	kept    []byte
	over    bool // more than 64 KiB was read: no replay
	eof     bool // src has been read to its end
	taken   bool // the body went to the replay: the first attempt reads no more
	closed  bool // the first attempt closed it: it reads no more
	noBody  bool // the request has no body: replay with none
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
	b := &bodyRecorder{r: r, header: header, src: r.Body, record: record, length: r.ContentLength, connect: r.Method == http.MethodConnect}
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
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
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
// handler (a replay may still need it). But the first attempt reads no more
// of it, as of a closed body: reverse_proxy closes a body it has read from
// so that a retry of its own does not send what is left of it as if it
// were the whole. And a transport closes the body after its last read,
// which tells replay that the transport is done with it (reverse_proxy
// reads the request's trailers on the transport's goroutine at the end of
// the body, so a replay must not change the request before that).
func (b *bodyRecorder) Close() error {
	if b.noBody {
		return nil
	}
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// replay returns the body of the replay: what the first attempt read (kept),
// then the rest of the client's body, which the replay's upstream reads as
// the client sends it. The handler itself reads nothing of the body: it
// never waits for a client, who may be waiting for the answer, nor asks one
// that expects 100-continue for its body on its own (the replay's upstream
// asks, if it wants it). So the rest goes to the replay only when the body
// is known to be small enough: its length is declared (and at most 64 KiB,
// or nothing is recorded); a body of unknown length is replayed only once
// read to its end, and a CONNECT's stream only when nothing of it was read
// (then the stream goes to the replay as it is: nothing of it is needed
// again). ok is false when the body cannot be sent again, or while the
// first attempt's transport may still be at it (in a read, or read to the
// end and not closed yet): then the refusal passes through.
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
	switch {
	case !b.record || b.over:
		return nil, false
	case b.eof && !b.closed:
		return nil, false // the transport may still be handling the body's end
	case b.connect && len(b.kept) > 0:
		return nil, false // part of the stream went to the refused attempt
	case !b.eof && b.length < 0 && !b.connect:
		return nil, false // the rest might make it too large to keep
	}
	b.taken = true // any reader of the first attempt gets an error now
	rb := &replayBody{kept: b.kept, r: b.r, header: b.header}
	if !b.eof {
		rb.rest = b.src
	}
	return rb, true
}

// replayBody is the body of a replayed request: the kept bytes, then the
// rest of the client's body (rest, nil when it was read to its end). At
// the end, the trailers are scrubbed again (reverse_proxy copies them from
// r.Trailer, which net/http fills at the end of the client's body). Once
// closed it reads no more, as bodyRecorder (a transport may close it from
// another goroutine).
type replayBody struct {
	kept   []byte
	rest   io.Reader
	r      *http.Request
	header string
	closed atomic.Bool
}

func (rb *replayBody) Read(p []byte) (int, error) {
	if rb.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	if len(rb.kept) > 0 {
		n := copy(p, rb.kept)
		rb.kept = rb.kept[n:]
		return n, nil
	}
	if rb.rest == nil {
		scrubTrailer(rb.r, rb.header)
		return 0, io.EOF
	}
	n, err := rb.rest.Read(p)
	if err == io.EOF {
		scrubTrailer(rb.r, rb.header)
	}
	return n, err
}

// Close does not close the client's body (the server does), but the
// replay reads no more of it.
func (rb *replayBody) Close() error {
	rb.closed.Store(true)
	return nil
}

// scrubTrailer deletes the token's header, and Authorization, from r's
// trailers: the gateway's header is the only credential the upstream sees.
func scrubTrailer(r *http.Request, header string) {
	if r == nil || r.Trailer == nil {
		return
	}
	delete(r.Trailer, header)
	delete(r.Trailer, defaultHeader)
}
