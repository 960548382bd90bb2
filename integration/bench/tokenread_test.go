// Package bench holds the load script and its helpers, and the benchmarks
// that compare upstream_oauth with golang.org/x/oauth2: they live in the
// integration module, so that the plugin's own go.mod needs no x/oauth2.
package bench

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// benchTokenLen is the size of the tokens held: a JWT-sized access token.
const benchTokenLen = 1024

// fetcher answers at once with a new token of benchTokenLen characters
// that lives an hour.
type fetcher struct{ calls atomic.Int64 }

func (f *fetcher) Token(context.Context) (*grants.Token, error) {
	n := f.calls.Add(1)
	now := time.Now()
	return &grants.Token{AccessToken: fmt.Sprintf("%0*d", benchTokenLen, n), TokenType: "Bearer",
		Lifetime: time.Hour, Obtained: now, Expiry: now.Add(time.Hour)}, nil
}

func (f *fetcher) Refresh(ctx context.Context, _ string) (*grants.Token, error) { return f.Token(ctx) }

// oauth2Source is the oauth2.TokenSource that ReuseTokenSource wraps: it
// answers with the same kind of token.
type oauth2Source struct{}

func (oauth2Source) Token() (*oauth2.Token, error) {
	return &oauth2.Token{
		AccessToken: strings.Repeat("t", benchTokenLen),
		TokenType:   "Bearer",
		Expiry:      time.Now().Add(time.Hour),
	}, nil
}

// BenchmarkTokenRead reads a held token: cache.Source.Get against
// golang.org/x/oauth2's ReuseTokenSource (the usual Go way to cache a
// token), in one goroutine and under b.RunParallel.
//
//	cd integration && go test -run=NONE -bench=TokenRead -benchmem ./bench/
func BenchmarkTokenRead(b *testing.B) {
	ctx := context.Background()
	reads := []struct {
		name string
		read func(b *testing.B) func() (string, error)
	}{
		{"Source.Get", func(b *testing.B) func() (string, error) {
			s := cache.New(cache.Options{Name: "bench", Fetcher: new(fetcher)})
			b.Cleanup(func() { s.Stop(false) })
			if _, err := s.Get(ctx); err != nil {
				b.Fatal(err)
			}
			return func() (string, error) {
				tok, err := s.Get(ctx)
				if err != nil {
					return "", err
				}
				return tok.AccessToken, nil
			}
		}},
		{"oauth2.ReuseTokenSource", func(b *testing.B) func() (string, error) {
			ts := oauth2.ReuseTokenSource(nil, oauth2Source{})
			if _, err := ts.Token(); err != nil {
				b.Fatal(err)
			}
			return func() (string, error) {
				tok, err := ts.Token()
				if err != nil {
					return "", err
				}
				return tok.AccessToken, nil
			}
		}},
	}
	for _, mode := range []string{"serial", "parallel"} {
		for _, rd := range reads {
			b.Run(mode+"/"+rd.name, func(b *testing.B) {
				read := rd.read(b)
				b.ReportAllocs()
				if mode == "serial" {
					for b.Loop() {
						if tok, err := read(); err != nil || len(tok) != benchTokenLen {
							b.Fatal("no token", err)
						}
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if tok, err := read(); err != nil || len(tok) != benchTokenLen {
							b.Error("no token", err)
							return
						}
					}
				})
			})
		}
	}
}
