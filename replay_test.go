package upstreamoauth

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
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

// TestRenewOnOffWrapsNothing: with renew_on off, the handler passes the
// response writer and the request body to next as it got them.
func TestRenewOnOffWrapsNothing(t *testing.T) {
	h := &Handler{Name: t.Name(), RenewOn: []int{}}
	provisionTest(t, h)
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader([]byte("body")))
	body := r.Body
	next := caddyhttp.HandlerFunc(func(got http.ResponseWriter, gr *http.Request) error {
		if got != w {
			t.Errorf("next got a %T, want the handler's own writer: renew_on off wraps nothing", got)
		}
		if gr.Body != body {
			t.Errorf("next got a %T body, want the request's own", gr.Body)
		}
		return nil
	})
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
}

// chunkWriter is a ResponseWriter that counts what reached it, so that a
// test can tell what was held back.
type chunkWriter struct {
	*httptest.ResponseRecorder
	wrote int
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	c.wrote += len(p)
	return c.ResponseRecorder.Write(p)
}

// TestRefusalBodyBounded: a refusal is held back only up to 64 KiB; past
// that it streams through as the upstream writes it (before: held whole, a
// 50 MB body in memory per request), and the token is still retired.
func TestRefusalBodyBounded(t *testing.T) {
	h := &Handler{Name: t.Name()}
	n := provisionTest(t, h)
	w := &chunkWriter{ResponseRecorder: httptest.NewRecorder()}
	const total = 1 << 20
	chunk := bytes.Repeat([]byte("r"), 4<<10)
	var heldMost int
	next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
		rw.WriteHeader(http.StatusUnauthorized)
		for written := 0; written < total; written += len(chunk) {
			if _, err := rw.Write(chunk); err != nil {
				return err
			}
			heldMost = max(heldMost, written+len(chunk)-w.wrote)
		}
		return nil
	})
	if err := h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil), next); err != nil {
		t.Fatal(err)
	}
	if heldMost > maxReplayBody+len(chunk) {
		t.Errorf("up to %d bytes of the refusal were held back at once; the contract: at most 64 KiB, the rest streams through", heldMost)
	}
	if w.Code != http.StatusUnauthorized || w.Body.Len() != total {
		t.Errorf("the client got %d with %d bytes, want the upstream's 401 with all %d", w.Code, w.Body.Len(), total)
	}
	// The retirement's token request runs in the background: the next
	// request waits for it.
	ok := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	if err := h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil), ok); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 2 {
		t.Errorf("token requests: %d, want 2 (a refusal that streams through still retires the token)", got)
	}
}

// TestReplayRestoresHeaderAndBody: a small refusal is held back whole; the
// replay goes out with the response header as it was before the upstream
// answered and the body the client sent, which the first attempt read as
// it streamed.
func TestReplayRestoresHeaderAndBody(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	w := httptest.NewRecorder()
	w.Header().Set("X-Before", "kept")
	attempts := 0
	var bodies []string
	next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
		attempts++
		b, _ := io.ReadAll(r.Body)
		r.Body.Close() // as a transport does once it has sent the body
		bodies = append(bodies, string(b))
		if attempts == 1 {
			rw.Header().Set("Www-Authenticate", "Bearer")
			rw.WriteHeader(http.StatusUnauthorized)
			_, _ = rw.Write([]byte("refused"))
			return nil
		}
		rw.Header().Set("X-Replayed", "yes")
		rw.WriteHeader(http.StatusOK)
		return nil
	})
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader([]byte("client body")))
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || w.Code != http.StatusOK {
		t.Fatalf("attempts %d, status %d; want a replay answered 200", attempts, w.Code)
	}
	if bodies[0] != "client body" || bodies[1] != "client body" {
		t.Errorf("bodies %q, want the client's body in both attempts", bodies)
	}
	if w.Header().Get("X-Before") != "kept" || w.Header().Get("Www-Authenticate") != "" || w.Header().Get("X-Replayed") != "yes" {
		t.Errorf("header after the replay: %v; want the one from before, without the refusal's", w.Header())
	}
	if strings.Contains(w.Body.String(), "refused") {
		t.Errorf("the refusal's body reached the client: %q", w.Body.String())
	}
}

// attemptBody is a client's request body that tells who reads it: reads
// are the upstream's while inAttempt is set (next is running), the
// handler's own otherwise. A read of the handler's own fails the test and
// gets an error, so that a handler waiting for the body cannot hang it.
type attemptBody struct {
	t         *testing.T
	data      []byte
	inAttempt bool
	endless   bool // a stream: after data, the client waits for the answer
	own       int  // reads by the handler itself
}

func (b *attemptBody) Read(p []byte) (int, error) {
	if !b.inAttempt {
		b.own++
		return 0, errors.New("attemptBody: read by the handler itself")
	}
	if len(b.data) == 0 {
		if b.endless {
			b.t.Fatal("the upstream read past what the client has sent: this test's upstream must not")
		}
		return 0, io.EOF
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

// attempts returns next handlers that answer, attempt by attempt, with
// the given handlers (marking b's reads as the upstream's), and the count
// of attempts made.
func attempts(b *attemptBody, each ...func(http.ResponseWriter, *http.Request)) (caddyhttp.Handler, *int) {
	n := new(int)
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		*n++
		if *n > len(each) {
			b.t.Fatalf("attempt %d: the handler replays at most once", *n)
		}
		b.inAttempt = true
		defer func() { b.inAttempt = false }()
		each[*n-1](w, r)
		return nil
	}), n
}

func refuseUnread(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) }

// TestReplayLeavesUnreadBodyToUpstream: the upstream refused before reading
// the body (as after an Expect: 100-continue); the replay sends the body,
// which its upstream reads as the client sends it: the handler reads none
// of it itself, so that it never waits for the client, nor asks it for its
// body on its own.
func TestReplayLeavesUnreadBodyToUpstream(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	body := &attemptBody{t: t, data: []byte("the client's body")}
	var replayed []byte
	next, n := attempts(body, refuseUnread, func(w http.ResponseWriter, r *http.Request) {
		replayed, _ = io.ReadAll(r.Body)
	})
	r := httptest.NewRequest(http.MethodPost, "/upload", body)
	r.ContentLength = int64(len(body.data))
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if body.own != 0 {
		t.Errorf("the handler read the client's body itself (%d reads) before the replay; the contract: the body streams to the upstream as the client sends it", body.own)
	}
	if *n != 2 || string(replayed) != "the client's body" {
		t.Errorf("%d attempts, the replay's upstream read %q; want a replay with the client's whole body", *n, replayed)
	}
}

// TestRefusalNotReplayedReadsNoBody: a refusal whose retirement must wait (one came
// just before) passes through, and the handler reads nothing of the body
// the upstream did not read.
func TestRefusalNotReplayedReadsNoBody(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	refuse := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	})
	// This one retires the token: the next retirement has to wait.
	if err := h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil), refuse); err != nil {
		t.Fatal(err)
	}
	body := &attemptBody{t: t, data: []byte("the client's body")}
	// Should the retirement not have to wait (a slow run), the request is
	// replayed: then its upstream may read the body.
	next, _ := attempts(body, refuseUnread, refuseUnread)
	r := httptest.NewRequest(http.MethodPost, "/upload", body)
	r.ContentLength = int64(len(body.data))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusUnauthorized {
		t.Errorf("status %d, want the upstream's 401", w.Code)
	}
	if body.own != 0 {
		t.Errorf("the handler read the client's body itself (%d reads), though the refusal passed through; nothing may wait for a body that nobody needs", body.own)
	}
}

// TestRefusalOfStreamOfUnknownLength: a client streams a body of unknown
// length and waits for the answer before sending the rest; the upstream
// read the first part and refused. The body cannot be known to be small
// enough to keep without reading the rest, which could take forever: the
// refusal passes through, and the handler reads nothing.
func TestRefusalOfStreamOfUnknownLength(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	body := &attemptBody{t: t, data: []byte("first message"), endless: true}
	next, n := attempts(body, func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64)
		_, _ = r.Body.Read(buf)
		w.WriteHeader(http.StatusUnauthorized)
	})
	r := httptest.NewRequest(http.MethodPost, "/stream", body)
	r.ContentLength = -1
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if body.own != 0 {
		t.Errorf("the handler read the rest of a body of unknown length itself (%d reads): a client that waits for the answer would wait forever; the contract: a body not kept is not replayed, the answer passes through", body.own)
	}
	if *n != 1 || w.Code != http.StatusUnauthorized {
		t.Errorf("%d attempts, status %d; want the upstream's 401 passed through", *n, w.Code)
	}
}

// TestReplayOfConnectLeavesStream: an extended CONNECT (a WebSocket over
// HTTP/2, whose stream reverse_proxy keeps aside while it asks the upstream
// to upgrade) refused before any of the stream was read is replayed with
// the stream as it is; one whose upstream read some of it is not replayed.
// Either way the handler reads nothing of the stream.
func TestReplayOfConnectLeavesStream(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	connect := func(body *attemptBody) *http.Request {
		r := httptest.NewRequest(http.MethodConnect, "/chat", body)
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
		r.Header.Set(":protocol", "websocket")
		r.ContentLength = -1
		return r
	}
	body := &attemptBody{t: t, data: []byte("hello"), endless: true}
	var got []byte
	next, n := attempts(body, refuseUnread, func(w http.ResponseWriter, r *http.Request) {
		got = make([]byte, len("hello"))
		_, _ = io.ReadFull(r.Body, got)
		w.WriteHeader(http.StatusOK)
	})
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, connect(body), next); err != nil {
		t.Fatal(err)
	}
	if body.own != 0 {
		t.Errorf("the handler read the CONNECT stream itself (%d reads); it has no end to wait for", body.own)
	}
	if *n != 2 || w.Code != http.StatusOK || string(got) != "hello" {
		t.Errorf("%d attempts, status %d, the replay read %q; want a replay that gets the stream as the client sends it", *n, w.Code, got)
	}
}

// TestRefusalThen502KeepsNoUpstreamHeader: when no new token can be had
// after a refusal, the handler's 502 carries none of the refused answer's
// header, its Retry-After included: a Retry-After only while the source
// backs off, and then the source's.
func TestRefusalThen502KeepsNoUpstreamHeader(t *testing.T) {
	refusal := func(w http.ResponseWriter) {
		w.Header().Set("Retry-After", "3600")
		w.Header().Set("Www-Authenticate", "Bearer")
		w.WriteHeader(http.StatusUnauthorized)
	}
	check := func(t *testing.T, err error, w *httptest.ResponseRecorder, wantRetryAfter string) {
		t.Helper()
		if he, ok := errors.AsType[caddyhttp.HandlerError](err); !ok || he.StatusCode != http.StatusBadGateway {
			t.Fatalf("got %v, want a 502 error: no token after the refusal", err)
		}
		if got := w.Header().Get("Retry-After"); got != wantRetryAfter || len(w.Header().Values("Retry-After")) > 1 {
			t.Errorf("the 502 carries Retry-After %q, want %q: the contract: a Retry-After on the 502 only while the source backs off (the source's, none of the upstream's 3600)", w.Header().Values("Retry-After"), wantRetryAfter)
		}
		if got := w.Header().Get("Www-Authenticate"); got != "" {
			t.Errorf("the 502 carries the upstream's Www-Authenticate %q", got)
		}
	}

	t.Run("source stopped", func(t *testing.T) {
		// As on a reload while the request was at the upstream: no
		// backoff, no Retry-After.
		h := &Handler{Name: t.Name()}
		provisionTest(t, h)
		w := httptest.NewRecorder()
		next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
			if err := h.Cleanup(); err != nil { // stops the source
				t.Fatal(err)
			}
			refusal(rw)
			return nil
		})
		check(t, h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil), next), w, "")
	})

	t.Run("token request refused", func(t *testing.T) {
		// The provider answers the renewal 503 with Retry-After: 7; the
		// source backs off as long.
		var n atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) > 1 {
				w.Header().Set("Retry-After", "7")
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"access_token":"first","token_type":"bearer","expires_in":3600}`)
		}))
		t.Cleanup(srv.Close)
		if err := benchConfigOnce(); err != nil {
			t.Fatal(err)
		}
		h := &Handler{Name: t.Name(), TokenURL: srv.URL + "/token", ClientID: "module-test", ClientSecret: "module-test-secret"}
		ctx, cancel := caddy.NewContext(caddy.ActiveContext())
		t.Cleanup(cancel)
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Cleanup() })
		w := httptest.NewRecorder()
		next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
			refusal(rw)
			return nil
		})
		check(t, h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil), next), w, "7")
	})
}

// caddyRequest is r as Caddy's server prepares it for its handlers: a
// replacer, vars and route groups in its context. group, if not empty, is
// a handle group that the route holding the handler already satisfied.
func caddyRequest(r *http.Request, group string) *http.Request {
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	if group != "" {
		r.Context().Value(caddy.CtxKey("route_group")).(map[string]struct{})[group] = struct{}{}
	}
	return r
}

// TestReplayRestoresRequest: the replay starts from the request as it
// reached the handler, whatever the first attempt's handlers changed in
// place (URL, method, host, header values, content length, handle groups,
// vars), and Caddy's placeholders see the replay's request. The request's
// ID, made in the first attempt, stays the same: it names the client's
// request.
func TestReplayRestoresRequest(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	r := httptest.NewRequest(http.MethodPost, "http://gateway.example/api/sims?page=1", strings.NewReader("body"))
	r.Header.Set("X-Sent", "a")
	r.Header.Set("X-Dropped", "kept")
	r = caddyRequest(r, "group0")
	caddyhttp.SetVar(r.Context(), "before", "kept")
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)

	type view struct {
		path, rawQuery, method, host, requestURI string
		length                                   int64
		sent, dropped, added                     []string
		groups                                   map[string]struct{}
		before, during                           any
		placeholders                             string
	}
	look := func(r *http.Request) view {
		return view{
			path: r.URL.Path, rawQuery: r.URL.RawQuery, method: r.Method, host: r.Host, requestURI: r.RequestURI,
			length: r.ContentLength,
			sent:   slices.Clone(r.Header["X-Sent"]), dropped: slices.Clone(r.Header["X-Dropped"]), added: slices.Clone(r.Header["X-Added"]),
			groups: maps.Clone(r.Context().Value(caddy.CtxKey("route_group")).(map[string]struct{})),
			before: caddyhttp.GetVar(r.Context(), "before"), during: caddyhttp.GetVar(r.Context(), "during"),
			placeholders: repl.ReplaceAll("{http.request.method} {http.request.uri} {http.vars.during}", ""),
		}
	}
	var seen []view
	var ids []string
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		seen = append(seen, look(r))
		ids = append(ids, repl.ReplaceAll("{http.request.uuid}", ""))
		_, _ = io.ReadAll(r.Body)
		r.Body.Close() // as a transport does once it has sent the body
		if len(seen) > 1 {
			return nil
		}
		// What rewrite, uri, request_header, method, request_body, handle
		// and vars do to the request, in place.
		r.URL.Path, r.URL.RawQuery, r.URL.RawPath = "/v1/sims", "", ""
		r.RequestURI = r.URL.RequestURI()
		r.Method, r.Host, r.ContentLength = http.MethodPut, "backend.internal", 99
		r.Header["X-Sent"][0] = "aa"
		r.Header.Add("X-Added", "added")
		r.Header.Del("X-Dropped")
		r.Context().Value(caddy.CtxKey("route_group")).(map[string]struct{})["group1"] = struct{}{}
		caddyhttp.SetVar(r.Context(), "during", "set")
		caddyhttp.SetVar(r.Context(), "before", "changed")
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	})
	want := look(r)
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Fatalf("%d attempts, want a replay", len(seen))
	}
	if !reflect.DeepEqual(seen[0], want) {
		t.Fatalf("the first attempt saw %+v, want %+v", seen[0], want)
	}
	if !reflect.DeepEqual(seen[1], want) {
		t.Errorf("the replay saw\n\t%+v\nwant the request as it reached the handler\n\t%+v", seen[1], want)
	}
	if ids[0] == "" || ids[1] != ids[0] {
		t.Errorf("{http.request.uuid}: %q in the first attempt, %q in the replay; want the same ID, the client's request's", ids[0], ids[1])
	}
}

// TestRefusalBrokenOffKeepsNoUpstreamHeader: the upstream's refusal was
// held back, then its body broke off (reverse_proxy returns an error): the
// error answer Caddy writes carries none of the refusal's header, whose
// Content-Length would cut that answer short.
func TestRefusalBrokenOffKeepsNoUpstreamHeader(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	w := httptest.NewRecorder()
	w.Header().Set("X-Before", "kept")
	next := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
		rw.Header().Set("Www-Authenticate", "Bearer")
		rw.Header().Set("Content-Length", "1000")
		rw.WriteHeader(http.StatusUnauthorized)
		_, _ = rw.Write([]byte("the first part of a refusal"))
		return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF) // as reverse_proxy, the body broken off
	})
	err := h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil), next)
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); !ok || he.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %v, want reverse_proxy's 502 error passed on", err)
	}
	if got := w.Header().Get("Content-Length"); got != "" {
		t.Errorf("the header left for Caddy's error answer carries the refusal's Content-Length %q: it would cut the error's body short", got)
	}
	if got := w.Header().Get("Www-Authenticate"); got != "" {
		t.Errorf("the header left for Caddy's error answer carries the refusal's Www-Authenticate %q", got)
	}
	if got := w.Header().Get("X-Before"); got != "kept" {
		t.Errorf("X-Before %q: the header as it was before the upstream answered must stay", got)
	}
}

// TestBodyClosedByFirstAttemptReadsNoMore: reverse_proxy closes a body it
// has read from, so that a retry of its own (lb_retries) fails rather than
// send what is left of the body as if it were the whole; the body the
// handler gives it must keep to that, though a replay still gets all of it.
func TestBodyClosedByFirstAttemptReadsNoMore(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	var afterClose error
	var replayed []byte
	attempt := 0
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		attempt++
		if attempt == 2 {
			replayed, _ = io.ReadAll(r.Body)
			r.Body.Close()
			w.WriteHeader(http.StatusOK)
			return nil
		}
		part := make([]byte, 5)
		_, _ = io.ReadFull(r.Body, part)
		r.Body.Close() // the transport gave up on this upstream
		_, afterClose = r.Body.Read(make([]byte, 64))
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	})
	r := httptest.NewRequest(http.MethodPost, "/upload", strings.NewReader("0123456789abcdef"))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if afterClose == nil || afterClose == io.EOF {
		t.Errorf("a read of the first attempt after it closed the body got %v; want an error, as from a closed body: a retry must not send the rest of the body as the whole", afterClose)
	}
	if attempt != 2 || string(replayed) != "0123456789abcdef" || w.Code != http.StatusOK {
		t.Errorf("%d attempts, the replay read %q, status %d; want a replay with the client's whole body", attempt, replayed, w.Code)
	}
}

// TestReplayBodyClosedReadsNoMore: the replay's body keeps to the same rule
// as the first attempt's: once the replay's reverse_proxy closed it, a
// retry of its own reads nothing more of it, rather than send what is left
// as if it were the whole.
func TestReplayBodyClosedReadsNoMore(t *testing.T) {
	h := &Handler{Name: t.Name()}
	provisionTest(t, h)
	var part []byte
	var afterClose error
	attempt := 0
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		attempt++
		if attempt == 1 {
			_, _ = io.ReadAll(r.Body)
			r.Body.Close()
			w.WriteHeader(http.StatusUnauthorized)
			return nil
		}
		part = make([]byte, 5)
		_, _ = io.ReadFull(r.Body, part)
		r.Body.Close() // the replay's transport gave up on this upstream
		_, afterClose = r.Body.Read(make([]byte, 64))
		w.WriteHeader(http.StatusBadGateway)
		return nil
	})
	r := httptest.NewRequest(http.MethodPost, "/upload", strings.NewReader("0123456789abcdef"))
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if attempt != 2 || string(part) != "01234" {
		t.Fatalf("%d attempts, the replay read %q first; want a replay starting with the client's body", attempt, part)
	}
	if afterClose == nil || afterClose == io.EOF {
		t.Errorf("a read of the replay after it closed the body got %v; want an error, as from a closed body: a retry must not send the rest of the body as the whole", afterClose)
	}
}
