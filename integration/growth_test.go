package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// BenchmarkGatewaySources measures what a gateway in front of n tenants
// costs: a generated config of n routes, each with its own upstream_oauth
// (its own credentials, so its own token source) before a static
// response, loaded into the Caddy of this process. Every tenant is asked
// once, so every source holds a token of 1 KiB that lives an hour; then the
// heap and goroutines are compared with the same gateway with no tenants
// (its own route only).
//
// heap_B/tenant is everything a tenant adds: route, matcher, handler,
// token source, its token, its HTTP client, its metrics. retained_B/tenant
// is what stays after reloads back to no tenants. goroutines/tenant counts
// goroutines once the connections to the token endpoint are closed, as the
// provider or the client's IdleConnTimeout (90s) closes them: an idle
// source has none of its own. keepalive/n=1000 shows the time before that:
// each source's own HTTP client keeps its connection to the token endpoint
// open (2 goroutines on the client side, 1 on the in-process server side).
//
// The timed loop does nothing (ns/op is suppressed): the metrics are the
// result. Run with -run=NONE, as it loads configs into this process's Caddy.
//
//	go test -run=NONE -bench=GatewaySources ./integration/
func BenchmarkGatewaySources(b *testing.B) {
	counts := []int{10, 1000, 10000}
	if testing.Short() {
		counts = counts[:2]
	}
	for _, n := range counts {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) { gatewaySources(b, n, false) })
	}
	b.Run("keepalive/n=1000", func(b *testing.B) { gatewaySources(b, 1000, true) })
}

// growthTokenLen is the size of the tokens that the growth token endpoint
// issues.
const growthTokenLen = 1024

func gatewaySources(b *testing.B, n int, keepAlive bool) {
	var issued atomic.Int64
	tokens := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": fmt.Sprintf("%0*d", growthTokenLen, issued.Add(1)),
			"token_type":   "Bearer",
			"expires_in":   3600,
		})
	}))
	tokens.Config.SetKeepAlivesEnabled(keepAlive)
	tokens.Start()
	defer tokens.Close()

	addr := growthAddr(b)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	load := func(tenants int) {
		b.Helper()
		if err := caddy.Load(growthConfig(addr, tokens.URL, tenants), true); err != nil {
			b.Fatal(err)
		}
		if err := growthWarm(client, addr, tenants); err != nil {
			b.Fatal(err)
		}
		client.CloseIdleConnections()
		tokens.CloseClientConnections()
	}
	defer func() { _ = caddy.Stop() }()
	load(0)
	heap0, g0 := growthSettle(runtime.NumGoroutine())

	issued.Store(0)
	if err := caddy.Load(growthConfig(addr, tokens.URL, n), true); err != nil {
		b.Fatal(err)
	}
	if err := growthWarm(client, addr, n); err != nil {
		b.Fatal(err)
	}
	client.CloseIdleConnections()
	if got := issued.Load(); got != int64(n) {
		b.Fatalf("%d token requests for %d tenants", got, n)
	}
	gKeepAlive := 0
	if keepAlive {
		_, gKeepAlive = growthSettle(g0 + 3*n) // the connections stay open
		tokens.CloseClientConnections()
	}
	heap1, g1 := growthSettle(g0)

	// Back to no tenants: what stays is what a removed tenant leaves behind.
	// Twice, because events.go lets go of a stopped config's context at the
	// next provisioning (or the next token request), not when it stops.
	load(0)
	load(0)
	heap2, _ := growthSettle(g0)

	for b.Loop() {
	}
	b.ReportMetric(0, "ns/op")
	if keepAlive {
		b.ReportMetric(float64(gKeepAlive-g0)/float64(n), "goroutines_keepalive/tenant")
	}
	b.ReportMetric(float64(int64(heap1)-int64(heap0))/float64(n), "heap_B/tenant")
	b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/tenant")
	b.ReportMetric(float64(int64(heap2)-int64(heap0))/float64(n), "retained_B/tenant")
}

// growthConfig is a gateway on addr with n tenants: /t/<i> is tenant i
// (i from 0), and /t/-1 is the gateway's own route, the same in every
// config (so its source is the same too).
func growthConfig(addr, tokenURL string, n int) []byte {
	routes := make([]any, 0, n+1)
	for i := -1; i < n; i++ {
		routes = append(routes, map[string]any{
			"match": []any{map[string]any{"path": []string{fmt.Sprintf("/t/%d", i)}}},
			"handle": []any{
				map[string]any{
					"handler":       "upstream_oauth",
					"name":          fmt.Sprintf("tenant-%d", i),
					"token_url":     tokenURL + "/oauth/token",
					"client_id":     fmt.Sprintf("tenant-%d", i),
					"client_secret": fmt.Sprintf("secret-%d", i),
				},
				map[string]any{"handler": "static_response", "status_code": 204},
			},
			"terminal": true,
		})
	}
	cfg, _ := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"gateway": map[string]any{
			"listen":          []string{addr},
			"automatic_https": map[string]any{"disable": true},
			"routes":          routes,
		}}}},
	})
	return cfg
}

// growthWarm asks every tenant once, 16 at a time, and the gateway's own
// route (/t/-1).
func growthWarm(client *http.Client, addr string, n int) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range 16 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 2
				if i >= int64(n) {
					return
				}
				err := func() error {
					resp, err := client.Get(fmt.Sprintf("http://%s/t/%d", addr, i))
					if err != nil {
						return err
					}
					defer resp.Body.Close()
					_, _ = io.Copy(io.Discard, resp.Body)
					if resp.StatusCode != http.StatusNoContent {
						return fmt.Errorf("tenant %d: status %d", i, resp.StatusCode)
					}
					return nil
				}()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// growthSettle waits (up to 10s) for the goroutines to drop to at most
// want, collects garbage, and returns the live heap and goroutine count.
func growthSettle(want int) (heap uint64, goroutines int) {
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for range 3 {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, runtime.NumGoroutine()
}

// growthAddr is a loopback address that was free a moment ago.
func growthAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
