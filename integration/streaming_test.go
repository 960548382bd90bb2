package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// Request bodies stream: the contract's "nothing is held back before
// forwarding". Each test waits with a bound (a stalled stream fails it
// after 10 s), and asserts the order of events, not how fast they came.

// firstChunkUpstream signals on got when it has read the first chunk of a
// request body, then reads the rest and answers with its length.
func firstChunkUpstream(got chan<- time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64)
		n, _ := io.ReadAtLeast(r.Body, buf, len("chunk-1"))
		got <- time.Now()
		rest, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Length", strconv.FormatInt(int64(n)+rest, 10))
	})
}

// slowUpload sends a chunked POST whose first chunk goes at once and whose
// second goes only once the upstream has the first (or after 10 s): the
// returned duration is from sending the first chunk to the upstream having
// it, and ok is false if the upstream had to wait for the second chunk.
func slowUpload(t *testing.T, url string, got <-chan time.Time) (firstByte time.Duration, ok bool) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url, pr)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- nil
			return
		}
		done <- resp
	}()
	sent := time.Now()
	pw.Write([]byte("chunk-1"))
	select {
	case at := <-got:
		firstByte, ok = at.Sub(sent), true
	case <-time.After(10 * time.Second):
	}
	pw.Write([]byte("chunk-2"))
	pw.Close()
	if !ok {
		<-got
	}
	if resp := <-done; resp != nil {
		if l := resp.Header.Get("X-Length"); l != "14" {
			t.Errorf("the upstream read %s bytes, want 14", l)
		}
		resp.Body.Close()
	} else {
		t.Errorf("the upload failed")
	}
	return firstByte, ok
}

// TestRequestBodyStreams: the first chunk of a slow upload reaches the
// upstream while the client still holds the second, through the gateway
// (before: up to 64 KiB were read before anything was forwarded, so the
// upstream saw nothing until the client was done), as it does through the
// same Caddy without the module.
func TestRequestBodyStreams(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	got := make(chan time.Time, 1)
	upstream := startHandler(t, firstChunkUpstream(got))
	g := startGateway(t, fmt.Sprintf(`
	handle /with/* {
		upstream_oauth oneio {
			token_url %s
			client_id client-oneio
			client_secret secret-oneio-Zq8
		}
		reverse_proxy %s
	}
	handle /without/* {
		reverse_proxy %s
	}
`, p.TokenURL(), upstream, upstream))
	if status, _, _ := g.get("/with/warm-up"); status != http.StatusOK {
		t.Fatalf("warm-up: %d", status)
	}
	<-got
	without, okWithout := slowUpload(t, g.url("/without/upload"), got)
	with, okWith := slowUpload(t, g.url("/with/upload"), got)
	t.Logf("time to the upstream's first byte of a slow upload: %v through upstream_oauth, %v without it", with, without)
	if !okWithout {
		t.Fatalf("without the module the first chunk did not stream (the test rig is wrong)")
	}
	if !okWith {
		t.Errorf("through upstream_oauth the upstream got the first chunk only after the client sent the rest; the contract: the request body streams as the client sends it")
	}
}

// TestDuplexStreamH2C: a bidirectional stream over h2c (as gRPC's), each
// message answered before the client sends the next, goes through the
// gateway: nothing of the request is held back. It runs the xcaddy binary:
// under the race detector, Caddy v2.11.9's own reverse_proxy trips on an
// h2 upstream stream (bodyNopCloserIfNotRead's Read and Close race in the
// h2 transport's goroutines), which is not this module's to mend.
func TestDuplexStreamH2C(t *testing.T) {
	p := startProvider(t, emulator.OneNCE)
	echo := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
				http.Error(w, "no token", http.StatusUnauthorized)
				return
			}
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			sc := bufio.NewScanner(r.Body)
			for sc.Scan() {
				fmt.Fprintf(w, "echo %s\n", sc.Text())
				http.NewResponseController(w).Flush()
			}
		}),
		Protocols: new(http.Protocols),
	}
	echo.Protocols.SetUnencryptedHTTP2(true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go echo.Serve(l)
	t.Cleanup(func() { echo.Close() })

	in := launch(t, func(in *instance) string {
		return fmt.Sprintf(`{
	admin %s
	auto_https off
	servers {
		protocols h1 h2c
	}
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth 1nce {
		token_url %s
		username client-1nce
		password secret-1nce-Zq8
	}
	reverse_proxy h2c://%s {
		flush_interval -1
	}
}
`, in.admin, in.log, in.addr, p.TokenURL(), l.Addr())
	})
	addr := in.addr

	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/stream", pr)
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("h2c request: %v", err)
			close(respc)
			return
		}
		respc <- resp
	}()
	lines := make(chan string, 8)
	var once sync.Once
	for i := 1; i <= 3; i++ {
		msg := fmt.Sprintf("message-%d", i)
		start := time.Now()
		if _, err := fmt.Fprintf(pw, "%s\n", msg); err != nil {
			t.Fatal(err)
		}
		once.Do(func() {
			go func() {
				select {
				case resp, ok := <-respc:
					if !ok {
						close(lines)
						return
					}
					defer resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Errorf("status %d", resp.StatusCode)
					}
					sc := bufio.NewScanner(resp.Body)
					for sc.Scan() {
						lines <- sc.Text()
					}
					close(lines)
				case <-ctx.Done():
					close(lines)
				}
			}()
		})
		select {
		case line := <-lines:
			if line != "echo "+msg {
				t.Fatalf("got %q, want %q", line, "echo "+msg)
			}
			t.Logf("%s answered after %v, before the next was sent", msg, time.Since(start).Round(time.Microsecond))
		case <-time.After(10 * time.Second):
			t.Fatalf("%s was not answered within 10 s while the stream stayed open: the gateway held the request body back; the contract: client-streaming and bidirectional calls behave as without the module", msg)
		}
	}
	pw.Close()
}

// postExpectContinue POSTs body to url with Expect: 100-continue and returns
// the status and the body length the backend reports having read.
func postExpectContinue(t *testing.T, client *http.Client, url string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Expect", "100-continue")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("Expect: 100-continue: %v", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get(emulator.BodyLengthHeader)
}

// TestExpectContinue: a client that sends Expect: 100-continue gets its
// body through, and the replay after a refused token carries it too.
func TestExpectContinue(t *testing.T) {
	p, b, g := startWarm(t, emulator.ONEiO)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}}
	defer client.CloseIdleConnections()
	body := bytes.Repeat([]byte("e"), 10<<10)
	send := func() (int, string) { return postExpectContinue(t, client, g.url("/expect"), body) }
	if status, n := send(); status != http.StatusOK || n != strconv.Itoa(len(body)) {
		t.Errorf("Expect: 100-continue: %d, body %s bytes; want 200 with all %d", status, n, len(body))
	}
	p.RevokeAll()
	if status, n := send(); status != http.StatusOK || n != strconv.Itoa(len(body)) {
		t.Errorf("Expect: 100-continue after the token was revoked: %d, body %s bytes; want the replay's 200 with all %d", status, n, len(body))
	}
	if r := b.Rejected(); r != 1 {
		t.Errorf("backend refusals: %d, want 1", r)
	}
}
