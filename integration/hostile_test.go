package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// logLine is one JSON line of a gateway's log.
type logLine map[string]any

// text is the line's message and error, as a reader of the log sees them.
func (l logLine) text() string {
	s := fmt.Sprint(l["msg"])
	if e, ok := l["error"]; ok {
		s += ": " + fmt.Sprint(e)
	}
	return s
}

// moduleWarnings returns the warn-level lines of upstream_oauth in log.
func moduleWarnings(log string) []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		logger, _ := l["logger"].(string)
		if l["level"] == "warn" && strings.HasPrefix(logger, "http.handlers.upstream_oauth") {
			out = append(out, l)
		}
	}
	return out
}

// hostileMarker is in every token a hostile answer carries: none may reach
// a log.
const hostileMarker = "hostileTok"

// hostileToken is a token answer with the given JSON fields after
// access_token, which is hostileMarker plus tail (JSON-escaped here).
func hostileToken(tail, rest string) string {
	tok, _ := json.Marshal(hostileMarker + tail)
	return `{"access_token":` + string(tok) + rest + `}`
}

// jsonAnswer answers 200 with body as application/json.
func jsonAnswer(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}
}

// TestHostileTokenAnswers: a token endpoint that answers in ways that must
// not be used. For each, the client gets 502, nothing reaches the backend,
// the gateway logs exactly one warning per token request that says why,
// and no token string of the answer appears in the log.
func TestHostileTokenAnswers(t *testing.T) {
	var backendHits atomic.Int64
	backend := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		backendHits.Add(1)
		w.WriteHeader(http.StatusTeapot)
	}))
	// The target of the redirects: it would hand out a token, if asked.
	var redirectHits atomic.Int64
	redirectTarget := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirectHits.Add(1)
		jsonAnswer(hostileToken("_redirected_Lp0", `,"token_type":"bearer","expires_in":3600`))(w, r)
	}))
	redirect := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, redirectTarget+"/oauth2/token", status)
		}
	}
	big := hostileToken("_big_Qz7", `,"token_type":"bearer","expires_in":3600,"pad":"`+strings.Repeat("x", 1<<20)+`"`)

	cases := []struct {
		name    string
		handler http.HandlerFunc
		server  string   // "tls": self-signed TLS; "plain-as-https": plain HTTP behind https://; else plain
		reason  []string // the warning holds one of these
	}{
		{name: "empty 200", handler: func(w http.ResponseWriter, r *http.Request) {}, reason: []string{"empty body"}},
		{name: "html 200", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte("<html><body>" + hostileMarker + "_html_Wd2</body></html>"))
		}, reason: []string{"not a JSON object"}},
		{name: "no access_token", handler: jsonAnswer(`{"token_type":"bearer","expires_in":3600,"id_token":"` + hostileMarker + `_id_Rt5"}`),
			reason: []string{"no access_token"}},
		{name: "token with CR LF", handler: jsonAnswer(hostileToken("_crlf_Hj2\r\nX-Injected: yes", `,"token_type":"bearer","expires_in":3600`)),
			reason: []string{"CR or LF"}},
		{name: "token with space", handler: jsonAnswer(hostileToken("_space_Vb4 more", `,"token_type":"bearer","expires_in":3600`)),
			reason: []string{"contains a space"}},
		{name: "token with non-ASCII", handler: jsonAnswer(hostileToken("_nonascii_ä€_Kq9", `,"token_type":"bearer","expires_in":3600`)),
			reason: []string{"non-ASCII"}},
		{name: "token_type mac", handler: jsonAnswer(hostileToken("_mac_Ug6", `,"token_type":"mac","expires_in":3600`)),
			reason: []string{`token_type "mac" is not`}},
		{name: "expires_in negative", handler: jsonAnswer(hostileToken("_neg_Ew1", `,"token_type":"bearer","expires_in":-60`)),
			reason: []string{"expires_in -60 is not positive"}},
		{name: "expires_in zero", handler: jsonAnswer(hostileToken("_zero_Ty3", `,"token_type":"bearer","expires_in":0`)),
			reason: []string{"expires_in 0 is not positive"}},
		{name: "expires_in huge", handler: jsonAnswer(hostileToken("_huge_Oi8", `,"token_type":"bearer","expires_in":99999999999`)),
			reason: []string{"longer than a year"}},
		{name: "expires_in non-numeric", handler: jsonAnswer(hostileToken("_nan_Pa5", `,"token_type":"bearer","expires_in":"soon"`)),
			reason: []string{`expires_in "soon" is not a number`}},
		{name: "body over 1 MiB", handler: jsonAnswer(big), reason: []string{"over 1 MiB"}},
		{name: "slow drip past timeout", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			body := hostileToken("_drip_Sx4", `,"token_type":"bearer","expires_in":3600`)
			rc := http.NewResponseController(w)
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			deadline := time.After(5 * time.Second)
			for i := 0; i < len(body); i++ {
				if _, err := w.Write([]byte{body[i]}); err != nil || rc.Flush() != nil {
					return
				}
				select {
				case <-r.Context().Done():
					return
				case <-deadline:
					return
				case <-tick.C:
				}
			}
		}, reason: []string{"deadline exceeded", "timeout"}},
		{name: "connection reset", handler: func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				panic(err)
			}
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // close with RST
			}
			conn.Close()
		}, reason: []string{"connection reset", "EOF"}},
		{name: "307 redirect", handler: redirect(http.StatusTemporaryRedirect), reason: []string{"redirect (status 307) refused"}},
		{name: "308 redirect", handler: redirect(http.StatusPermanentRedirect), reason: []string{"redirect (status 308) refused"}},
		{name: "self-signed TLS without ca", server: "tls", handler: jsonAnswer(hostileToken("_tls_Mn3", `,"token_type":"bearer","expires_in":3600`)),
			reason: []string{"x509", "certificate"}},
		{name: "plain HTTP behind https", server: "plain-as-https", handler: jsonAnswer(hostileToken("_plain_Cv7", `,"token_type":"bearer","expires_in":3600`)),
			reason: []string{"HTTP response to HTTPS client"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hits, conns atomic.Int64
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				tc.handler(w, r)
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			if tc.server == "tls" {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			tokenURL := srv.URL + "/oauth2/token"
			if tc.server == "plain-as-https" {
				tokenURL = "https://" + strings.TrimPrefix(srv.URL, "http://") + "/oauth2/token"
			}
			before := backendHits.Load()
			g := startGateway(t, fmt.Sprintf("\tupstream_oauth {\n\t\ttoken_url %s\n\t\tclient_id a\n\t\tclient_secret b\n\t\ttimeout 1s\n\t}\n\treverse_proxy %s\n", tokenURL, backend))

			start := time.Now()
			status, _, _ := g.get("/hostile")
			if status != http.StatusBadGateway {
				t.Errorf("status %d, want 502", status)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("the request took %v: the timeout (1s) did not bound the token request", took)
			}
			if n := backendHits.Load() - before; n != 0 {
				t.Errorf("%d requests reached the backend", n)
			}

			// One warning per token request: read the attempts before and
			// after the log, so that a retry in progress (the backoff's
			// first, 1s on) is not miscounted.
			attempts := func() int64 { return max(hits.Load(), conns.Load()) }
			var warns []logLine
			var n int64
			consistent := eventually(5*time.Second, func() bool {
				a := attempts()
				warns = moduleWarnings(g.logText())
				n = a
				return a > 0 && a == attempts() && int64(len(warns)) == a
			})
			if !consistent {
				t.Fatalf("%d warnings for %d token requests, want one each: %q", len(warns), n, warns)
			}
			for _, w := range warns {
				text := w.text()
				found := false
				for _, r := range tc.reason {
					found = found || strings.Contains(text, r)
				}
				if !found {
					t.Errorf("the warning does not say why (want one of %q): %s", tc.reason, text)
				}
			}
			if strings.Contains(g.logText(), hostileMarker) {
				t.Errorf("the log holds a token string of the hostile answer")
			}
			t.Logf("%d token request(s), warning: %s", n, warns[0].text())
		})
	}
	if n := redirectHits.Load(); n != 0 {
		t.Errorf("the redirect target got %d requests, want 0", n)
	}
}
