package integration

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// TestReloadSoak: 50 config reloads under light load make no token request
// beyond the first, fail no request, and leave the goroutine count where it
// started.
func TestReloadSoak(t *testing.T) {
	p := startProvider(t, emulator.Telenor)
	b := startBackend(t, p)
	// No keep-alive, neither to the gateway nor from it to the backend:
	// pooled connections of Caddy's own reverse_proxy outlive a reload (until
	// their idle timeout), and a client reusing a connection that an old
	// server closes at reload gets EOF — both Caddy's, not this module's.
	site := block(p) + "\treverse_proxy " + b.URL() + " {\n\t\ttransport http {\n\t\t\tkeepalive off\n\t\t}\n\t}\n"
	g := startGateway(t, site)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	// transportErrs counts requests that got no HTTP answer: a connection
	// that an old server accepted just as a reload shut it down is closed
	// (EOF) by Caddy's listener hand-over, before this module sees it.
	var transportErrs atomic.Int64
	get := func() int {
		resp, err := client.Get(g.url("/soak"))
		if err != nil {
			transportErrs.Add(1)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get(); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	settle := func() int {
		client.CloseIdleConnections()
		g.tester.Client.CloseIdleConnections()
		time.Sleep(100 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	// A first reload, so that whatever a reload starts once is counted in.
	g.load("\trespond /health 200\n" + site)
	baseline := settle()

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			switch get() {
			case http.StatusOK:
				ok.Add(1)
			case 0:
			default:
				failed.Add(1)
			}
		}
	}()
	for i := range 50 {
		// Each reload changes a route, so Caddy really reloads.
		g.load(fmt.Sprintf("\trespond /health \"reload %d\" 200\n", i) + site)
	}
	close(stop)
	<-done

	if n := p.TokenRequests(); n != 1 {
		t.Errorf("50 reloads under load made %d token requests in all, want 1", n)
	}
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("requests during the reloads: %d answered 200, %d answered otherwise", ok.Load(), failed.Load())
	}
	var now int
	if !eventually(15*time.Second, func() bool { now = settle(); return now <= baseline+2 }) {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d after 50 reloads, %d before\n%s", now, baseline, buf[:runtime.Stack(buf, true)])
	}
	t.Logf("50 reloads: %d requests answered 200, 0 otherwise, %d closed by Caddy's listener hand-over; %d token request(s); goroutines %d before, %d after",
		ok.Load(), transportErrs.Load(), p.TokenRequests(), baseline, now)
}
